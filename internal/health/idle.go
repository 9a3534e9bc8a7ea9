package health

import (
	"cmp"
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/registry"
)

// IdleConfig tunes an IdleSweeper.
type IdleConfig struct {
	// IdleTimeout is how long an engine may go without an admit before it
	// is put to sleep; 0 disables the sweeper.
	IdleTimeout time.Duration
	// Every is the sweep period (default min(IdleTimeout, 30 s)).
	Every time.Duration
	// Concurrency bounds sleeps running at once (default 8).
	Concurrency int
	// PassTimeout bounds one sweep (default 5 min: stop-mode sleeps wait
	// for engines to exit).
	PassTimeout time.Duration
	// Tick, when set, replaces the Every ticker (tests): a sweep at start
	// and one per tick.
	Tick <-chan time.Time
	// Now is the clock idle times are measured with (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
	// OnPass, when set, receives each sweep's statistics.
	OnPass func(IdleStats)
}

// IdleStats describes one sweep of the IdleSweeper.
type IdleStats struct {
	// Running is the number of running engines looked at.
	Running int
	// Idle is how many of them were idle for IdleTimeout.
	Idle int
	// Slept counts engines put to sleep; Kept those left running because
	// they became active (or changed state) before the sleep happened.
	Slept int
	Kept  int
	// Errors counts registry reads and sleeps that failed.
	Errors   int
	Duration time.Duration
}

// IdleSweeper puts running engines to sleep when they have not been
// admitted for IdleTimeout (SPEC §7), in the lifecycle's sleep mode.
type IdleSweeper struct {
	store registry.Store
	lm    *lifecycle.Manager
	cfg   IdleConfig
	log   *slog.Logger
}

// NewIdleSweeper returns an IdleSweeper over store and lm.
func NewIdleSweeper(store registry.Store, lm *lifecycle.Manager, cfg IdleConfig) *IdleSweeper {
	if store == nil || lm == nil {
		panic("health.NewIdleSweeper: store and lifecycle manager are required")
	}
	if cfg.IdleTimeout < 0 || cfg.Every < 0 || cfg.Concurrency < 0 || cfg.PassTimeout < 0 {
		panic("health.NewIdleSweeper: negative setting")
	}
	cfg.Every = cmp.Or(cfg.Every, min(cfg.IdleTimeout, 30*time.Second))
	cfg.Concurrency = cmp.Or(cfg.Concurrency, 8)
	cfg.PassTimeout = cmp.Or(cfg.PassTimeout, 5*time.Minute)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cmp.Or(cfg.Logger, slog.Default()).With("component", "idle")
	return &IdleSweeper{store: store, lm: lm, cfg: cfg, log: log}
}

// Run sweeps once, then every Every (or on each Tick), until ctx ends, and
// returns nil. With IdleTimeout 0 it returns nil at once.
func (s *IdleSweeper) Run(ctx context.Context) error {
	if s.cfg.IdleTimeout == 0 {
		return nil
	}
	tick := s.cfg.Tick
	if tick == nil {
		t := time.NewTicker(s.cfg.Every)
		defer t.Stop()
		tick = t.C
	}
	for {
		st := s.runOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if s.cfg.OnPass != nil {
			s.cfg.OnPass(st)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick:
		}
	}
}

// runOnce is one sweep: every running engine idle since before
// now-IdleTimeout (last admit, or creation when never admitted) is put to
// sleep on the condition that it stays idle, so an admit or wake racing
// the sweep wins.
func (s *IdleSweeper) runOnce(ctx context.Context) IdleStats {
	began := time.Now()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.PassTimeout)
	defer cancel()
	var st IdleStats
	engines, err := s.store.EnginesByStatus(ctx, bap.StateRunning)
	if err != nil {
		if ctx.Err() == nil {
			st.Errors++
			s.log.WarnContext(ctx, "idle sweep: read running engines", "err", err)
		}
		st.Duration = time.Since(began)
		return st
	}
	rep := s.lm.Replica()
	mine := engines[:0]
	for _, e := range engines {
		if _, ok := rep.Lease(e.ID); ok {
			mine = append(mine, e)
		}
	}
	engines = mine
	st.Running = len(engines)
	idleSince := s.cfg.Now().Add(-s.cfg.IdleTimeout)
	var (
		wg                 sync.WaitGroup
		sem                = make(chan struct{}, s.cfg.Concurrency)
		slept, kept, fails atomic.Int64
	)
	for _, e := range engines {
		last := e.CreatedAt
		if e.LastActiveAt != nil {
			last = *e.LastActiveAt
		}
		if last.After(idleSince) {
			continue
		}
		st.Idle++
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			ok, err := s.lm.Sleep(ctx, e.ID, idleSince)
			switch {
			case err != nil:
				fails.Add(1)
				s.log.WarnContext(ctx, "idle sweep: sleep engine", "engine_id", e.ID, "err", err)
			case ok:
				slept.Add(1)
				s.log.InfoContext(ctx, "engine put to sleep", "engine_id", e.ID, "product_id", e.ProductID,
					"idle_since", bap.FormatTime(last))
			default:
				kept.Add(1)
			}
		})
	}
	wg.Wait()
	st.Slept, st.Kept, st.Errors = int(slept.Load()), int(kept.Load()), st.Errors+int(fails.Load())
	st.Duration = time.Since(began)
	return st
}
