// Package rollout runs durable rollouts (SPEC §16): a product's engines
// upgraded a share at a time, each through lifecycle.Upgrade, so every
// upgrade snapshots its brain and rolls itself back on failure. The state
// of a rollout and each engine's outcome live in the registry, so a
// rollout survives restarts and replica deaths: the runner is the holder
// of the leader shard (internal/replica), and another replica takes over
// when it dies. It never calls a backend.
package rollout

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/replica"
)

// Defaults of a rollout request (SPEC §16).
const (
	DefaultMaxParallel = 2
	DefaultMaxFailures = 1
)

// Config wires a Service.
type Config struct {
	Store     registry.Store
	Lifecycle *lifecycle.Manager
	// Replica says whether this process runs rollouts (it holds the
	// leader shard) and fences the runner's writes with that lease.
	Replica *replica.Replica
	// Every is the runner's pass interval (default 1 s); a finished
	// upgrade starts a pass at once.
	Every time.Duration
	// ProductChanged, when set, is told when a rollout changed a product's
	// policy (to drop cached copies at once).
	ProductChanged func(productID string)
	Logger         *slog.Logger
}

// Service creates, reads and changes rollouts and runs them.
type Service struct {
	store registry.Store
	lc    *lifecycle.Manager
	rep   *replica.Replica
	every time.Duration
	log   *slog.Logger
	kick  chan struct{}

	productChanged func(productID string)

	mu sync.Mutex
	// inflight: rollout id → engine ids this process is upgrading for it.
	inflight map[string]map[string]bool
	wg       sync.WaitGroup
}

// New returns a Service. Store, Lifecycle and Replica are required.
func New(cfg Config) *Service {
	if cfg.Store == nil || cfg.Lifecycle == nil || cfg.Replica == nil {
		panic("rollout.New: Store, Lifecycle and Replica are required")
	}
	return &Service{
		store:    cfg.Store,
		lc:       cfg.Lifecycle,
		rep:      cfg.Replica,
		every:    cmp.Or(cfg.Every, time.Second),
		log:      cmp.Or(cfg.Logger, slog.Default()),
		kick:     make(chan struct{}, 1),
		inflight: map[string]map[string]bool{},

		productChanged: cfg.ProductChanged,
	}
}

// Request asks for a rollout. Zero MaxParallel and MaxFailures take the
// defaults.
type Request struct {
	EngineVersion string
	Percent       int
	MaxParallel   int
	MaxFailures   int
}

// Counts are a rollout's engines by outcome: pending counts the chosen
// engines not yet upgraded (in flight included).
type Counts struct {
	Pending    int
	Upgraded   int
	RolledBack int
	Skipped    int
}

// View is a rollout with its counts.
type View struct {
	bap.Rollout
	Counts Counts
}

func validate(req Request) (Request, error) {
	req.MaxParallel = cmp.Or(req.MaxParallel, DefaultMaxParallel)
	req.MaxFailures = cmp.Or(req.MaxFailures, DefaultMaxFailures)
	switch {
	case req.EngineVersion == "" || len(req.EngineVersion) > 255:
		return req, bap.Errorf(bap.CodeValidation, "engine_version is required (at most 255 characters).")
	case req.Percent < 1 || req.Percent > 100:
		return req, bap.Errorf(bap.CodeValidation, "percent must be an integer from 1 to 100.")
	case req.MaxParallel < 1 || req.MaxParallel > 100:
		return req, bap.Errorf(bap.CodeValidation, "max_parallel must be an integer from 1 to 100.")
	case req.MaxFailures < 1 || req.MaxFailures > 10000:
		return req, bap.Errorf(bap.CodeValidation, "max_failures must be a positive integer.")
	}
	for _, c := range req.EngineVersion {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '/' || c == ':' || c == '@') {
			return req, bap.Errorf(bap.CodeValidation, "engine_version is not a valid image reference.")
		}
	}
	return req, nil
}

// Create starts a rollout of p's engines. Errors: VALIDATION_ERROR,
// ROLLOUT_IN_PROGRESS (one is running or paused), PRODUCT_NOT_FOUND,
// DATABASE_UNAVAILABLE.
func (s *Service) Create(ctx context.Context, p bap.Product, req Request, actor string) (View, error) {
	req, err := validate(req)
	if err != nil {
		return View{}, err
	}
	now := bap.Now()
	r := bap.Rollout{ID: uuid.NewString(), ProductID: p.ID, EngineVersion: req.EngineVersion, Percent: req.Percent,
		MaxParallel: req.MaxParallel, MaxFailures: req.MaxFailures, State: bap.RolloutRunning, CreatedAt: now, UpdatedAt: now}
	entry := audit.Entry{ProductID: p.ID, Action: audit.RolloutCreate, Actor: actor, Metadata: map[string]any{
		"rollout_id": r.ID, "engine_version": r.EngineVersion, "percent": r.Percent,
		"max_parallel": r.MaxParallel, "max_failures": r.MaxFailures,
	}}
	err = s.store.CreateRollout(ctx, r, entry)
	switch {
	case errors.Is(err, registry.ErrConflict):
		return View{}, bap.Errorf(bap.CodeRolloutInProgress, "Product %s has a rollout running or paused; finish, resume or abort it first.", p.Slug)
	case errors.Is(err, registry.ErrNotFound):
		return View{}, bap.Errorf(bap.CodeProductNotFound, "Product not found.")
	case err != nil:
		return View{}, storeErr("create rollout", err)
	}
	s.Kick()
	return s.view(ctx, r)
}

// Get returns the product's rollout id. Errors: ROLLOUT_NOT_FOUND.
func (s *Service) Get(ctx context.Context, productID, id string) (View, error) {
	r, err := s.load(ctx, productID, id)
	if err != nil {
		return View{}, err
	}
	return s.view(ctx, r)
}

// List returns the product's rollouts, newest first.
func (s *Service) List(ctx context.Context, productID string) ([]View, error) {
	rs, err := s.store.ListRollouts(ctx, productID)
	if err != nil {
		return nil, storeErr("list rollouts", err)
	}
	out := make([]View, 0, len(rs))
	for _, r := range rs {
		v, err := s.view(ctx, r)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func (s *Service) load(ctx context.Context, productID, id string) (bap.Rollout, error) {
	r, err := s.store.GetRollout(ctx, id)
	if errors.Is(err, registry.ErrNotFound) || (err == nil && r.ProductID != productID) {
		return bap.Rollout{}, bap.Errorf(bap.CodeRolloutNotFound, "Rollout not found.")
	}
	if err != nil {
		return bap.Rollout{}, storeErr("read rollout", err)
	}
	return r, nil
}

// change applies fn to the rollout under the product and records it.
func (s *Service) change(ctx context.Context, productID, id, actor string, fn func(r *bap.Rollout) error) (View, error) {
	var out bap.Rollout
	err := s.store.InTx(ctx, func(tx registry.Store) error {
		r, err := tx.GetRollout(ctx, id)
		if errors.Is(err, registry.ErrNotFound) || (err == nil && r.ProductID != productID) {
			return bap.Errorf(bap.CodeRolloutNotFound, "Rollout not found.")
		}
		if err != nil {
			return err
		}
		before := r
		if err := fn(&r); err != nil {
			return err
		}
		out = r
		if r == before {
			return nil
		}
		return tx.UpdateRollout(ctx, r, audit.Entry{ProductID: productID, Action: audit.RolloutUpdate, Actor: actor,
			Metadata: map[string]any{"rollout_id": id, "state": string(r.State), "percent": r.Percent,
				"from_state": string(before.State), "from_percent": before.Percent}})
	})
	if err != nil {
		if _, ok := bap.AsError(err); ok {
			return View{}, err
		}
		return View{}, storeErr("update rollout", err)
	}
	s.Kick()
	return s.view(ctx, out)
}

// SetPercent raises a rollout's percent: the same order of engines is
// extended, and a done rollout runs again. Lowering is VALIDATION_ERROR;
// an aborted rollout cannot change (ROLLOUT_IN_PROGRESS is not it: 409
// ENGINE_BUSY would mislead, so VALIDATION_ERROR says why).
func (s *Service) SetPercent(ctx context.Context, productID, id string, percent int, actor string) (View, error) {
	if percent < 1 || percent > 100 {
		return View{}, bap.Errorf(bap.CodeValidation, "percent must be an integer from 1 to 100.")
	}
	return s.change(ctx, productID, id, actor, func(r *bap.Rollout) error {
		switch {
		case percent < r.Percent:
			return bap.Errorf(bap.CodeValidation, "percent can only be raised (it is %d).", r.Percent)
		case r.State == bap.RolloutAborted:
			return bap.Errorf(bap.CodeValidation, "The rollout was aborted; create a new one.")
		}
		r.Percent = percent
		if r.State == bap.RolloutDone && percent > 0 {
			r.State = bap.RolloutRunning
		}
		return nil
	})
}

// Pause stops starting upgrades (those in flight finish).
func (s *Service) Pause(ctx context.Context, productID, id, actor string) (View, error) {
	return s.change(ctx, productID, id, actor, func(r *bap.Rollout) error {
		if r.State != bap.RolloutRunning && r.State != bap.RolloutPaused {
			return bap.Errorf(bap.CodeValidation, "The rollout is %s.", r.State)
		}
		r.State = bap.RolloutPaused
		r.Reason = "paused by " + actor
		return nil
	})
}

// Resume runs a paused rollout again; the failures before it no longer
// count against max_failures.
func (s *Service) Resume(ctx context.Context, productID, id, actor string) (View, error) {
	outcomes, err := s.store.RolloutEngines(ctx, id)
	if err != nil {
		return View{}, storeErr("read rollout engines", err)
	}
	rolledBack := 0
	for _, o := range outcomes {
		if o.Outcome == bap.OutcomeRolledBack {
			rolledBack++
		}
	}
	return s.change(ctx, productID, id, actor, func(r *bap.Rollout) error {
		if r.State != bap.RolloutRunning && r.State != bap.RolloutPaused {
			return bap.Errorf(bap.CodeValidation, "The rollout is %s.", r.State)
		}
		r.State, r.Reason = bap.RolloutRunning, ""
		r.FailureBase = rolledBack
		return nil
	})
}

// Abort ends a rollout for good; upgrades in flight finish, nothing is
// undone.
func (s *Service) Abort(ctx context.Context, productID, id, actor string) (View, error) {
	return s.change(ctx, productID, id, actor, func(r *bap.Rollout) error {
		if r.State == bap.RolloutDone || r.State == bap.RolloutAborted {
			return bap.Errorf(bap.CodeValidation, "The rollout is %s.", r.State)
		}
		r.State, r.Reason = bap.RolloutAborted, "aborted by "+actor
		return nil
	})
}

// rank orders a rollout's engines: sha256 of the rollout id and the user
// id, so the order is stable and a raised percent extends the same set.
func rank(rolloutID, userID string) string {
	sum := sha256.Sum256([]byte(rolloutID + "\x00" + userID))
	return hex.EncodeToString(sum[:])
}

// chosen returns the engines a rollout covers: the first ceil(percent·N/100)
// of the product's N engines in rank order.
func chosen(r bap.Rollout, engines []bap.Engine) []bap.Engine {
	sorted := slices.Clone(engines)
	ranks := make(map[string]string, len(sorted))
	for _, e := range sorted {
		ranks[e.ID] = rank(r.ID, e.UserID)
	}
	slices.SortFunc(sorted, func(a, b bap.Engine) int { return cmp.Compare(ranks[a.ID], ranks[b.ID]) })
	n := (r.Percent*len(sorted) + 99) / 100
	return sorted[:n]
}

// plan is a rollout's chosen engines with their outcomes.
type plan struct {
	chosen   []bap.Engine
	outcomes map[string]bap.RolloutEngine
	counts   Counts
}

func (s *Service) plan(ctx context.Context, r bap.Rollout) (plan, error) {
	engines, _, err := s.store.ListEngines(ctx, registry.EngineFilter{ProductID: r.ProductID})
	if err != nil {
		return plan{}, storeErr("list engines", err)
	}
	recorded, err := s.store.RolloutEngines(ctx, r.ID)
	if err != nil {
		return plan{}, storeErr("read rollout engines", err)
	}
	pl := plan{chosen: chosen(r, engines), outcomes: map[string]bap.RolloutEngine{}}
	for _, o := range recorded {
		pl.outcomes[o.EngineID] = o
	}
	for _, e := range pl.chosen {
		switch pl.outcomes[e.ID].Outcome {
		case bap.OutcomeUpgraded:
			pl.counts.Upgraded++
		case bap.OutcomeRolledBack:
			pl.counts.RolledBack++
		case bap.OutcomeSkipped:
			pl.counts.Skipped++
		default:
			pl.counts.Pending++
		}
	}
	return pl, nil
}

func (s *Service) view(ctx context.Context, r bap.Rollout) (View, error) {
	pl, err := s.plan(ctx, r)
	if err != nil {
		return View{}, err
	}
	return View{Rollout: r, Counts: pl.counts}, nil
}

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

func storeErr(what string, err error) error {
	if errors.Is(err, registry.ErrUnavailable) {
		return bap.Errorf(bap.CodeDatabaseUnavailable, "The database is unavailable; retry shortly.")
	}
	return fmt.Errorf("%s: %w", what, err)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
