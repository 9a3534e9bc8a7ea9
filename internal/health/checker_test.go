package health_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/september/bap-engine/internal/registry/storetest"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/health"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/pgtest"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/postgres"
	"github.com/september/bap-engine/internal/registry/registrytest"
)

func quietLogger() *slog.Logger {
	if os.Getenv("BAP_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func cmpLogger(l *slog.Logger) *slog.Logger {
	if l != nil {
		return l
	}
	return quietLogger()
}

// fastConfig is a Checker configuration for tests: short timeouts and
// backoffs, restarts looked for often.
func fastConfig() health.Config {
	return health.Config{
		Interval:    100 * time.Millisecond,
		Timeout:     time.Second,
		MaxFailures: 3,
		RestartPoll: 50 * time.Millisecond,
		FlushEvery:  20 * time.Millisecond,
	}
}

// countingObserver records what the Checker reports for metrics.
type countingObserver struct {
	mu            sync.Mutex
	probeFailures map[string]int
	restarts      map[string]int
	restartErrors map[string]int
}

func newCountingObserver() *countingObserver {
	return &countingObserver{probeFailures: map[string]int{}, restarts: map[string]int{}, restartErrors: map[string]int{}}
}

func (o *countingObserver) ProbeFailure(productID string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.probeFailures[productID]++
}

func (o *countingObserver) Restart(productID string, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.restarts[productID]++
	if err != nil {
		o.restartErrors[productID]++
	}
}

func (o *countingObserver) get() (probeFailures, restarts, restartErrors map[string]int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.probeFailures, o.restarts, o.restartErrors
}

// TestUnhealthyEngineFailsAndIsRestarted: an engine answering 503 goes
// failed after MaxFailures consecutive failed probes (counted in the
// registry), and auto-restart brings it back with its data; a healthy
// neighbour is untouched.
func TestUnhealthyEngineFailsAndIsRestarted(t *testing.T) {
	t.Parallel()
	storetest.Each(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		e := newEnv(t, envOptions{store: open(t), bootTimeout: 2 * time.Second})
		sick, sickKey := e.provision(t, "sick")
		well, _ := e.provision(t, "well")
		require.Equal(t, 1, execute(t, sick, sickKey))

		obs := newCountingObserver()
		cfg := fastConfig()
		cfg.Observer = obs
		c := startChecker(t, e, cfg, true, false)

		st := c.sweep(t)
		require.Equal(t, 2, st.Engines)
		require.Equal(t, 2, st.Probed)
		require.Zero(t, st.Failed)
		require.NotNil(t, e.engine(t, sick.ID).LastHealthAt)

		e.fake.SetUnhealthy(sick.ID, true)
		for i := 1; i < 3; i++ {
			st = c.sweep(t)
			require.Equal(t, 1, st.Failed)
			require.Zero(t, st.MarkedFailed)
			got := e.engine(t, sick.ID)
			require.Equal(t, bap.StateRunning, got.Status)
			require.Equal(t, i, got.HealthFailures, "failures are recorded in the registry")
		}
		st = c.sweep(t)
		require.Equal(t, 1, st.Failed)
		require.Equal(t, 1, st.MarkedFailed)
		got := e.engine(t, sick.ID)
		require.Equal(t, bap.StateFailed, got.Status)
		require.NotNil(t, got.NextRestartAt)
		require.Contains(t, got.FailureReason, "health check failed 3 times")
		require.Equal(t, bap.StateRunning, e.engine(t, well.ID).Status)
		require.Zero(t, e.engine(t, well.ID).HealthFailures)

		// The engine recovers; the restart scheduler brings it back.
		e.fake.SetUnhealthy(sick.ID, false)
		results := c.restartUntil(t, lifecycle.RestartSucceeded, 8)
		for _, r := range results {
			require.Equal(t, sick.ID, r.EngineID)
			require.Equal(t, e.product.ID, r.ProductID)
		}
		got = e.engine(t, sick.ID)
		require.Equal(t, bap.StateRunning, got.Status)
		require.Zero(t, got.HealthFailures)
		require.Zero(t, got.RestartAttempts)
		require.Nil(t, got.NextRestartAt)
		require.Equal(t, 1, brain(t, got, sickKey), "the brain survives the restart")
		requireInOrder(t, e.actions(t, sick.ID),
			audit.Provision, audit.HealthFailed, audit.AutoRestartStart, audit.AutoRestartSuccess)
		require.Equal(t, 1, count(e.actions(t, sick.ID), audit.HealthFailed))

		st = c.sweep(t)
		require.Equal(t, 2, st.Engines, "the restarted engine is probed again")
		require.Zero(t, st.Failed)

		failures, restarts, restartErrors := obs.get()
		require.Equal(t, 3, failures[e.product.ID])
		require.Equal(t, len(results), restarts[e.product.ID])
		require.Equal(t, len(results)-1, restartErrors[e.product.ID])
	})
}

// TestCrashedEngineIsRestarted: a crash event marks the engine failed
// (engine_died) and Kick schedules its restart for the moment backoff(0)
// has passed — the periodic look for due restarts is an hour away here, so
// only the kick and the timer to the due time can restart it.
func TestCrashedEngineIsRestarted(t *testing.T) {
	t.Parallel()
	storetest.Each(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		e := newEnv(t, envOptions{store: open(t),
			restart: lifecycle.RestartPolicy{BackoffBase: 200 * time.Millisecond, BackoffMax: 400 * time.Millisecond}})
		en, key := e.provision(t, "crashy")
		require.Equal(t, 1, execute(t, en, key))
		cfg := fastConfig()
		cfg.RestartPoll = time.Hour
		c := startChecker(t, e, cfg, true, true)
		c.sweep(t)
		e.awaitWatching(t)

		require.NoError(t, e.fake.Crash(en.ID, 137))
		r := c.restart(t)
		require.Equal(t, lifecycle.RestartSucceeded, r.Outcome)
		require.NoError(t, r.Err)
		require.Equal(t, en.ID, r.EngineID)
		got := e.engine(t, en.ID)
		require.Equal(t, bap.StateRunning, got.Status)
		require.Equal(t, 1, brain(t, got, key))
		actions := e.actions(t, en.ID)
		requireInOrder(t, actions,
			audit.Provision, audit.EngineDied, audit.AutoRestartStart, audit.AutoRestartSuccess)
		require.Equal(t, 1, count(actions, audit.AutoRestartStart), "one attempt was enough")
	})
}

// TestRestartGivesUp: an engine that never recovers ends failed after
// RestartMaxAttempts with auto_restart_gave_up, and the attempt count
// carries over from one Checker (one orchestrator process) to the next.
func TestRestartGivesUp(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{bootTimeout: 300 * time.Millisecond,
		restart: lifecycle.RestartPolicy{MaxAttempts: 3, BackoffBase: 20 * time.Millisecond, BackoffMax: 40 * time.Millisecond}})
	en, _ := e.provision(t, "doomed")
	e.fake.SetUnhealthy(en.ID, true)
	cfg := fastConfig()

	// The first process stops right after its first attempt, as if the
	// orchestrator were restarted.
	first := startChecker(t, e, cfg, true, false, stopAfterRestart)
	for range 3 {
		first.sweep(t)
	}
	require.Equal(t, bap.StateFailed, e.engine(t, en.ID).Status)
	r := first.restart(t)
	require.Equal(t, lifecycle.RestartFailed, r.Outcome)
	first.stop()
	got := e.engine(t, en.ID)
	require.Equal(t, 1, got.RestartAttempts, "the attempt is persisted")
	require.NotNil(t, got.NextRestartAt)

	second := startChecker(t, e, cfg, true, false)
	results := second.restartUntil(t, lifecycle.RestartGaveUp, 3)
	require.Len(t, results, 2, "the second process continues at attempt 2")
	got = e.engine(t, en.ID)
	require.Equal(t, bap.StateFailed, got.Status)
	require.Equal(t, 3, got.RestartAttempts)
	require.Nil(t, got.NextRestartAt)
	actions := e.actions(t, en.ID)
	require.Equal(t, 3, count(actions, audit.AutoRestartStart))
	require.Equal(t, 3, count(actions, audit.AutoRestartFailed))
	require.Equal(t, audit.AutoRestartGaveUp, actions[len(actions)-1])

	// Nothing more happens to it: it is not probed and not restarted.
	st := second.sweep(t)
	require.Zero(t, st.Engines)
	second.stop()
	require.Equal(t, actions, e.actions(t, en.ID))
}

// TestFailureCountersSurviveCheckerRestart: consecutive failures counted by
// one Checker are continued by the next, and the restart time it scheduled
// is honoured by the next.
func TestFailureCountersSurviveCheckerRestart(t *testing.T) {
	t.Parallel()
	storetest.Each(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		// The restart delay is long enough to see that no restart runs
		// before the due time the second process wrote.
		e := newEnv(t, envOptions{store: open(t),
			restart: lifecycle.RestartPolicy{BackoffBase: 300 * time.Millisecond, BackoffMax: 400 * time.Millisecond}})
		en, _ := e.provision(t, "flaky")
		e.fake.SetUnhealthy(en.ID, true)
		cfg := fastConfig()

		first := startChecker(t, e, cfg, true, false)
		for range 2 {
			st := first.sweep(t)
			require.Equal(t, 1, st.Failed)
			require.Zero(t, st.MarkedFailed)
		}
		first.stop()
		require.Equal(t, 2, e.engine(t, en.ID).HealthFailures)

		// A new process needs one more failure, not three.
		second := startChecker(t, e, cfg, true, false)
		st := second.sweep(t)
		require.Equal(t, 1, st.Failed)
		require.Equal(t, 1, st.MarkedFailed)
		second.stop()
		got := e.engine(t, en.ID)
		require.Equal(t, bap.StateFailed, got.Status)
		require.NotNil(t, got.NextRestartAt)
		due := *got.NextRestartAt
		if count(e.actions(t, en.ID), audit.AutoRestartStart) > 0 {
			t.Fatalf("restart ran before its due time %s", due)
		}

		e.fake.SetUnhealthy(en.ID, false)
		third := startChecker(t, e, fastConfig(), true, false)
		r := third.restart(t)
		require.Equal(t, lifecycle.RestartSucceeded, r.Outcome)
		entries, _, err := e.store.ListAudit(context.Background(), registry.AuditFilter{EngineID: en.ID,
			Actions: []audit.Action{audit.AutoRestartStart}})
		require.NoError(t, err)
		require.Len(t, entries, 1)
		require.False(t, entries[0].Timestamp.Before(due), "the persisted restart time is honoured")
	})
}

// hangingListener accepts connections and never answers; it counts the
// connections the client gave up on.
type hangingListener struct {
	ln     net.Listener
	closed atomic.Int64
	wg     sync.WaitGroup
}

func newHangingListener(t *testing.T) *hangingListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	h := &hangingListener{ln: ln}
	h.wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			h.wg.Go(func() {
				_, _ = io.Copy(io.Discard, conn) // until the client hangs up
				h.closed.Add(1)
				conn.Close()
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		h.wg.Wait()
	})
	return h
}

func (h *hangingListener) url() string { return "http://" + h.ln.Addr().String() }

// TestHangingEnginesDoNotDelayOthers runs the real schedule: three engines
// that never answer hold three of four probe slots for the whole 10 s
// timeout, and the healthy engines are still probed every interval on the
// remaining slot — many times over before any hanging probe times out.
func TestHangingEnginesDoNotDelayOthers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	var hanging []*hangingListener
	for i := range 3 {
		h := newHangingListener(t)
		hanging = append(hanging, h)
		registrytest.NewEngine(t, e.store, e.product.ID, "hang-"+string(rune('a'+i)), func(en *bap.Engine) { en.URL = h.url() })
	}
	const healthy = 5
	var hits [healthy]atomic.Int64
	for i := range healthy {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits[i].Add(1)
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"status":"ok"}`)
		}))
		t.Cleanup(srv.Close)
		registrytest.NewEngine(t, e.store, e.product.ID, "ok-"+string(rune('a'+i)), func(en *bap.Engine) { en.URL = srv.URL })
	}

	cfg := fastConfig()
	cfg.Interval = 100 * time.Millisecond
	cfg.Timeout = 10 * time.Second
	cfg.MaxInFlight = 4
	cfg.MaxFailures = 100
	c := startChecker(t, e, cfg, false, false)

	const want = 5
	for {
		select {
		case <-c.passes:
		case <-time.After(waitBound):
			t.Fatal("no pass reported")
		}
		timedOut := int64(0)
		for _, h := range hanging {
			timedOut += h.closed.Load()
		}
		done := true
		for i := range healthy {
			if hits[i].Load() < want {
				done = false
			}
		}
		if done {
			require.Zero(t, timedOut, "healthy engines reached %d probes each while hanging probes still held their slots", want)
			break
		}
		require.Zero(t, timedOut, "a hanging probe timed out before the healthy engines were probed %d times each", want)
	}
	c.stop()
	// Shutdown cancels the hanging probes at once.
	for _, h := range hanging {
		require.Eventually(t, func() bool { return h.closed.Load() >= 1 }, waitBound, 10*time.Millisecond)
	}
}

// TestScheduleProbesEachEngineOncePerInterval: on the real schedule, over
// several intervals each engine is probed about once per interval — not in
// bursts, not skipped.
func TestScheduleProbesEachEngineOncePerInterval(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	const engines = 20
	var hits [engines]atomic.Int64
	for i := range engines {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits[i].Add(1)
			_, _ = io.WriteString(w, `{"status":"ok"}`)
		}))
		t.Cleanup(srv.Close)
		registrytest.NewEngine(t, e.store, e.product.ID, "u-"+uuid.NewString()[:8], func(en *bap.Engine) { en.URL = srv.URL })
	}
	cfg := fastConfig()
	cfg.Interval = 200 * time.Millisecond
	c := startChecker(t, e, cfg, false, false)
	const passes = 6
	var probed int
	for range passes {
		select {
		case st := <-c.passes:
			probed += st.Probed
			require.Zero(t, st.Failed)
		case <-time.After(waitBound):
			t.Fatal("no pass reported")
		}
	}
	c.stop()
	for i := range engines {
		n := hits[i].Load()
		// Each engine is due once per interval at its own phase; the first
		// interval may or may not include its first probe, and a starved
		// loop resumes in phase instead of catching up in a burst.
		require.GreaterOrEqual(t, n, int64(passes/2), "engine %d probed %d times in %d intervals", i, n, passes)
		require.LessOrEqual(t, n, int64(passes+1), "engine %d probed %d times in %d intervals", i, n, passes)
	}
	require.Positive(t, probed)
}

// TestRegistryOutage stops PostgreSQL under a running Checker: passes go on
// (probing the last known engines), errors are counted, nothing is marked
// failed, and the results are recorded once the database is back.
func TestRegistryOutage(t *testing.T) {
	t.Parallel()
	srv := pgtest.NewServer(t)
	store, err := postgres.Open(context.Background(), srv.URL(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	e := newEnv(t, envOptions{store: store})
	en, _ := e.provision(t, "steady")
	c := startChecker(t, e, fastConfig(), true, false)
	st := c.sweep(t)
	require.Equal(t, 1, st.Probed)
	require.Zero(t, st.Errors)
	before := e.engine(t, en.ID).LastHealthAt
	require.NotNil(t, before)

	require.NoError(t, srv.Stop())
	for range 2 {
		st = c.sweep(t)
		require.Positive(t, st.Errors)
		require.Equal(t, 1, st.Probed, "the last known engines are still probed")
		require.Zero(t, st.MarkedFailed)
	}
	require.NoError(t, srv.Start())
	var got bap.Engine
	for deadline := time.Now().Add(waitBound); time.Now().Before(deadline); {
		st = c.sweep(t)
		if st.Errors == 0 {
			got = e.engine(t, en.ID)
			break
		}
	}
	require.Zero(t, st.Errors, "the checker recovers when the database is back")
	require.Equal(t, bap.StateRunning, got.Status)
	require.True(t, got.LastHealthAt.After(*before), "results are recorded again")
	require.Zero(t, got.HealthFailures)
}

// TestSubprocessEngineHungAndKilled uses the real subprocess backend and
// the reference engine: a frozen process (SIGSTOP) fails its probes and is
// restarted with its brain; a process killed with SIGKILL is noticed by the
// backend and restarted with its brain.
func TestSubprocessEngineHungAndKilled(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{subprocess: true,
		restart: lifecycle.RestartPolicy{BackoffBase: 100 * time.Millisecond, BackoffMax: 400 * time.Millisecond}})
	en, key := e.provision(t, "real")
	require.Equal(t, 1, execute(t, en, key))
	require.Equal(t, 2, execute(t, en, key))
	cfg := fastConfig()
	cfg.Timeout = 300 * time.Millisecond
	c := startChecker(t, e, cfg, true, true)
	require.Equal(t, 1, c.sweep(t).Probed)

	t.Run("frozen", func(t *testing.T) {
		inst, err := e.be.Inspect(context.Background(), en.ID)
		require.NoError(t, err)
		require.Positive(t, inst.Pid)
		require.NoError(t, syscall.Kill(inst.Pid, syscall.SIGSTOP))
		// A stop takes effect when every thread of the process has handled
		// it; until then a thread may still answer.
		require.Eventually(t, func() bool { return procState(inst.Pid) == 'T' }, waitBound, 5*time.Millisecond)
		for range 2 {
			require.Equal(t, 1, c.sweep(t).Failed)
		}
		st := c.sweep(t)
		require.Equal(t, 1, st.MarkedFailed)
		r := c.restartUntil(t, lifecycle.RestartSucceeded, 3)
		require.Equal(t, en.ID, r[len(r)-1].EngineID)
		got := e.engine(t, en.ID)
		require.Equal(t, bap.StateRunning, got.Status)
		require.Equal(t, 2, brain(t, got, key))
		requireInOrder(t, e.actions(t, en.ID), audit.HealthFailed, audit.AutoRestartStart, audit.AutoRestartSuccess)
	})

	t.Run("killed", func(t *testing.T) {
		inst, err := e.be.Inspect(context.Background(), en.ID)
		require.NoError(t, err)
		require.Positive(t, inst.Pid)
		require.Equal(t, 3, execute(t, en, key))
		e.awaitWatching(t)
		require.NoError(t, syscall.Kill(inst.Pid, syscall.SIGKILL))
		r := c.restart(t)
		require.Equal(t, lifecycle.RestartSucceeded, r.Outcome)
		got := e.engine(t, en.ID)
		require.Equal(t, bap.StateRunning, got.Status)
		require.Equal(t, 3, brain(t, got, key))
		after, err := e.be.Inspect(context.Background(), en.ID)
		require.NoError(t, err)
		require.NotEqual(t, inst.Pid, after.Pid)
		actions := e.actions(t, en.ID)
		requireInOrder(t, actions[len(actions)-3:], audit.EngineDied, audit.AutoRestartStart, audit.AutoRestartSuccess)
	})
	c.stop()
}

// procState is the state letter of a process in /proc (R, S, T, ...).
func procState(pid int) byte {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 >= len(data) {
		return 0
	}
	return data[i+2]
}

// TestPausedSleepersAreNotProbed: in pause and stop modes a sleeping engine
// is not probed (it cannot answer) and so never fails for being asleep; in
// mark mode it keeps running and is probed.
func TestPausedSleepersAreNotProbed(t *testing.T) {
	t.Parallel()
	eachSleepMode(t, func(t *testing.T, mode string, e *env) {
		en, _ := e.provision(t, "sleepy")
		slept, err := e.lm.Sleep(context.Background(), en.ID, time.Time{})
		require.NoError(t, err)
		require.True(t, slept)
		cfg := fastConfig()
		cfg.MaxFailures = 1
		c := startChecker(t, e, cfg, true, false)
		for range 3 {
			st := c.sweep(t)
			require.Zero(t, st.Failed)
			require.Zero(t, st.MarkedFailed)
			if mode == lifecycle.SleepMark {
				require.Equal(t, 1, st.Probed)
			} else {
				require.Zero(t, st.Engines)
				require.Zero(t, st.Probed)
			}
		}
		require.Equal(t, bap.StateSleeping, e.engine(t, en.ID).Status)
	})
}

// TestRunTwice: a Checker runs once.
func TestRunTwice(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	c := startChecker(t, e, fastConfig(), true, false)
	c.sweep(t)
	require.Error(t, c.Run(context.Background()))
}

// TestNewRejectsNegativeSettings: a negative setting is a programmer error.
func TestNewRejectsNegativeSettings(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	require.Panics(t, func() { health.New(e.store, e.lm, health.Config{Interval: -time.Second}) })
	require.Panics(t, func() { health.New(e.store, e.lm, health.Config{MaxInFlight: -1}) })
	require.Panics(t, func() { health.New(e.store, e.lm, health.Config{SleepMode: "nap"}) })
	got := health.New(e.store, e.lm, health.Config{}).Config()
	require.Equal(t, 30*time.Second, got.Interval)
	require.Equal(t, 10*time.Second, got.Timeout)
	require.Equal(t, 3, got.MaxFailures)
	require.Equal(t, 50, got.MaxInFlight)
	require.Equal(t, lifecycle.SleepMark, got.SleepMode)
}
