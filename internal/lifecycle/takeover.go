package lifecycle

import (
	"context"
	"errors"
	"time"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// takeOver finishes or fails the operation a dead replica left on e (SPEC
// §15), or repairs a provisioning or destroying row that carries no claim
// (left by an orchestrator older than claims). It claims the row only if
// it still carries e's claim and that claim's owner is dead, with the
// shard's lease when lease names a holder, then brings the engine to a
// state the row can honestly say:
//
//   - provision: an instance that answers becomes running; one still
//     booting is waited for the rest of the boot timeout; otherwise the
//     instance is removed and the engine failed ("provision interrupted").
//   - destroy, or a destroying row: the destroy is finished.
//   - stop: the instance is stopped and the engine stopped.
//   - sleep: finished in the sleep mode.
//   - start, wake: the engine is brought up (start_failed if it does not
//     come up).
//   - rotate-key: the new key died with its replica, so the instance is
//     recreated with the key the row holds (rotate_key_failed, "interrupted").
//   - upgrade: before its snapshot, the engine is put back as it was; an
//     instance of the new image that answers healthy finishes it; otherwise
//     the snapshot is restored under the old image (upgrade_rolled_back).
//   - auto-restart: the claim ends; the engine stays failed with its restart
//     due, so the restart scheduler makes the next attempt.
//
// It returns errSkip when there was nothing to take over.
func (m *Manager) takeOver(ctx context.Context, e bap.Engine, lease registry.Lease) error {
	if _, running := m.repairs.LoadOrStore(e.ID, struct{}{}); running {
		return errSkip
	}
	defer m.repairs.Delete(e.ID)
	// A takeover, once begun, is not the caller's to interrupt.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.OpTimeout)
	defer cancel()
	was := e.Claim
	op := was.Op
	if !was.Held() {
		if e.Status != bap.StateProvisioning && e.Status != bap.StateDestroying {
			return errSkip
		}
		op = bap.OpRepair
	}
	out, err := m.claim(ctx, e.ID, claimSpec{op: op, lease: lease, takeover: &was})
	if errors.Is(err, registry.ErrFenced) {
		return errSkip
	}
	if err != nil {
		return err
	}
	cur := out.cur
	m.log.WarnContext(ctx, "taking over an interrupted operation", "engine_id", e.ID, "op", was.Op,
		"dead_replica", was.Owner, "status", cur.Status)
	meta := map[string]any{"recovered": true}
	if was.Owner != "" {
		meta["taken_over_from"] = was.Owner
	}
	_, err = m.underClaim(ctx, out.claim, func(ctx context.Context) (Result, error) {
		return Result{}, m.repair(ctx, out.claim, cur, was.Op, meta)
	})
	return err
}

// repair brings the engine of c (claimed by a takeover) to a state its row
// can honestly say; see takeOver.
func (m *Manager) repair(ctx context.Context, c *opClaim, e bap.Engine, op bap.Op, meta map[string]any) error {
	began := time.Now()
	switch {
	case e.Status == bap.StateProvisioning:
		return m.repairProvision(ctx, c, e, meta)
	case e.Status == bap.StateDestroying || op == bap.OpDestroy:
		if e.Status != bap.StateDestroying {
			if err := m.commitOp(ctx, c, false, func(cur *bap.Engine) (*audit.Entry, error) {
				cur.Status = bap.StateDestroying
				return nil, nil
			}); err != nil {
				return err
			}
		}
		return m.finishDestroy(ctx, c, e, audit.ActorSystem, e.Status, began, meta)
	}
	switch op {
	case bap.OpStop:
		if e.Status != bap.StateRunning && e.Status != bap.StateSleeping {
			return nil
		}
		if err := m.stopInstance(ctx, e.ID); err != nil {
			return err
		}
		return m.commitStopped(ctx, c, e.Status, audit.ActorSystem, time.Since(began), meta)
	case bap.OpSleep:
		if e.Status != bap.StateRunning {
			return nil
		}
		if err := m.sleepInstance(ctx, e.ID); err != nil {
			return err
		}
		return m.commitSleeping(ctx, c, meta)
	case bap.OpStart, bap.OpWake:
		if e.Status == bap.StateRunning {
			return nil
		}
		action := audit.Start
		if op == bap.OpWake {
			action = audit.Wake
		}
		inst, boot, err := m.ensureRunning(ctx, e)
		if err != nil {
			return m.failBringUp(ctx, c, e, action, audit.ActorSystem, err)
		}
		return m.commitRunning(ctx, c, e.Status, inst, boot, action, audit.ActorSystem, meta)
	case bap.OpUpgrade:
		return m.repairUpgrade(ctx, c, e, meta)
	case bap.OpRotateKey:
		if e.Status != bap.StateRunning {
			return nil
		}
		p, err := m.store.GetProduct(ctx, e.ProductID)
		if err != nil {
			return productErr("read product", err)
		}
		inst, err := m.recreate(ctx, e, p)
		if err != nil {
			return m.failBringUp(ctx, c, e, audit.RotateKeyFailed, audit.ActorSystem, err)
		}
		return m.commitOp(ctx, c, true, func(cur *bap.Engine) (*audit.Entry, error) {
			cur.InstanceID = inst.ID
			meta["reason"] = "interrupted"
			return &audit.Entry{Action: audit.RotateKeyFailed, Actor: audit.ActorSystem, Metadata: meta}, nil
		})
	}
	// auto-restart, repair and anything unknown: ending the claim is the
	// repair; the state machine's loops take it from there.
	return nil
}

// repairProvision finishes a provision whose replica died: an instance
// that answers healthy is adopted as running; one that runs but does not
// answer yet is waited for the rest of its boot time; otherwise whatever
// exists is removed and the engine is failed with its row and port kept.
func (m *Manager) repairProvision(ctx context.Context, c *opClaim, e bap.Engine, meta map[string]any) error {
	e.URL = m.addr(e)
	inst, err := m.backend.Inspect(ctx, e.ID)
	exists := err == nil
	if err != nil && !errors.Is(err, backend.ErrNotFound) {
		return err
	}
	if exists && inst.Status == backend.StatusRunning {
		started := e.CreatedAt
		if e.Claim.StartedAt != nil {
			started = *e.Claim.StartedAt
		}
		remaining := max(m.cfg.BootTimeout-time.Since(started), m.cfg.ProbeTimeout)
		if err := m.waitHealthy(ctx, e.URL, remaining); err == nil {
			return m.commitProvisioned(ctx, c, inst, 0, audit.ActorSystem, meta)
		}
	}
	reason := "provision interrupted"
	if err := m.backend.Destroy(ctx, e.ID); err != nil {
		return err
	}
	return m.commitOp(ctx, c, true, func(cur *bap.Engine) (*audit.Entry, error) {
		if cur.Status != bap.StateProvisioning {
			return nil, nil
		}
		cur.Status = bap.StateFailed
		cur.FailureReason = reason
		meta["reason"] = reason
		meta["port"] = cur.Port
		return &audit.Entry{Action: audit.ProvisionFailed, Actor: audit.ActorSystem, Metadata: meta}, nil
	})
}

// leftoverAge is how old a claim of this replica that none of its
// operations holds must be before it is ended as a leftover: an operation
// registers its claim right after the claim commits, so this only needs to
// outlast a loaded machine's scheduling delay.
var leftoverAge = 10 * time.Second

// releaseLeftovers ends the claims this replica holds on rows that none of
// its operations is running any more (their end could not be written, for
// example while the database was down).
func (m *Manager) releaseLeftovers(ctx context.Context, engines []bap.Engine) {
	for _, e := range engines {
		if e.Claim.Owner != m.rep.ID() {
			continue
		}
		if epoch, ok := m.active.Load(e.ID); ok && epoch.(int64) == e.Claim.Epoch {
			continue
		}
		if time.Since(claimStart(e)) < leftoverAge {
			continue // an operation that just claimed and has not registered yet
		}
		m.release(ctx, &opClaim{engineID: e.ID, op: e.Claim.Op, epoch: e.Claim.Epoch})
	}
}

func claimStart(e bap.Engine) time.Time {
	if e.Claim.StartedAt != nil {
		return *e.Claim.StartedAt
	}
	return e.UpdatedAt
}
