package health

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/requestid"
)

// Config tunes a Checker. Zero values take the documented defaults; a
// negative duration or count is a programmer error and panics in New.
type Config struct {
	// Interval is how often each engine is probed (default 30 s).
	Interval time.Duration
	// Timeout bounds one probe (default 10 s).
	Timeout time.Duration
	// MaxFailures consecutive failed probes make an engine failed (default 3).
	MaxFailures int
	// MaxInFlight bounds concurrent probes (default 50).
	MaxInFlight int
	// SleepMode is the lifecycle sleep mode; sleeping engines are probed only
	// in mark mode (default: the Manager's).
	SleepMode string
	// Refresh is how often the set of engines to probe is re-read from the
	// registry (default min(Interval, 1 s)); a fleet whose read takes long
	// is re-read less often, so that reading costs at most 1/20 of the time.
	Refresh time.Duration
	// RestartPoll is the longest wait between two looks for due restarts
	// (default 1 s); Kick and the earliest due time shorten it.
	RestartPoll time.Duration
	// RestartConcurrency bounds restart attempts running at once (default 16).
	RestartConcurrency int
	// FlushEvery and FlushSize batch result writes: a batch is written every
	// FlushEvery or as soon as FlushSize results wait (defaults 250 ms, 500).
	FlushEvery time.Duration
	FlushSize  int
	Logger     *slog.Logger
	// Observer, when set, counts probe failures and restarts (metrics).
	Observer Observer
	// Tick, when set, replaces the per-engine schedule (tests): Run sweeps
	// every engine once at start and once per tick, and reports each sweep
	// to OnPass when all of its probes and the failures they caused are
	// recorded.
	Tick <-chan time.Time
	// Now is the clock for recorded times and due restarts (default
	// time.Now).
	Now func() time.Time
	// OnPass, when set, receives the statistics of each pass: one Interval
	// of the schedule, or one sweep in Tick mode. It runs on the probe loop
	// and must not block for long.
	OnPass func(Stats)
	// OnRestart, when set, receives the outcome of every restart attempt the
	// Checker ran (not of those lifecycle skipped because the engine was no
	// longer failed and due).
	OnRestart func(RestartResult)
}

// Observer receives health events; *metrics.Metrics implements it. Methods
// must be cheap and safe for concurrent use.
type Observer interface {
	// ProbeFailure counts one failed probe of an engine of productID.
	ProbeFailure(productID string)
	// Restart counts one restart attempt and whether it brought the engine
	// back (err == nil).
	Restart(productID string, err error)
}

// GiveUpObserver is an Observer that also hears when an engine's automatic
// restarts are exhausted (it stays failed until started): an alert's signal.
type GiveUpObserver interface {
	RestartsExhausted(productID string)
}

// Stats describes one pass of the Checker.
type Stats struct {
	// Engines is the number of engines being probed at the end of the pass.
	Engines int
	// Probed counts probes completed during the pass; Failed those that failed.
	Probed int
	Failed int
	// Skipped counts probes not started because the previous probe of the
	// same engine was still running.
	Skipped int
	// MarkedFailed counts engines moved to failed by the health checks.
	MarkedFailed int
	// Restarts counts restart attempts finished; Restarted those that
	// brought the engine back; GaveUp those after which no attempt is left.
	Restarts  int
	Restarted int
	GaveUp    int
	// Errors counts registry errors (reads, batched writes, transitions).
	Errors int
	// MaxLag is the largest delay between a probe's due time and its start:
	// near zero while the schedule keeps up.
	MaxLag time.Duration
	// Duration is the pass's length: the interval, or the sweep's time.
	Duration time.Duration
}

// RestartResult is one restart attempt the Checker ran.
type RestartResult struct {
	EngineID  string
	ProductID string
	Outcome   lifecycle.RestartOutcome
	Err       error
}

// Checker is the health loop and the restart scheduler (SPEC §8).
type Checker struct {
	store  registry.Store
	lm     *lifecycle.Manager
	cfg    Config
	log    *slog.Logger
	obs    Observer
	now    func() time.Time
	client *http.Client
	w      *writer
	kick   chan struct{}
	states []bap.State

	mu         sync.Mutex
	marking    map[string]bool
	restarting map[string]bool
	// holdOff delays the next attempt of an engine whose last attempt was
	// deferred or hit an error (its due time in the registry did not move).
	holdOff map[string]time.Time
	// finished is when each engine's last attempt ended: a scan that read
	// the registry before then must not start another on its stale row.
	finished map[string]time.Time

	restartSem chan struct{}
	markSem    chan struct{}
	marks      sync.WaitGroup
	restarts   sync.WaitGroup
	ctr        counters
	started    atomic.Bool

	// onResult, when set, sees every probe result (benchmarks).
	onResult func(engineID string, ok bool)
}

// counters are the pass statistics shared by the loop's goroutines.
type counters struct {
	probed, failed, skipped, marked, restarts, restarted, gaveUp, errors atomic.Int64
}

type nopObserver struct{}

func (nopObserver) ProbeFailure(string)   {}
func (nopObserver) Restart(string, error) {}

// New returns a Checker over store and lm. Nothing runs until Run.
func New(store registry.Store, lm *lifecycle.Manager, cfg Config) *Checker {
	if store == nil || lm == nil {
		panic("health.New: store and lifecycle manager are required")
	}
	for name, d := range map[string]time.Duration{"Interval": cfg.Interval, "Timeout": cfg.Timeout,
		"Refresh": cfg.Refresh, "RestartPoll": cfg.RestartPoll, "FlushEvery": cfg.FlushEvery} {
		if d < 0 {
			panic("health.New: negative " + name)
		}
	}
	for name, n := range map[string]int{"MaxFailures": cfg.MaxFailures, "MaxInFlight": cfg.MaxInFlight,
		"RestartConcurrency": cfg.RestartConcurrency, "FlushSize": cfg.FlushSize} {
		if n < 0 {
			panic("health.New: negative " + name)
		}
	}
	cfg.Interval = cmp.Or(cfg.Interval, 30*time.Second)
	cfg.Timeout = cmp.Or(cfg.Timeout, 10*time.Second)
	cfg.MaxFailures = cmp.Or(cfg.MaxFailures, 3)
	cfg.MaxInFlight = cmp.Or(cfg.MaxInFlight, 50)
	cfg.SleepMode = cmp.Or(cfg.SleepMode, lm.Config().SleepMode)
	cfg.Refresh = cmp.Or(cfg.Refresh, min(cfg.Interval, time.Second))
	cfg.RestartPoll = cmp.Or(cfg.RestartPoll, time.Second)
	cfg.RestartConcurrency = cmp.Or(cfg.RestartConcurrency, 16)
	cfg.FlushEvery = cmp.Or(cfg.FlushEvery, 250*time.Millisecond)
	cfg.FlushSize = cmp.Or(cfg.FlushSize, 500)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	states := []bap.State{bap.StateRunning}
	switch cfg.SleepMode {
	case lifecycle.SleepMark:
		states = append(states, bap.StateSleeping)
	case lifecycle.SleepPause, lifecycle.SleepStop:
	default:
		panic("health.New: unknown sleep mode " + cfg.SleepMode)
	}
	log := cmp.Or(cfg.Logger, slog.Default()).With("component", "health")
	var obs Observer = nopObserver{}
	if cfg.Observer != nil {
		obs = cfg.Observer
	}
	return &Checker{
		store:      store,
		lm:         lm,
		cfg:        cfg,
		log:        log,
		obs:        obs,
		now:        cfg.Now,
		client:     newClient(cfg),
		w:          newWriter(store, log, cfg.FlushSize),
		kick:       make(chan struct{}, 1),
		states:     states,
		marking:    map[string]bool{},
		restarting: map[string]bool{},
		holdOff:    map[string]time.Time{},
		finished:   map[string]time.Time{},
		restartSem: make(chan struct{}, cfg.RestartConcurrency),
		markSem:    make(chan struct{}, 4),
	}
}

// newClient is the probe client: one shared transport whose idle
// connections outlive an interval (so an engine's connection is reused by
// its next probe) but not the reference engine's 120 s idle timeout, and a
// short dial timeout so an unreachable address frees its slot early.
func newClient(cfg Config) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: min(cfg.Timeout, 2*time.Second), KeepAlive: -1}).DialContext,
			MaxIdleConns:          maxIdleConns,
			MaxIdleConnsPerHost:   1,
			IdleConnTimeout:       min(2*cfg.Interval, 90*time.Second),
			ResponseHeaderTimeout: cfg.Timeout,
			DisableCompression:    true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// maxIdleConns bounds the probe connections kept open between probes: up
// to this many engines, each probe reuses the engine's connection; beyond
// it connections are opened per probe (the pool is LRU and a sweep cycles
// through every engine), which costs a connect and a close per probe but
// keeps the file descriptors the prober holds independent of fleet size.
const maxIdleConns = 1024

// Config returns the effective configuration (defaults applied).
func (c *Checker) Config() Config { return c.cfg }

// Kick wakes the restart scheduler now: used as WatchCrashes' callback so a
// crashed engine's restart is scheduled to the moment it is due.
func (c *Checker) Kick() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// RunCrashWatch marks engines whose instance stopped on their own as failed
// (engine_died) and kicks the restart scheduler, until ctx ends. It returns
// nil when ctx is done.
func (c *Checker) RunCrashWatch(ctx context.Context) error {
	c.lm.WatchCrashes(ctx, func(string) { c.Kick() })
	return nil
}

// Run probes engines and restarts failed ones until ctx ends, then waits for
// its probes, restarts and the last batch of results, and returns nil. A
// Checker runs once.
func (c *Checker) Run(ctx context.Context) error {
	if !c.started.CompareAndSwap(false, true) {
		return fmt.Errorf("health checker: Run called twice")
	}
	var wg sync.WaitGroup
	wg.Go(func() { c.w.run(ctx, c.cfg.FlushEvery) })
	wg.Go(func() { c.restartLoop(ctx) })
	if c.cfg.Tick != nil {
		c.sweepLoop(ctx)
	} else {
		c.scheduleLoop(ctx)
	}
	c.marks.Wait()
	wg.Wait()
	c.restarts.Wait()
	c.client.CloseIdleConnections()
	return nil
}

// eligible reports whether an engine in state s is probed.
func (c *Checker) eligible(s bap.State) bool {
	for _, st := range c.states {
		if st == s {
			return true
		}
	}
	return false
}

// takeStats returns the counters accumulated since the last pass and resets
// them.
func (c *Checker) takeStats() Stats {
	return Stats{
		Probed:       int(c.ctr.probed.Swap(0)),
		Failed:       int(c.ctr.failed.Swap(0)),
		Skipped:      int(c.ctr.skipped.Swap(0)),
		MarkedFailed: int(c.ctr.marked.Swap(0)),
		Restarts:     int(c.ctr.restarts.Swap(0)),
		Restarted:    int(c.ctr.restarted.Swap(0)),
		GaveUp:       int(c.ctr.gaveUp.Swap(0)),
		Errors:       int(c.ctr.errors.Swap(0)),
	}
}

// markFailed moves an engine whose probes failed MaxFailures times in a row
// to failed, in the background. The decision is the registry's count of
// consecutive failures (the pending results are written first), re-read
// with the engine's state so an engine that went to sleep, was stopped or
// was restarted meanwhile is left alone.
func (c *Checker) markFailed(ctx context.Context, engineID, reason string) {
	c.mu.Lock()
	if c.marking[engineID] {
		c.mu.Unlock()
		return
	}
	c.marking[engineID] = true
	c.mu.Unlock()
	c.marks.Add(1)
	// The marking (and the lifecycle transition it makes) logs under an id
	// of its own, as an API request's work does.
	ctx = requestid.With(ctx, requestid.New("health-"))
	go func() {
		defer c.marks.Done()
		defer func() {
			c.mu.Lock()
			delete(c.marking, engineID)
			c.mu.Unlock()
		}()
		select {
		case c.markSem <- struct{}{}:
			defer func() { <-c.markSem }()
		case <-ctx.Done():
			return
		}
		if err := c.w.flush(ctx); err != nil {
			c.ctr.errors.Add(1)
			c.log.WarnContext(ctx, "health: record results before marking failed", "engine_id", engineID, "err", err)
			return
		}
		e, err := c.store.GetEngine(ctx, engineID)
		if err != nil {
			if ctx.Err() == nil && !isNotFound(err) {
				c.ctr.errors.Add(1)
				c.log.WarnContext(ctx, "health: read engine", "engine_id", engineID, "err", err)
			}
			return
		}
		if !c.eligible(e.Status) || e.HealthFailures < c.cfg.MaxFailures {
			return
		}
		// Counted again under the row's lock: an operation elsewhere may
		// have reset the count (a restart) since the read.
		stillFailing := func(cur bap.Engine) bool { return cur.HealthFailures >= c.cfg.MaxFailures }
		marked, err := c.lm.MarkFailed(ctx, engineID, audit.HealthFailed, reason, stillFailing)
		if err != nil {
			if ctx.Err() == nil {
				c.ctr.errors.Add(1)
				c.log.WarnContext(ctx, "health: mark engine failed", "engine_id", engineID, "err", err)
			}
			return
		}
		if marked {
			c.ctr.marked.Add(1)
			c.log.WarnContext(ctx, "engine failed its health checks", "engine_id", engineID,
				"product_id", e.ProductID, "failures", e.HealthFailures, "reason", reason)
			c.Kick()
		}
	}()
}
