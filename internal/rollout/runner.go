package rollout

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// Kick asks the runner for a pass now.
func (s *Service) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Run drives the running rollouts while this replica holds the leader
// shard, every Every and whenever an upgrade ends or a rollout changes,
// until ctx ends; then it waits for the upgrades it started to report.
func (s *Service) Run(ctx context.Context) error {
	defer s.wg.Wait()
	t := time.NewTicker(s.every)
	defer t.Stop()
	for {
		if _, err := s.RunOnce(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("rollout pass", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-s.kick:
		}
	}
}

// Stats says what one pass did.
type Stats struct {
	Rollouts int // running rollouts looked at
	Started  int // upgrades started
	Paused   int // rollouts that paused themselves
	Done     int // rollouts finished
}

// RunOnce makes one pass over the running rollouts, if this replica holds
// the leader shard.
func (s *Service) RunOnce(ctx context.Context) (Stats, error) {
	var st Stats
	lease, leader := s.rep.Leader()
	if !leader {
		return st, nil
	}
	rs, err := s.store.RolloutsInState(ctx, bap.RolloutRunning)
	if err != nil {
		return st, err
	}
	var errs []error
	for _, r := range rs {
		st.Rollouts++
		if err := s.step(ctx, r, lease, &st); err != nil {
			errs = append(errs, fmt.Errorf("rollout %s: %w", r.ID, err))
		}
	}
	return st, errors.Join(errs...)
}

// step advances one running rollout: it pauses it when too many upgrades
// were rolled back, finishes it when its share is done, and otherwise
// starts upgrades up to max_parallel, in rank order.
func (s *Service) step(ctx context.Context, r bap.Rollout, lease registry.Lease, st *Stats) error {
	pl, err := s.plan(ctx, r)
	if err != nil {
		return err
	}
	if failures := pl.rolledBack() - r.FailureBase; failures >= r.MaxFailures {
		st.Paused++
		return s.setState(ctx, r, lease, bap.RolloutPaused,
			fmt.Sprintf("%d upgrade(s) rolled back (max_failures %d)", failures, r.MaxFailures))
	}
	inflight := s.inflightOf(r.ID)
	pending := 0
	for _, e := range pl.chosen {
		if _, final := pl.outcomes[e.ID]; final || inflight[e.ID] {
			if inflight[e.ID] {
				pending++
			}
			continue
		}
		switch {
		case e.Image == r.EngineVersion && !e.Claim.Held():
			if err := s.record(ctx, r, e, bap.OutcomeUpgraded, "already on the version"); err != nil {
				return err
			}
			continue
		case e.Status == bap.StateFailed || e.Status == bap.StateDestroying:
			if err := s.record(ctx, r, e, bap.OutcomeSkipped, "engine is "+string(e.Status)); err != nil {
				return err
			}
			continue
		}
		pending++
		if len(inflight) >= r.MaxParallel {
			continue
		}
		inflight[e.ID] = true
		st.Started++
		s.start(ctx, r, e)
	}
	if pending == 0 && len(inflight) == 0 {
		st.Done++
		return s.finish(ctx, r, lease)
	}
	return nil
}

func (p plan) rolledBack() int {
	n := 0
	for _, o := range p.outcomes {
		if o.Outcome == bap.OutcomeRolledBack {
			n++
		}
	}
	return n
}

func (s *Service) inflightOf(id string) map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.inflight[id]
	if m == nil {
		m = map[string]bool{}
		s.inflight[id] = m
	}
	// A copy the caller may add to; start records the additions.
	out := make(map[string]bool, len(m))
	for k := range m {
		out[k] = true
	}
	return out
}

// start upgrades e in the background and records the outcome.
func (s *Service) start(ctx context.Context, r bap.Rollout, e bap.Engine) {
	s.mu.Lock()
	s.inflight[r.ID][e.ID] = true
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() {
			s.mu.Lock()
			delete(s.inflight[r.ID], e.ID)
			s.mu.Unlock()
			s.Kick()
		}()
		_, err := s.lc.Upgrade(ctx, e.ID, r.EngineVersion, "rollout:"+r.ID)
		var outcome bap.RolloutOutcome
		reason := ""
		switch code := bap.ErrorCode(err); {
		case err == nil:
			outcome = bap.OutcomeUpgraded
		case code == bap.CodeUpgradeFailed:
			outcome, reason = bap.OutcomeRolledBack, err.Error()
		case code == bap.CodeEngineNotFound || code == bap.CodeEngineNotRunning || code == bap.CodeImageNotFound:
			outcome, reason = bap.OutcomeSkipped, err.Error()
		default:
			// Busy, unavailable, or this process stopping: not the
			// engine's outcome; a later pass tries again.
			s.log.Info("rollout upgrade to retry", "rollout_id", r.ID, "engine_id", e.ID, "err", err)
			return
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := s.record(rctx, r, e, outcome, reason); err != nil {
			s.log.Warn("record rollout outcome", "rollout_id", r.ID, "engine_id", e.ID, "err", err)
		}
	}()
}

func (s *Service) record(ctx context.Context, r bap.Rollout, e bap.Engine, o bap.RolloutOutcome, reason string) error {
	return s.store.SetRolloutEngine(ctx, bap.RolloutEngine{RolloutID: r.ID, EngineID: e.ID, UserID: e.UserID,
		Outcome: o, Reason: truncate(reason, 300)})
}

// setState moves a running rollout to state, fenced by the leader lease;
// when it is done at 100 %, the product's policy pins its image in the same
// transaction, so new engines get it (SPEC §16).
func (s *Service) setState(ctx context.Context, r bap.Rollout, lease registry.Lease, state bap.RolloutState, reason string) error {
	pinned := false
	err := s.store.InTx(ctx, func(tx registry.Store) error {
		if lease.ReplicaID != "" { // (a solo replica's leases fence nothing)
			if err := tx.CheckLease(ctx, lease); err != nil {
				return err
			}
		}
		cur, err := tx.GetRollout(ctx, r.ID)
		if err != nil {
			return err
		}
		if cur.State != bap.RolloutRunning || cur.Percent != r.Percent {
			return nil // changed meanwhile: the next pass looks again
		}
		if state == bap.RolloutDone && cur.Percent == 100 {
			if pinned, err = s.pin(ctx, tx, cur); err != nil {
				return err
			}
		}
		cur.State, cur.Reason = state, reason
		s.log.Info("rollout "+string(state), "rollout_id", r.ID, "reason", reason)
		return tx.UpdateRollout(ctx, cur, audit.Entry{ProductID: r.ProductID, Action: audit.RolloutUpdate, Actor: audit.ActorSystem,
			Metadata: map[string]any{"rollout_id": r.ID, "state": string(state), "from_state": string(bap.RolloutRunning), "reason": reason}})
	})
	if err == nil && pinned && s.productChanged != nil {
		s.productChanged(r.ProductID)
	}
	return err
}

// finish marks a rollout done.
func (s *Service) finish(ctx context.Context, r bap.Rollout, lease registry.Lease) error {
	return s.setState(ctx, r, lease, bap.RolloutDone, "")
}

// pin sets the product's policy.engine_version to the rollout's image and
// reports whether it changed.
func (s *Service) pin(ctx context.Context, tx registry.Store, r bap.Rollout) (bool, error) {
	p, err := tx.GetProduct(ctx, r.ProductID)
	if err != nil {
		return false, err
	}
	if p.Policy.EngineVersion != nil && *p.Policy.EngineVersion == r.EngineVersion {
		return false, nil
	}
	pol, err := p.Policy.WithEngineVersion(r.EngineVersion)
	if err != nil {
		return false, err
	}
	_, err = tx.UpdatePolicy(ctx, p.ID, pol, audit.Entry{ProductID: p.ID, Action: audit.PolicyUpdate, Actor: audit.ActorSystem,
		Metadata: map[string]any{"rollout_id": r.ID, "engine_version": r.EngineVersion}})
	return err == nil, err
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
