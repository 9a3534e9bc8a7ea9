package health_test

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/backend/subprocess"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/health"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/storetest"
	"github.com/september/bap-engine/internal/servertest"
	"github.com/september/bap-engine/internal/testengine"
	"github.com/september/bap-engine/internal/testmain"
)

func TestMain(m *testing.M) {
	if os.Getenv(listenersEnv) != "" {
		os.Exit(serveListeners())
	}
	if os.Getenv(benchReplicaEnv) != "" {
		os.Exit(runBenchReplica())
	}
	os.Exit(testmain.Run(m, testmain.Goroutines()))
}

// env is one test's world: a registry, a backend, a lifecycle manager and a
// product.
type env struct {
	store   registry.Store
	be      backend.Backend
	fake    *backendtest.Fake // nil with the subprocess backend
	lm      *lifecycle.Manager
	product bap.Product
	// watching is closed once someone subscribed to the backend's events,
	// so a test crashes an engine only when the crash can be seen.
	watching chan struct{}
}

// watchedBackend closes watching on the first Events subscription.
type watchedBackend struct {
	backend.Backend
	once     sync.Once
	watching chan struct{}
}

func (w *watchedBackend) Events(ctx context.Context) <-chan backend.Event {
	ch := w.Backend.Events(ctx)
	w.once.Do(func() { close(w.watching) })
	return ch
}

// awaitWatching waits until the crash watch is subscribed.
func (e *env) awaitWatching(t *testing.T) {
	t.Helper()
	select {
	case <-e.watching:
	case <-time.After(waitBound):
		t.Fatal("nobody watches the backend's events")
	}
}

type envOptions struct {
	store       registry.Store // default SQLite
	subprocess  bool
	backend     backend.Backend // when set, used instead of the fake or subprocess backend
	image       string          // the default engine image (docker)
	sleepMode   string
	bootTimeout time.Duration
	// restart is the restart policy (default fastRestart).
	restart lifecycle.RestartPolicy
}

// fastRestart is the tests' restart policy: short backoffs.
var fastRestart = lifecycle.RestartPolicy{MaxAttempts: 8, BackoffBase: 50 * time.Millisecond, BackoffMax: 400 * time.Millisecond}

func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	store := o.store
	if store == nil {
		store = storetest.SQLite(t)
	}
	e := &env{store: store, watching: make(chan struct{})}
	opts := []servertest.Option{
		servertest.Ports(40),
		servertest.BootTimeout(cmp.Or(o.bootTimeout, 15*time.Second)),
		servertest.WrapBackend(func(b backend.Backend) backend.Backend {
			return &watchedBackend{Backend: b, watching: e.watching}
		}),
		servertest.Lifecycle(func(c *lifecycle.Config) {
			c.DefaultImage = o.image
			c.StopGrace = 2 * time.Second
			c.ProbeTimeout = 500 * time.Millisecond
			c.SleepMode = o.sleepMode
			c.Restart = o.restart
			if c.Restart == (lifecycle.RestartPolicy{}) {
				c.Restart = fastRestart
			}
			c.Logger = quietLogger()
		}),
	}
	if o.backend != nil {
		opts = append(opts, servertest.Backend(o.backend))
	} else if o.subprocess {
		b, err := subprocess.New(subprocess.Config{
			Command:    []string{testengine.Path(t)},
			DataRoot:   t.TempDir(),
			Deployment: "health-test-" + uuid.NewString()[:8],
			Getenv:     os.Getenv,
		})
		require.NoError(t, err)
		t.Cleanup(func() { _ = b.Close() })
		opts = append(opts, servertest.Backend(b))
	}
	w := servertest.New(t, store, opts...)
	e.be, e.fake, e.lm = w.Backend, w.Fake, w.Manager
	e.product, _ = w.Product(t)
	t.Cleanup(func() {
		// Leave no engine running behind the test.
		engines, _ := store.EnginesByStatus(context.Background(), bap.States...)
		for _, en := range engines {
			_ = e.be.Destroy(context.Background(), en.ID)
		}
	})
	return e
}

// provision creates a running engine and returns it with its key.
func (e *env) provision(t testing.TB, userID string) (bap.Engine, string) {
	t.Helper()
	res, err := e.lm.Provision(context.Background(), e.product, bap.UserID(userID), "", "test")
	require.NoError(t, err)
	require.Equal(t, bap.StateRunning, res.Engine.Status)
	return res.Engine, res.APIKey
}

func (e *env) engine(t *testing.T, id string) bap.Engine {
	t.Helper()
	en, err := e.store.GetEngine(context.Background(), id)
	require.NoError(t, err)
	return en
}

// actions returns the engine's audit trail, oldest first.
func (e *env) actions(t *testing.T, engineID string) []audit.Action {
	t.Helper()
	entries, _, err := e.store.ListAudit(context.Background(), registry.AuditFilter{EngineID: engineID})
	require.NoError(t, err)
	out := make([]audit.Action, 0, len(entries))
	for i := len(entries) - 1; i >= 0; i-- {
		out = append(out, entries[i].Action)
	}
	return out
}

// requireInOrder checks that want appears in got as a subsequence.
func requireInOrder(t *testing.T, got []audit.Action, want ...audit.Action) {
	t.Helper()
	i := 0
	for _, a := range got {
		if i < len(want) && a == want[i] {
			i++
		}
	}
	require.Equal(t, len(want), i, "audit trail %v should contain %v in that order", got, want)
}

func count(got []audit.Action, a audit.Action) int {
	n := 0
	for _, g := range got {
		if g == a {
			n++
		}
	}
	return n
}

// waitBound is a safety net for waits on loop events: a test that reaches
// it fails; it is never what a test measures.
const waitBound = 60 * time.Second

// checker runs a Checker for a test and exposes its passes and restarts.
type checker struct {
	*health.Checker
	passes   chan health.Stats
	restarts chan health.RestartResult
	tick     chan time.Time
	first    bool
	stop     func()
}

// stopAfterRestart makes startChecker cancel the Checker from its first
// OnRestart, before any further attempt can start.
const stopAfterRestart = true

// startChecker runs a Checker over env with cfg; with tick set, it sweeps
// on demand (see sweep). crashWatch also runs RunCrashWatch.
func startChecker(t *testing.T, e *env, cfg health.Config, tick, crashWatch bool, stopOnRestart ...bool) *checker {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &checker{
		passes:   make(chan health.Stats, 1000),
		restarts: make(chan health.RestartResult, 1000),
		first:    true,
	}
	if tick {
		c.tick = make(chan time.Time)
		cfg.Tick = c.tick
	}
	cfg.Logger = cmpLogger(cfg.Logger)
	cfg.OnPass = func(s health.Stats) { c.passes <- s }
	cfg.OnRestart = func(r health.RestartResult) {
		if len(stopOnRestart) > 0 && stopOnRestart[0] {
			cancel()
		}
		c.restarts <- r
	}
	c.Checker = health.New(e.store, e.lm, cfg)
	done := make(chan error, 2)
	n := 1
	go func() { done <- c.Run(ctx) }()
	if crashWatch {
		n++
		go func() { done <- c.RunCrashWatch(ctx) }()
	}
	var stopped bool
	c.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		for range n {
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(waitBound):
				t.Fatal("checker did not stop")
			}
		}
	}
	t.Cleanup(c.stop)
	return c
}

// sweep returns the next Tick-mode pass: the initial one first, then one
// per tick sent.
func (c *checker) sweep(t *testing.T) health.Stats {
	t.Helper()
	if !c.first {
		select {
		case c.tick <- time.Now():
		case <-time.After(waitBound):
			t.Fatal("checker did not take the tick")
		}
	}
	c.first = false
	select {
	case s := <-c.passes:
		return s
	case <-time.After(waitBound):
		t.Fatal("no pass reported")
	}
	return health.Stats{}
}

// restart returns the next restart attempt's result.
func (c *checker) restart(t *testing.T) health.RestartResult {
	t.Helper()
	select {
	case r := <-c.restarts:
		return r
	case <-time.After(waitBound):
		t.Fatal("no restart attempt reported")
	}
	return health.RestartResult{}
}

// restartUntil reads restart results until one has outcome want, and
// returns every result read.
func (c *checker) restartUntil(t *testing.T, want lifecycle.RestartOutcome, maxResults int) []health.RestartResult {
	t.Helper()
	var got []health.RestartResult
	for range maxResults {
		r := c.restart(t)
		got = append(got, r)
		if r.Outcome == want {
			return got
		}
	}
	t.Fatalf("no %s restart among %+v", want, got)
	return nil
}

// engineClient talks to engines without keeping connections (no goroutine
// outlives the test).
var engineClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func engineCall(t *testing.T, method, url, key string, body any) (int, map[string]any) {
	t.Helper()
	var buf bytes.Buffer
	if body != nil {
		require.NoError(t, json.NewEncoder(&buf).Encode(body))
	}
	req, err := http.NewRequest(method, url, &buf)
	require.NoError(t, err)
	req.Header.Set("X-Engine-Key", key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := engineClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var out map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	return resp.StatusCode, out
}

// execute bumps the engine's brain counter and returns it.
func execute(t *testing.T, en bap.Engine, key string) int {
	t.Helper()
	code, out := engineCall(t, http.MethodPost, en.URL+"/execute", key, map[string]any{"input": "remember"})
	require.Equal(t, http.StatusOK, code)
	return int(out["counter"].(float64))
}

// brain reads the engine's brain counter.
func brain(t *testing.T, en bap.Engine, key string) int {
	t.Helper()
	code, out := engineCall(t, http.MethodGet, en.URL+"/brain", key, nil)
	require.Equal(t, http.StatusOK, code)
	return int(out["counter"].(float64))
}
