package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/config"
	"github.com/september/bap-engine/internal/discovery"
	"github.com/september/bap-engine/internal/health"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/metrics"
	"github.com/september/bap-engine/internal/policy"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/sqlite"
	"github.com/september/bap-engine/internal/replica"
	"github.com/september/bap-engine/internal/rollout"
	"github.com/september/bap-engine/internal/secret"
	"github.com/september/bap-engine/internal/ui"
)

// Intervals of the maintenance loops that have no ORCH_* variable.
const (
	reconcileEvery  = time.Minute
	pruneEvery      = time.Hour
	shutdownTimeout = 15 * time.Second
)

// overlapMessage is logged when the subprocess backend finds another
// process operating on an engine this one is about to operate: the replicas'
// claims should make that impossible.
const overlapMessage = "backend operations of two orchestrator processes overlapped on one engine"

// provisionLimit is ORCH_MAX_CONCURRENT_PROVISIONS, or, when it is 0, a
// limit sized to the engine backend: how many engines it can start at once
// before starting more only slows every one of them down.
func provisionLimit(cfg config.Config) int {
	if cfg.MaxConcurrentProvisions > 0 {
		return cfg.MaxConcurrentProvisions
	}
	switch cfg.EngineBackend {
	case config.BackendSubprocess:
		// Engines are processes of this machine, booting on its cores.
		return 32 * runtime.NumCPU()
	case config.BackendKubernetes:
		// The API server, the scheduler and the nodes take many Pods at
		// once; the client's own rate limit (100 requests/s) paces them.
		return 64
	default:
		// The Docker daemon creates and starts containers one by one.
		return 32
	}
}

// server is the orchestrator assembled from a Config: the only place that
// names concrete implementations.
type server struct {
	cfg       config.Config
	log       *slog.Logger
	store     registry.Store
	backend   backend.Backend
	replica   *replica.Replica
	lifecycle *lifecycle.Manager
	discovery *discovery.Service
	checker   *health.Checker
	idle      *health.IdleSweeper
	rollouts  *rollout.Service
	handler   http.Handler
	metrics   *metrics.Metrics
}

// close releases the store and the backend's connections; engines keep
// running.
func (s *server) close() {
	if c, ok := s.backend.(io.Closer); ok {
		if err := c.Close(); err != nil {
			s.log.Warn("close backend", "err", err)
		}
	}
	if err := s.store.Close(); err != nil {
		s.log.Warn("close registry", "err", err)
	}
}

// newServer assembles the orchestrator. The caller calls close. With st,
// it waits for the database and the engine backend while they cannot be
// reached (logging why, and telling st), instead of failing at once.
func newServer(ctx context.Context, cfg config.Config, getenv func(string) string, log *slog.Logger, st *startup) (*server, error) {
	sealer, err := secret.NewSealer(cfg.MasterKey)
	if err != nil {
		return nil, fmt.Errorf("ORCH_MASTER_KEY: %w", err)
	}
	store, err := await(ctx, log, st, "database", bap.CodeDatabaseUnavailable, func(ctx context.Context) (registry.Store, error) {
		return openStore(ctx, cfg)
	})
	if err != nil {
		return nil, err
	}
	if ss, ok := store.(*sqlite.Store); ok {
		// This process's caches hear only of its own writes to the file.
		if err := ss.ClaimServing(); err != nil {
			store.Close()
			return nil, err
		}
	}
	rep := replica.New(store, replica.Config{
		TTL: cfg.ReplicaTTL,
		// HOSTNAME names the host as a container or pod sees itself; the
		// system's hostname otherwise.
		Host:    getenv("HOSTNAME"),
		Version: version,
		// With SQLite this process holds the file's lock: no other
		// orchestrator can be alive.
		Exclusive: cfg.DatabaseDriver == config.DriverSQLite,
		Logger:    log,
	})
	be, err := await(ctx, log, st, "engine backend", bap.CodeBackendUnavailable, func(ctx context.Context) (backend.Backend, error) {
		return openBackend(ctx, cfg, getenv, rep, log)
	})
	if err != nil {
		store.Close()
		return nil, err
	}
	slugOf := func(ctx context.Context, productID string) (string, error) {
		p, err := store.GetProduct(ctx, productID)
		return p.Slug, err
	}
	met := metrics.New(metrics.Config{
		Slug:    slugOf,
		States:  registry.StateNames(),
		Logger:  log,
		Engines: registry.EngineCounts(store),
	})
	lm := lifecycle.New(store, be, sealer, lifecycle.Config{
		PortMin:      cfg.PortMin,
		PortMax:      cfg.PortMax,
		BootTimeout:  cfg.BootTimeout,
		DefaultImage: cfg.EngineImage,
		SleepMode:    cfg.SleepMode,
		Restart: lifecycle.RestartPolicy{
			MaxAttempts: cfg.RestartMaxAttempts,
			BackoffBase: cfg.RestartBackoffBase,
			BackoffMax:  cfg.RestartBackoffMax,
		},
		OrphanGrace:             cfg.ReconcileGrace,
		SnapshotsKept:           cfg.SnapshotsKept,
		MaxConcurrentProvisions: provisionLimit(cfg),
		Replica:                 rep,
		Logger:                  log,
		Observer:                met,
	})
	limiter := policy.NewLimiter(time.Now)
	// last_active_at is written at most once per engine per TouchInterval;
	// keep that well below the idle timeout so an engine in use never looks
	// idle to the sleep sweep.
	touch := 5 * time.Second
	if cfg.IdleTimeout > 0 {
		touch = min(touch, cfg.IdleTimeout/4)
	}
	admitCache := cfg.AdmitCache
	if admitCache == 0 {
		admitCache = -1 // off
	}
	disc := discovery.New(store, lm, limiter, discovery.Config{Logger: log, TouchInterval: touch, EngineTTL: admitCache})
	met.AdmitCache(func() metrics.AdmitCacheStats {
		st := disc.CacheStats()
		return metrics.AdmitCacheStats{Live: st.Live, Engines: st.Engines, Hits: st.Hits, Reads: st.Reads}
	})
	b := currentBuild()
	met.BuildInfo(b.Version, b.Commit, b.Go)
	met.Database(store.Ping)
	met.Ports(func(ctx context.Context) (metrics.PortStats, error) {
		allocs, err := store.ListPortAllocations(ctx)
		if err != nil {
			return metrics.PortStats{}, err
		}
		st := metrics.PortStats{Total: cfg.PortMax - cfg.PortMin + 1}
		for _, a := range allocs {
			if a.Port >= cfg.PortMin && a.Port <= cfg.PortMax {
				st.Used++
			}
		}
		return st, nil
	})
	if p, ok := store.(registry.Pooled); ok {
		met.DBPool(func() metrics.DBPoolStats {
			st := p.PoolStats()
			return metrics.DBPoolStats{InUse: st.InUse, Idle: st.Idle, Max: st.Max}
		})
	}
	checker := health.New(store, lm, health.Config{
		Interval:    cfg.HealthCheckInterval,
		Timeout:     cfg.HealthCheckTimeout,
		MaxFailures: cfg.HealthMaxFailures,
		SleepMode:   cfg.SleepMode,
		Logger:      log,
		Observer:    met,
	})
	idle := health.NewIdleSweeper(store, lm, health.IdleConfig{IdleTimeout: cfg.IdleTimeout, Logger: log})
	rollouts := rollout.New(rollout.Config{Store: store, Lifecycle: lm, Replica: rep, Logger: log,
		ProductChanged: disc.ForgetProduct})
	handler := api.New(api.Deps{
		Store:            store,
		Lifecycle:        lm,
		Discovery:        disc,
		Rollouts:         rollouts,
		Metrics:          met,
		AdminKey:         cfg.AdminKey,
		PlatformKeyGrace: cfg.PlatformKeyGrace,
		Logger:           log,
		UI: ui.New(ui.Deps{
			Store: store, Lifecycle: lm, Discovery: disc, Rollouts: rollouts, AdminKey: cfg.AdminKey,
			PlatformKeyGrace: cfg.PlatformKeyGrace, Logger: log, Context: ctx,
			Logs: func(ctx context.Context, engineID string, lines int) (string, error) {
				return engineLogTail(ctx, store, lm, engineID, lines)
			},
		}),
		WriteTimeout: cfg.HTTPReadTimeout,
		Context:      ctx,
		Build:        apiBuild(),
		MetricsToken: cfg.MetricsToken,
		Ready: func(ctx context.Context) error {
			if p, ok := be.(interface{ Ping(context.Context) error }); ok {
				return p.Ping(ctx)
			}
			return nil
		},
	})
	return &server{
		cfg: cfg, log: log, store: store, backend: be, replica: rep, lifecycle: lm,
		discovery: disc, checker: checker, idle: idle, rollouts: rollouts, handler: handler, metrics: met,
	}, nil
}

// serve runs the orchestrator behind door until ctx ends: it registers as a
// replica and takes its shards, takes over what dead replicas (a previous
// run of this one included) left unfinished, then serves the HTTP API and
// every background loop. Shutdown stops accepting, finishes in-flight
// requests (bounded), stops the loops, waits for the operations in flight,
// and only then deregisters, so that no other replica takes over work this
// one still does. It never stops engines.
// ready, when set, is called once the API answers (tests and people wait
// for what it prints).
func (s *server) serve(ctx context.Context, door *frontDoor, ready func()) error {
	serving := false
	defer func() {
		if !serving {
			door.close()
		}
	}()
	var pprofLn net.Listener
	if s.cfg.PprofAddr != "" {
		var err error
		if pprofLn, err = net.Listen("tcp", s.cfg.PprofAddr); err != nil {
			return fmt.Errorf("ORCH_PPROF_ADDR %s: %w", s.cfg.PprofAddr, err)
		}
		defer pprofLn.Close()
	}
	if err := s.replica.Start(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // stopped before it started
		}
		return err
	}
	repCtx, stopReplica := context.WithCancel(context.WithoutCancel(ctx))
	defer stopReplica()
	repDone := make(chan struct{})
	go func() {
		defer close(repDone)
		_ = s.replica.Run(repCtx)
	}()
	st, rerr := s.lifecycle.Reconcile(ctx)
	s.metrics.Reconciled(metrics.ReconcilePass{TakenOver: st.TakenOver, RunningLost: st.RunningLost,
		OrphansRemoved: st.OrphansRemoved, PortsFreed: st.PortsFreed, Errors: st.Errors}, rerr)
	if rerr != nil {
		s.log.Warn("startup reconciliation incomplete; the periodic pass will retry", "err", rerr)
	} else {
		s.log.Info("startup reconciliation", "stats", st)
	}

	loopCtx, stopLoops := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLoops()
	reconciler := lifecycle.NewReconciler(s.lifecycle, lifecycle.ReconcilerConfig{Every: reconcileEvery, Logger: s.log,
		OnPass: func(st lifecycle.ReconcileStats, err error) {
			s.metrics.Reconciled(metrics.ReconcilePass{TakenOver: st.TakenOver, RunningLost: st.RunningLost,
				OrphansRemoved: st.OrphansRemoved, PortsFreed: st.PortsFreed, Errors: st.Errors}, err)
		}})
	g, gctx := errgroup.WithContext(loopCtx)
	g.Go(func() error { return ignoreCanceled(s.discovery.Run(gctx)) })
	g.Go(func() error { return ignoreCanceled(s.checker.Run(gctx)) })
	g.Go(func() error { return s.checker.RunCrashWatch(gctx) })
	g.Go(func() error { return ignoreCanceled(s.idle.Run(gctx)) })
	g.Go(func() error { return reconciler.Run(gctx) })
	g.Go(func() error { return s.rollouts.Run(gctx) })
	if pprofLn != nil {
		g.Go(func() error { servePprof(gctx, pprofLn, s.log); return nil })
	}
	if s.cfg.AuditRetentionDays > 0 {
		pruner := registry.NewPruner(s.store, registry.PrunerConfig{
			Retention: time.Duration(s.cfg.AuditRetentionDays) * 24 * time.Hour,
			Every:     pruneEvery,
			Leader:    func() bool { _, ok := s.replica.Leader(); return ok },
			Logger:    s.log,
		})
		g.Go(func() error { return pruner.Run(gctx) })
	}

	srv, serveErr := door.srv, door.served
	door.use(s.handler)
	serving = true
	if ready != nil {
		ready()
	}
	s.log.Info("bap-engine serving", "backend", s.backend.Name(), "version", version,
		"database", s.cfg.DatabaseDriver, "sleep_mode", s.cfg.SleepMode, "replica_id", s.replica.ID())

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
	}
	s.log.Info("shutting down: engines keep running")
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if serr := srv.Shutdown(shutCtx); serr != nil {
		s.log.Warn("http shutdown", "err", serr)
	}
	stopLoops()
	if gerr := g.Wait(); gerr != nil {
		s.log.Warn("background loop", "err", gerr)
	}
	closeErr := s.lifecycle.Close(shutCtx)
	stopReplica()
	<-repDone
	if closeErr != nil {
		// Operations still run: leave the replica row to expire, so that
		// others take them over only once this process is gone.
		s.log.Warn("operations still running at shutdown; other replicas take them over after the TTL", "err", closeErr)
	} else {
		s.replica.Deregister(context.WithoutCancel(ctx))
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

func ignoreCanceled(err error) error {
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
