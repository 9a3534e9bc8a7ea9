package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/bap"
)

// ReconcileStats counts what one reconciliation pass repaired.
type ReconcileStats struct {
	ProvisioningFinished int // provisioning rows found healthy → running
	ProvisioningFailed   int // provisioning rows with nothing healthy → failed
	ProvisioningResumed  int // provisioning rows still booting, waited for in the background
	DestroysFinished     int // destroying rows completed
	RunningLost          int // running/sleeping rows whose instance is gone → failed
	OrphansRemoved       int // labelled instances with no row, removed
	PortsFreed           int // port allocations with no engine, freed
	Errors               int
}

// Reconcile repairs the difference between the registry (the intent) and the
// backend (the fact), SPEC §9. orphanGrace protects instances created by an
// operation that has not inserted or committed its row yet; backoff schedules
// the first restart of engines found lost. Engines with an operation in
// flight in this process are left alone. A healthy engine is never stopped or
// recreated.
func (m *Manager) Reconcile(ctx context.Context, orphanGrace time.Duration, backoff func(n int) time.Duration) (ReconcileStats, error) {
	var st ReconcileStats
	instances, err := m.backend.List(ctx)
	if err != nil {
		return st, fmt.Errorf("list instances: %w", err)
	}
	byEngine := make(map[string]backend.Instance, len(instances))
	for _, in := range instances {
		byEngine[in.EngineID] = in
	}
	engines, err := m.store.EnginesByStatus(ctx, bap.States...)
	if err != nil {
		return st, storeErr("list engines", err)
	}
	known := make(map[string]bool, len(engines))
	for _, e := range engines {
		known[e.ID] = true
		if m.flights.inFlight(e.ID) || m.flights.inFlight(provisionKey(e.ProductID, e.UserID)) {
			continue
		}
		inst, ok := byEngine[e.ID]
		var err error
		switch e.Status {
		case bap.StateProvisioning:
			if time.Since(e.UpdatedAt) < orphanGrace {
				continue // possibly another orchestrator's provision in flight
			}
			err = m.reconcileProvisioning(ctx, e, inst, ok, &st)
		case bap.StateDestroying:
			err = m.finishDestroy(ctx, e, audit.ActorSystem, bap.StateDestroying, time.Now())
			if err == nil {
				st.DestroysFinished++
			}
		case bap.StateRunning, bap.StateSleeping:
			if !ok || inst.Status == backend.StatusExited || inst.Status == backend.StatusCreated {
				if e.Status == bap.StateSleeping && m.cfg.SleepMode == SleepStop {
					continue // a stopped instance is how stop-mode sleep looks
				}
				reason := "instance missing"
				if ok {
					reason = "instance " + string(inst.Status)
				}
				var marked bool
				marked, err = m.MarkFailed(ctx, e.ID, audit.ReconcileFailed, reason, time.Now().Add(backoff(0)))
				if marked {
					st.RunningLost++
				}
			}
		}
		if err != nil {
			st.Errors++
			m.log.Warn("reconcile engine", "engine_id", e.ID, "status", e.Status, "err", err)
		}
	}
	for _, in := range instances {
		if known[in.EngineID] || in.EngineID == "" {
			continue
		}
		if time.Since(in.CreatedAt) < orphanGrace || m.flights.inFlight(in.EngineID) {
			continue
		}
		if err := m.backend.Destroy(ctx, in.EngineID); err != nil {
			st.Errors++
			m.log.Warn("remove orphan", "engine_id", in.EngineID, "err", err)
			continue
		}
		st.OrphansRemoved++
		if err := m.store.AppendAudit(ctx, audit.Entry{ProductID: in.ProductID, EngineID: in.EngineID,
			Action: audit.OrphanRemoved, Actor: audit.ActorSystem,
			Metadata: map[string]any{"instance": in.Name, "status": string(in.Status)}}); err != nil {
			st.Errors++
		}
	}
	n, err := m.store.FreeOrphanPorts(ctx)
	if err != nil {
		return st, storeErr("free orphan ports", err)
	}
	st.PortsFreed = n
	return st, nil
}

// reconcileProvisioning finishes a provision interrupted by a crash: an
// instance that answers healthy is adopted as running; otherwise whatever
// exists is removed and the engine is failed with its row and port kept.
func (m *Manager) reconcileProvisioning(ctx context.Context, e bap.Engine, inst backend.Instance, exists bool, st *ReconcileStats) error {
	if exists && inst.Status == backend.StatusRunning && Probe(ctx, m.probe, e.URL, m.cfg.ProbeTimeout) != nil {
		// Still booting: resume the provision in the background, as a
		// flight that admits can join, with the rest of its boot time.
		st.ProvisioningResumed++
		go m.resumeProvision(context.WithoutCancel(ctx), e, inst)
		return nil
	}
	if exists && inst.Status == backend.StatusRunning {
		err := m.commit(ctx, e.ID, func(cur *bap.Engine) (*audit.Entry, error) {
			if cur.Status != bap.StateProvisioning {
				return nil, errSkip
			}
			cur.Status = bap.StateRunning
			cur.InstanceID = inst.ID
			cur.LastActiveAt = ptr(bap.Now())
			return &audit.Entry{Action: audit.Provision, Actor: audit.ActorSystem,
				Metadata: map[string]any{"image": cur.Image, "port": cur.Port, "recovered": true}}, nil
		})
		if errors.Is(err, errSkip) {
			return nil
		}
		if err == nil {
			st.ProvisioningFinished++
		}
		return err
	}
	if err := m.backend.Destroy(ctx, e.ID); err != nil {
		return err
	}
	err := m.commit(ctx, e.ID, func(cur *bap.Engine) (*audit.Entry, error) {
		if cur.Status != bap.StateProvisioning {
			return nil, errSkip
		}
		cur.Status = bap.StateFailed
		cur.FailureReason = "provision interrupted"
		return &audit.Entry{Action: audit.ProvisionFailed, Actor: audit.ActorSystem,
			Metadata: map[string]any{"reason": "provision interrupted", "port": cur.Port}}, nil
	})
	if errors.Is(err, errSkip) {
		return nil
	}
	if err == nil {
		st.ProvisioningFailed++
	}
	return err
}

// resumeProvision waits for an engine whose provision was interrupted while
// it booted, then commits it running or fails it as a provision would.
func (m *Manager) resumeProvision(ctx context.Context, e bap.Engine, inst backend.Instance) {
	_, err := m.flights.do(ctx, provisionKey(e.ProductID, e.UserID), "provision", func(ctx context.Context) (Result, error) {
		remaining := m.cfg.BootTimeout - time.Since(e.UpdatedAt)
		if err := m.waitHealthy(ctx, e.URL, max(remaining, m.cfg.ProbeTimeout)); err != nil {
			return Result{}, m.failProvision(ctx, e, err)
		}
		err := m.commit(ctx, e.ID, func(cur *bap.Engine) (*audit.Entry, error) {
			if cur.Status != bap.StateProvisioning {
				return nil, errSkip
			}
			cur.Status = bap.StateRunning
			cur.InstanceID = inst.ID
			cur.LastActiveAt = ptr(bap.Now())
			return &audit.Entry{Action: audit.Provision, Actor: audit.ActorSystem,
				Metadata: map[string]any{"image": cur.Image, "port": cur.Port, "recovered": true}}, nil
		})
		if errors.Is(err, errSkip) {
			err = nil
		}
		if err != nil {
			return Result{}, err
		}
		cur, err := m.load(ctx, e.ID)
		return Result{Engine: cur}, err
	})
	if err != nil {
		m.log.Warn("resumed provision failed", "engine_id", e.ID, "err", err)
	}
}
