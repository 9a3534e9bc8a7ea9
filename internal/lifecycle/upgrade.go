package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// Upgrade phases, recorded in the claim's detail as they begin, so that a
// takeover after this replica's death knows what the brain and the
// instance may be (SPEC §16) and the CLI can show progress.
const (
	PhaseSnapshotting = "snapshotting"
	PhaseCreating     = "creating"
	PhaseWaiting      = "waiting_for_health"
	PhaseRollingBack  = "rolling_back"
)

// upgradeDetail is an upgrade's claim detail.
type upgradeDetail struct {
	From     string    `json:"from"`
	To       string    `json:"to"`
	Prev     bap.State `json:"prev"`
	Phase    string    `json:"phase"`
	Snapshot string    `json:"snapshot,omitempty"`
	// Reason is why a rollback began.
	Reason string `json:"reason,omitempty"`
}

func (d upgradeDetail) json() string {
	b, _ := json.Marshal(d)
	return string(b)
}

// UpgradePhase is the phase of the upgrade in flight on e, or "" when none
// is.
func UpgradePhase(e bap.Engine) string {
	if e.Claim.Op != bap.OpUpgrade || e.Claim.Detail == "" {
		return ""
	}
	var d upgradeDetail
	if json.Unmarshal([]byte(e.Claim.Detail), &d) != nil {
		return ""
	}
	return d.Phase
}

// upgradeTimeout bounds a whole upgrade: a stop and a boot forward, and
// the same again to roll back, with the copies of the brain.
func (m *Manager) upgradeTimeout() time.Duration {
	return 2*m.cfg.BootTimeout + 3*m.cfg.StopGrace + 2*time.Minute
}

// Upgrade moves a running, sleeping or stopped engine to image on the same
// brain, key and URL (SPEC §16): the engine is stopped, its brain
// snapshotted, and the instance recreated with image and waited healthy.
// The engine then runs (or, if it was stopped, is stopped again) and the
// upgrade is audited with from, to and the snapshot; the newest
// SnapshotsKept snapshots are kept. If the new image does not become
// healthy, the upgrade is rolled back: the snapshot is restored, the old
// image recreated on it and the engine put back in its previous state,
// audited upgrade_rolled_back, and the caller gets UPGRADE_FAILED with the
// engine's reason. An engine already on image is returned as it is.
// Errors: ENGINE_NOT_FOUND, ENGINE_BUSY, ENGINE_NOT_RUNNING (failed),
// VALIDATION_ERROR, UPGRADE_FAILED, IMAGE_NOT_FOUND, BACKEND_*,
// DATABASE_UNAVAILABLE.
func (m *Manager) Upgrade(ctx context.Context, engineID, image, actor string) (Result, error) {
	if image == "" {
		return Result{}, bap.Errorf(bap.CodeValidation, "engine_version is required")
	}
	if err := validateImage(image); err != nil {
		return Result{}, err
	}
	return m.flights.do(ctx, engineID, "upgrade "+image, func(ctx context.Context) (res Result, err error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.upgradeTimeout())
		defer cancel()
		began := time.Now()
		var productID string
		defer m.observe(&productID, string(audit.Upgrade), began, &err)
		spec := claimSpec{
			op:   bap.OpUpgrade,
			hard: hardBusy,
			pre: func(_ context.Context, _ registry.Store, cur bap.Engine) error {
				productID = cur.ProductID
				switch cur.Status {
				case bap.StateRunning, bap.StateSleeping, bap.StateStopped:
				default:
					return bap.Errorf(bap.CodeEngineNotRunning, "Engine is %s; only running, sleeping or stopped engines are upgraded.", cur.Status)
				}
				if cur.Image == image {
					return errDone
				}
				return nil
			},
		}
		join := func(_, after bap.Engine, gone bool) (Result, bool, error) {
			if !gone && after.Image == image {
				return Result{Engine: after}, true, nil
			}
			return Result{}, false, nil
		}
		return m.runOp(ctx, engineID, spec, join, func(ctx context.Context, c *opClaim, e bap.Engine) (Result, error) {
			productID = e.ProductID
			d := upgradeDetail{From: e.Image, To: image, Prev: e.Status, Phase: PhaseSnapshotting}
			if err := m.upgradeForward(ctx, c, e, &d, actor, began, nil); err != nil {
				return Result{}, err
			}
			e, err := m.load(ctx, engineID)
			return Result{Engine: e}, err
		})
	})
}

// setDetail records the upgrade's detail on the claim (its phase, its
// snapshot) without changing anything else.
func (m *Manager) setDetail(ctx context.Context, c *opClaim, d upgradeDetail) error {
	return m.commitOp(ctx, c, false, func(cur *bap.Engine) (*audit.Entry, error) {
		cur.Claim.Detail = d.json()
		return nil, nil
	})
}

// upgradeForward runs the upgrade from its first phase: snapshot, create,
// wait; on a failure of the new image, the rollback.
func (m *Manager) upgradeForward(ctx context.Context, c *opClaim, e bap.Engine, d *upgradeDetail, actor string,
	began time.Time, meta map[string]any) error {
	if err := m.setDetail(ctx, c, *d); err != nil {
		return err
	}
	if err := m.stopInstance(ctx, e.ID); err != nil {
		return opErr(err, m.cfg.BootTimeout)
	}
	snap, err := m.backend.Snapshot(ctx, e.ID)
	if err != nil {
		// Nothing changed yet: put the engine back as it was.
		m.log.Warn("upgrade: snapshot failed", "engine_id", e.ID, "err", err)
		if rerr := m.restorePrev(ctx, e, d.Prev, e.Image); rerr != nil {
			return m.failBringUp(ctx, c, e, audit.UpgradeRolledBack, actor, rerr)
		}
		return opErr(err, m.cfg.BootTimeout)
	}
	d.Snapshot, d.Phase = snap, PhaseCreating
	if err := m.setDetail(ctx, c, *d); err != nil {
		return err
	}
	p, err := m.store.GetProduct(ctx, e.ProductID)
	if err != nil {
		return productErr("read product", err)
	}
	next := e
	next.Image = d.To
	inst, err := m.replace(ctx, next, p)
	if err == nil {
		d.Phase = PhaseWaiting
		if err = m.setDetail(ctx, c, *d); err != nil {
			return err
		}
		err = m.waitHealthy(ctx, m.addr(e), m.cfg.BootTimeout)
	}
	if err != nil {
		if errors.Is(err, errFenced) || errors.Is(err, registry.ErrUnavailable) {
			return opErr(err, m.cfg.BootTimeout)
		}
		d.Reason = upgradeReason(err)
		m.log.Warn("upgrade failed, rolling back", "engine_id", e.ID, "from", d.From, "to", d.To, "reason", d.Reason)
		return m.rollBack(ctx, c, e, d, actor, meta)
	}
	return m.commitUpgraded(ctx, c, e, *d, inst, actor, began, meta)
}

// upgradeReason is the engine's reason an upgrade failed, as the caller
// and the audit see it.
func upgradeReason(err error) string {
	switch {
	case errors.Is(err, errBootTimeout):
		// The last probe's answer is the engine's own word.
		return truncate(err.Error(), 300)
	case errors.Is(err, backend.ErrImageNotFound):
		return "image not found"
	}
	return failureReason(err)
}

// replace recreates the engine's instance from e (its image, key and port)
// on the same data and starts it, without waiting.
func (m *Manager) replace(ctx context.Context, e bap.Engine, p bap.Product) (backend.Instance, error) {
	if err := m.backend.Stop(ctx, e.ID, m.cfg.StopGrace); err != nil {
		return backend.Instance{}, err
	}
	if err := m.backend.Remove(ctx, e.ID); err != nil {
		return backend.Instance{}, err
	}
	return m.createAndStart(ctx, m.spec(e, p))
}

// commitUpgraded records the new image, puts a stopped engine back to
// stopped, prunes old snapshots and ends the claim.
func (m *Manager) commitUpgraded(ctx context.Context, c *opClaim, e bap.Engine, d upgradeDetail,
	inst backend.Instance, actor string, began time.Time, meta map[string]any) error {
	to := bap.StateRunning
	if d.Prev == bap.StateStopped {
		if err := m.stopInstance(ctx, e.ID); err != nil {
			return opErr(err, m.cfg.BootTimeout)
		}
		to = bap.StateStopped
	}
	kept := m.prune(ctx, e.ID)
	return m.commitOp(ctx, c, true, func(cur *bap.Engine) (*audit.Entry, error) {
		if cur.Status == bap.StateDestroying || cur.Status == bap.StateProvisioning {
			return nil, bap.Errorf(bap.CodeEngineBusy, "Engine is %s.", cur.Status)
		}
		cur.Image = d.To
		cur.Status = to
		if inst.ID != "" {
			cur.InstanceID = inst.ID
		}
		cur.URL = m.addr(*cur)
		cur.HealthFailures = 0
		cur.FailureReason = ""
		md := map[string]any{"from": d.From, "to": d.To, "snapshot": d.Snapshot, "snapshots_kept": kept, "prev": string(d.Prev)}
		for k, v := range meta {
			md[k] = v
		}
		return &audit.Entry{Action: audit.Upgrade, Actor: actor, DurationMS: ptr(time.Since(began).Milliseconds()), Metadata: md}, nil
	})
}

// prune deletes all but the newest SnapshotsKept snapshots; a failure is
// logged (the next upgrade prunes again).
func (m *Manager) prune(ctx context.Context, engineID string) []string {
	kept, err := m.backend.PruneSnapshots(ctx, engineID, m.cfg.SnapshotsKept)
	if err != nil {
		m.log.Warn("prune brain snapshots", "engine_id", engineID, "err", err)
	}
	return kept
}

// rollBack undoes an upgrade of the engine of c: the snapshot is restored,
// the old image recreated on it, and the engine put back in its previous
// state. The caller gets UPGRADE_FAILED with the reason. If even the old
// image does not come up, the engine is failed (and so on the restart
// path, with the old image on the restored brain).
func (m *Manager) rollBack(ctx context.Context, c *opClaim, e bap.Engine, d *upgradeDetail, actor string, meta map[string]any) error {
	d.Phase = PhaseRollingBack
	if err := m.setDetail(ctx, c, *d); err != nil {
		return err
	}
	failed := bap.Errorf(bap.CodeUpgradeFailed, "Upgrade to %s failed and was rolled back to %s: %s", d.To, d.From, d.Reason)
	err := m.backend.Stop(ctx, e.ID, m.cfg.StopGrace)
	if err == nil {
		err = m.backend.Remove(ctx, e.ID)
	}
	if err == nil && d.Snapshot != "" {
		err = m.backend.Restore(ctx, e.ID, d.Snapshot)
	}
	if err == nil {
		err = m.restorePrev(ctx, e, d.Prev, d.From)
	}
	md := map[string]any{"from": d.From, "to": d.To, "snapshot": d.Snapshot, "reason": d.Reason, "prev": string(d.Prev)}
	for k, v := range meta {
		md[k] = v
	}
	if err != nil {
		if errors.Is(err, errFenced) {
			return opErr(err, m.cfg.BootTimeout)
		}
		// The old image did not come back either: failed, with the brain
		// restored, so the restart path (or an operator) takes it from here.
		m.log.Error("upgrade rollback did not bring the engine back", "engine_id", e.ID, "err", err)
		md["rollback_error"] = truncate(err.Error(), 300)
		cerr := m.commitOp(ctx, c, true, func(cur *bap.Engine) (*audit.Entry, error) {
			if cur.Status == bap.StateDestroying || cur.Status == bap.StateProvisioning {
				return nil, nil
			}
			cur.Status = bap.StateFailed
			cur.FailureReason = "upgrade rollback failed: " + failureReason(err)
			return &audit.Entry{Action: audit.UpgradeRolledBack, Actor: actor, Metadata: md}, nil
		})
		if cerr != nil {
			return cerr
		}
		return failed
	}
	m.prune(ctx, e.ID)
	to := bap.StateRunning
	if d.Prev == bap.StateStopped {
		to = bap.StateStopped
	}
	err = m.commitOp(ctx, c, true, func(cur *bap.Engine) (*audit.Entry, error) {
		if cur.Status == bap.StateDestroying || cur.Status == bap.StateProvisioning {
			return nil, bap.Errorf(bap.CodeEngineBusy, "Engine is %s.", cur.Status)
		}
		cur.Status = to
		cur.URL = m.addr(*cur)
		return &audit.Entry{Action: audit.UpgradeRolledBack, Actor: actor, Metadata: md}, nil
	})
	if err != nil {
		return err
	}
	return failed
}

// restorePrev brings the engine back on image in its previous state: an
// instance of image, healthy, then stopped again if the engine was stopped.
func (m *Manager) restorePrev(ctx context.Context, e bap.Engine, prev bap.State, image string) error {
	p, err := m.store.GetProduct(ctx, e.ProductID)
	if err != nil {
		return productErr("read product", err)
	}
	old := e
	old.Image = image
	if _, err := m.replace(ctx, old, p); err != nil {
		return err
	}
	if err := m.waitHealthy(ctx, m.addr(e), m.cfg.BootTimeout); err != nil {
		return fmt.Errorf("old image %s on the restored brain: %w", image, err)
	}
	if prev == bap.StateStopped {
		return m.stopInstance(ctx, e.ID)
	}
	return nil
}

// repairUpgrade finishes or undoes an upgrade whose replica died (a
// takeover): before the snapshot nothing changed, so the engine is put
// back as it was; once the new image was waited for, an instance that
// answers healthy is the new one and the upgrade is finished; otherwise the
// snapshot is restored under the old image.
func (m *Manager) repairUpgrade(ctx context.Context, c *opClaim, e bap.Engine, meta map[string]any) error {
	var d upgradeDetail
	if e.Claim.Detail == "" || json.Unmarshal([]byte(e.Claim.Detail), &d) != nil {
		// The claim began but no phase was written: nothing changed.
		d = upgradeDetail{From: e.Image, Prev: e.Status, Phase: PhaseSnapshotting}
	}
	began := time.Now()
	switch {
	case d.Snapshot == "":
		// Stopped at most; the brain is untouched.
		if err := m.restorePrev(ctx, e, d.Prev, e.Image); err != nil {
			return m.failBringUp(ctx, c, e, audit.UpgradeRolledBack, audit.ActorSystem, err)
		}
		return m.commitOp(ctx, c, true, func(cur *bap.Engine) (*audit.Entry, error) {
			if d.Prev == bap.StateStopped {
				cur.Status = bap.StateStopped
			} else if cur.Status != bap.StateRunning {
				cur.Status = bap.StateRunning
			}
			md := map[string]any{"from": d.From, "to": d.To, "reason": "interrupted before the snapshot"}
			for k, v := range meta {
				md[k] = v
			}
			return &audit.Entry{Action: audit.UpgradeRolledBack, Actor: audit.ActorSystem, Metadata: md}, nil
		})
	case d.Phase == PhaseWaiting:
		inst, err := m.backend.Inspect(ctx, e.ID)
		if err == nil && inst.Status == backend.StatusRunning {
			started := began
			if e.Claim.StartedAt != nil {
				started = *e.Claim.StartedAt
			}
			wait := max(m.cfg.BootTimeout-time.Since(started), m.cfg.ProbeTimeout)
			if m.waitHealthy(ctx, m.addr(e), wait) == nil {
				return m.commitUpgraded(ctx, c, e, d, inst, audit.ActorSystem, began, meta)
			}
		}
	}
	if d.Reason == "" {
		d.Reason = "interrupted"
	}
	err := m.rollBack(ctx, c, e, &d, audit.ActorSystem, meta)
	var be *bap.Error
	if errors.As(err, &be) && be.Code == bap.CodeUpgradeFailed {
		return nil // rolled back: the repair is done
	}
	return err
}
