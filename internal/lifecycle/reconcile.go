package lifecycle

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/loop"
	"github.com/september/bap-engine/internal/registry"
)

// ReconcileStats counts what one reconciliation pass did.
type ReconcileStats struct {
	Engines        int // engines of this replica's shards looked at
	TakenOver      int // interrupted operations (or unclaimed provisioning/destroying rows) taken over
	RunningLost    int // running/sleeping rows whose instance is gone → failed
	OrphansRemoved int // labelled instances with no row, removed
	PortsFreed     int // port allocations with no engine, freed
	Errors         int
}

// LogValue logs the statistics as structured fields (a group), never as
// one formatted string.
func (st ReconcileStats) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Int("engines", st.Engines), slog.Int("taken_over", st.TakenOver),
		slog.Int("running_lost", st.RunningLost), slog.Int("orphans_removed", st.OrphansRemoved),
		slog.Int("ports_freed", st.PortsFreed), slog.Int("errors", st.Errors))
}

// maxTakeovers bounds the takeovers running at once, well below a
// database pool's size so takeovers never starve other work.
const maxTakeovers = 4

// Reconcile repairs the difference between the registry (the intent) and the
// backend (the fact), SPEC §9 and §15, for the engines of the shards this
// replica holds: operations whose replica died are taken over (in the
// background, see takeOver), provisioning and destroying rows without any
// claim are repaired, and running rows whose instance is gone are failed
// (and so restarted). The replica that holds the leader shard also removes
// labelled instances without a row — at once when the replica that created
// them is dead, after OrphanGrace when it is alive — and frees ports no
// engine holds. A healthy engine is never stopped or recreated.
func (m *Manager) Reconcile(ctx context.Context) (ReconcileStats, error) {
	var st ReconcileStats
	listed := bap.Now()
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
	m.releaseLeftovers(ctx, engines)
	known := make(map[string]bool, len(engines))
	for _, e := range engines {
		known[e.ID] = true
		lease, ok := m.rep.Lease(e.ID)
		if !ok {
			continue
		}
		st.Engines++
		if e.Claim.Held() || e.Status == bap.StateProvisioning || e.Status == bap.StateDestroying {
			if m.startTakeover(ctx, e, lease) {
				st.TakenOver++
			}
			continue
		}
		if e.Status != bap.StateRunning && e.Status != bap.StateSleeping {
			continue
		}
		if e.UpdatedAt.After(listed) {
			continue // changed since the listing: the next pass looks again
		}
		inst, ok := byEngine[e.ID]
		if ok && inst.Status != backend.StatusExited && inst.Status != backend.StatusCreated {
			continue
		}
		if e.Status == bap.StateSleeping && m.cfg.SleepMode == SleepStop {
			continue // a stopped instance is how stop-mode sleep looks
		}
		reason := "instance missing"
		if ok {
			reason = "instance " + string(inst.Status)
		}
		unchanged := func(cur bap.Engine) bool { return cur.UpdatedAt.Equal(e.UpdatedAt) }
		marked, err := m.MarkFailed(ctx, e.ID, audit.ReconcileFailed, reason, unchanged)
		if err != nil {
			st.Errors++
			m.log.WarnContext(ctx, "reconcile engine", "engine_id", e.ID, "status", e.Status, "err", err)
		}
		if marked {
			st.RunningLost++
		}
	}
	if _, leader := m.rep.Leader(); !leader {
		return st, nil
	}
	for _, in := range instances {
		if known[in.EngineID] || in.EngineID == "" {
			continue
		}
		removed, err := m.removeOrphan(ctx, in)
		if err != nil {
			st.Errors++
			m.log.WarnContext(ctx, "remove orphan", "engine_id", in.EngineID, "err", err)
		}
		if removed {
			st.OrphansRemoved++
		}
	}
	n, err := m.store.FreeOrphanPorts(ctx)
	if err != nil {
		return st, storeErr("free orphan ports", err)
	}
	st.PortsFreed = n
	return st, nil
}

// removeOrphan removes a labelled instance that has no engine row: at once
// when the replica that created it is dead (or unnamed and past the grace),
// after OrphanGrace otherwise.
func (m *Manager) removeOrphan(ctx context.Context, in backend.Instance) (bool, error) {
	if m.flights.inFlight(in.EngineID) {
		return false, nil
	}
	creatorDead := false
	if in.Replica != "" {
		alive, err := m.rep.Alive(ctx, in.Replica)
		if err != nil {
			return false, err
		}
		creatorDead = !alive
	}
	if !creatorDead && time.Since(in.CreatedAt) < m.cfg.OrphanGrace {
		return false, nil
	}
	// The row may have appeared since the listing (a provision commits its
	// row before it creates the instance, so it would be there already;
	// this only guards a slow listing).
	if _, err := m.store.GetEngine(ctx, in.EngineID); !errors.Is(err, registry.ErrNotFound) {
		return false, err
	}
	if err := m.backend.Destroy(ctx, in.EngineID); err != nil {
		return false, err
	}
	err := m.store.AppendAudit(ctx, audit.Entry{ProductID: in.ProductID, EngineID: in.EngineID,
		Action: audit.OrphanRemoved, Actor: audit.ActorSystem,
		Metadata: map[string]any{"instance": in.Name, "status": string(in.Status), "creator_dead": creatorDead}})
	return true, err
}

// RepairInterrupted is the quick pass that runs every second: it ends the
// leftover claims of this replica and takes over (in the background) every
// claimed operation on this replica's shards whose owner is dead, and every
// provisioning or destroying row left without a claim. It reports how many
// takeovers it started.
func (m *Manager) RepairInterrupted(ctx context.Context) (int, error) {
	engines, err := m.store.EnginesInOperation(ctx)
	if err != nil {
		return 0, storeErr("list operations", err)
	}
	m.releaseLeftovers(ctx, engines)
	transitional, err := m.store.EnginesByStatus(ctx, bap.StateProvisioning, bap.StateDestroying)
	if err != nil {
		return 0, storeErr("list engines", err)
	}
	for _, e := range transitional {
		if !e.Claim.Held() {
			engines = append(engines, e)
		}
	}
	n := 0
	for _, e := range engines {
		if e.Claim.Held() && (e.Claim.Owner == m.rep.ID() || m.rep.KnownAlive(e.Claim.Owner)) {
			continue
		}
		lease, ok := m.rep.Lease(e.ID)
		if !ok {
			continue
		}
		if m.startTakeover(ctx, e, lease) {
			n++
		}
	}
	return n, nil
}

// startTakeover takes e's interrupted operation over in the background,
// bounded, unless it is this replica's own live operation or one already
// being taken over. It reports whether it started one.
func (m *Manager) startTakeover(ctx context.Context, e bap.Engine, lease registry.Lease) bool {
	if e.Claim.Owner == m.rep.ID() || m.closed() {
		return false
	}
	if _, running := m.repairs.Load(e.ID); running {
		return false
	}
	select {
	case m.takeoverSem <- struct{}{}:
	default:
		return false // the next pass retries
	}
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		defer func() { <-m.takeoverSem }()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.OpTimeout)
		defer cancel()
		if err := m.takeOver(ctx, e, lease); err != nil && !errors.Is(err, errSkip) {
			m.log.WarnContext(ctx, "take over interrupted operation", "engine_id", e.ID, "op", e.Claim.Op, "err", err)
		}
	}()
	return true
}

// ReconcilerConfig tunes a Reconciler.
type ReconcilerConfig struct {
	// Every is the full reconciliation period (default 1 min).
	Every time.Duration
	// RepairEvery is the period of the quick pass over interrupted
	// operations (default 1 s).
	RepairEvery time.Duration
	// Logger (default the Manager's).
	Logger *slog.Logger
	// OnPass, when set, receives every full pass's statistics and error.
	OnPass func(ReconcileStats, error)
}

// Reconciler runs reconciliation on its schedule: a full pass at start and
// every Every, and the quick repair pass every RepairEvery.
type Reconciler struct {
	m   *Manager
	cfg ReconcilerConfig
	log *slog.Logger
}

// NewReconciler returns the Reconciler of m.
func NewReconciler(m *Manager, cfg ReconcilerConfig) *Reconciler {
	cfg.Every = cmp.Or(cfg.Every, time.Minute)
	cfg.RepairEvery = cmp.Or(cfg.RepairEvery, time.Second)
	log := cmp.Or(cfg.Logger, m.log).With("component", "reconcile")
	return &Reconciler{m: m, cfg: cfg, log: log}
}

// Run reconciles until ctx ends and returns nil.
func (r *Reconciler) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = loop.Run(ctx, loop.Config{Name: "repair of interrupted operations", Every: r.cfg.RepairEvery,
			Jitter: 0.1, Logger: r.log}, func(ctx context.Context) error {
			_, err := r.m.RepairInterrupted(ctx)
			return err
		})
	})
	_ = loop.Run(ctx, loop.Config{Name: "reconciliation", Every: r.cfg.Every, Jitter: 0.1, Timeout: r.cfg.Every,
		Logger: r.log}, func(ctx context.Context) error {
		st, err := r.m.Reconcile(ctx)
		if r.cfg.OnPass != nil {
			r.cfg.OnPass(st, err)
		}
		if err == nil && (st.TakenOver > 0 || st.RunningLost > 0 || st.OrphansRemoved > 0 || st.PortsFreed > 0 || st.Errors > 0) {
			r.log.InfoContext(ctx, "reconciliation repaired", "stats", st)
		}
		return err
	})
	wg.Wait()
	return nil
}
