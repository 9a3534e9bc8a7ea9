package registry

import (
	"cmp"
	"context"
	"log/slog"
	"time"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/loop"
)

// PrunerConfig tunes a Pruner.
type PrunerConfig struct {
	// Retention is the age at which audit rows are deleted; required.
	Retention time.Duration
	// Every is the pruning period (default 1 h).
	Every time.Duration
	// Leader, when set, says whether this process is the one that prunes
	// now (several replicas share the database; one prunes).
	Leader func() bool
	// Tick, when set, replaces Every (tests).
	Tick <-chan time.Time
	// Now is the clock (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
	// OnPass, when set, receives how many rows each pass deleted (-1 when
	// it did not run because this process was not the leader).
	OnPass func(n int64, err error)
}

// Pruner deletes audit rows older than the retention (ORCH_AUDIT_RETENTION_DAYS).
type Pruner struct {
	store Store
	cfg   PrunerConfig
	log   *slog.Logger
}

// NewPruner returns a Pruner over store.
func NewPruner(store Store, cfg PrunerConfig) *Pruner {
	if store == nil || cfg.Retention <= 0 {
		panic("registry.NewPruner: store and a positive retention are required")
	}
	cfg.Every = cmp.Or(cfg.Every, time.Hour)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Pruner{store: store, cfg: cfg, log: cmp.Or(cfg.Logger, slog.Default()).With("component", "audit-prune")}
}

// Run prunes at once and then every Every until ctx ends; it returns nil.
func (p *Pruner) Run(ctx context.Context) error {
	_ = loop.Run(ctx, loop.Config{Name: "audit pruning", Every: p.cfg.Every, Jitter: 0.1, Tick: p.cfg.Tick,
		Logger: p.log}, func(ctx context.Context) error {
		n, err := p.RunOnce(ctx)
		if p.cfg.OnPass != nil {
			p.cfg.OnPass(n, err)
		}
		return err
	})
	return nil
}

// RunOnce deletes the rows older than the retention and returns how many;
// -1 when this process is not the leader.
func (p *Pruner) RunOnce(ctx context.Context) (int64, error) {
	if p.cfg.Leader != nil && !p.cfg.Leader() {
		return -1, nil
	}
	n, err := p.store.PruneAudit(ctx, bap.Timestamp(p.cfg.Now().Add(-p.cfg.Retention)))
	if err == nil && n > 0 {
		p.log.Info("audit pruned", "rows", n)
	}
	return n, err
}
