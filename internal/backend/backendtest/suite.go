package backendtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/backend"
)

// Options tunes Run for one backend.
type Options struct {
	// Kill kills the engine's instance from outside the backend (SIGKILL,
	// `docker kill`), to check that Events reports it. Default: SIGKILL to
	// the Pid that Inspect reports (the suite fails when it reports none).
	Kill func(t *testing.T, b backend.Backend, engineID string)
	// BootTimeout bounds each wait for an engine to answer /health;
	// default 30 s.
	BootTimeout time.Duration
	// Grace is the SIGTERM grace given to Stop; default 10 s.
	Grace time.Duration
	// EventTimeout bounds the wait for an Event after Kill; default 10 s.
	EventTimeout time.Duration
}

func (o Options) withDefaults() Options {
	if o.Kill == nil {
		o.Kill = killByPid
	}
	if o.BootTimeout <= 0 {
		o.BootTimeout = 30 * time.Second
	}
	if o.Grace <= 0 {
		o.Grace = 10 * time.Second
	}
	if o.EventTimeout <= 0 {
		o.EventTimeout = 10 * time.Second
	}
	return o
}

// killByPid SIGKILLs the process Inspect names.
func killByPid(t *testing.T, b backend.Backend, engineID string) {
	t.Helper()
	inst, err := b.Inspect(context.Background(), engineID)
	require.NoError(t, err)
	require.Positive(t, inst.Pid, "backend %s reports no pid: pass Options.Kill", b.Name())
	require.NoError(t, syscall.Kill(inst.Pid, syscall.SIGKILL))
}

// Run is the conformance suite for a Backend. newBackend must return a
// backend for a fresh deployment each call, on the same substrate (daemon or
// data root) as the previous calls, so that List's scoping is tested; it
// registers its own cleanup (the suite destroys every engine it creates).
// image is the engine image to put in specs (ignored by subprocess). opts is
// optional; only the first value is used.
func Run(t *testing.T, newBackend func(t *testing.T) backend.Backend, image string, opts ...Options) {
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	s := &suite{newBackend: newBackend, image: image, opts: o.withDefaults()}
	t.Run("Name", s.testName)
	t.Run("MissingEngine", s.testMissingEngine)
	t.Run("CreateIsIdempotent", s.testCreateIdempotent)
	t.Run("StartStopKeepsBrain", s.testStartStopKeepsBrain)
	t.Run("PauseUnpause", s.testPauseUnpause)
	t.Run("RemoveKeepsData", s.testRemoveKeepsData)
	t.Run("DestroyDeletesData", s.testDestroyDeletesData)
	t.Run("ListIsScopedToDeployment", s.testListScoped)
	t.Run("EventsReportOutsideKill", s.testEvents)
	t.Run("LogsTailAndFollow", s.testLogs)
}

// WaitHealthy polls url's GET /health until it answers 200 with
// {"status":"ok"} or ctx ends; it then returns the last failure.
func WaitHealthy(ctx context.Context, url string) error {
	delay := 25 * time.Millisecond
	var last error
	for {
		last = probe(ctx, url, 2*time.Second)
		if last == nil {
			return nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("engine at %s not healthy: %w (last probe: %w)", url, ctx.Err(), last)
		case <-t.C:
		}
		delay = min(delay*2, 250*time.Millisecond)
	}
}

// probe makes one health request.
func probe(ctx context.Context, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&body); err != nil {
		return fmt.Errorf("health: status %d, undecodable body: %w", resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK || body.Status != "ok" {
		return fmt.Errorf("health: status %d, %q", resp.StatusCode, body.Status)
	}
	return nil
}

// NewKey returns a fresh engine key (sk-sept- format) and its hash.
func NewKey() (key, hash string) {
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	key = "sk-sept-" + base64.RawURLEncoding.EncodeToString(raw)
	sum := sha256.Sum256([]byte(key))
	return key, hex.EncodeToString(sum[:])
}

// ports hands out distinct free loopback ports to the tests of a process.
var ports = struct {
	sync.Mutex
	given map[int]bool
}{given: map[int]bool{}}

// FreePort returns a loopback TCP port that was free a moment ago, below
// the kernel's ephemeral range, and that no earlier call in this process
// returned.
func FreePort(t testing.TB) int {
	t.Helper()
	lo, _ := PortRange(t, 1)
	return lo
}

// PortRange returns n consecutive loopback ports, free a moment ago, below
// the kernel's ephemeral range (so outgoing connections of concurrently
// running tests cannot take them), for an orchestrator's ORCH_PORT_MIN/MAX.
// Different test binaries get different ranges with high probability, and
// one process never hands out a port twice while the test holding it runs;
// the range is given back when that test's cleanups have run (it is taken
// before the test creates engines on it, so it is returned after they are
// gone), so repeated runs (-count) do not run out.
func PortRange(t testing.TB, n int) (lo, hi int) {
	t.Helper()
	const floor, ceiling = 10000, 32000
	for range 200 {
		lo = floor + mrand.IntN(ceiling-floor-n)
		if rangeFree(lo, n) {
			t.Cleanup(func() { releaseRange(lo, n) })
			return lo, lo + n - 1
		}
	}
	t.Fatalf("no %d free consecutive ports below %d", n, ceiling)
	return 0, 0
}

func rangeFree(lo, n int) bool {
	ports.Lock()
	defer ports.Unlock()
	for p := lo; p < lo+n; p++ {
		if ports.given[p] {
			return false
		}
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			return false
		}
		ln.Close()
	}
	for p := lo; p < lo+n; p++ {
		ports.given[p] = true
	}
	return true
}

func releaseRange(lo, n int) {
	ports.Lock()
	defer ports.Unlock()
	for p := lo; p < lo+n; p++ {
		delete(ports.given, p)
	}
}

// suite carries Run's arguments into the subtests.
type suite struct {
	newBackend func(t *testing.T) backend.Backend
	image      string
	opts       Options
}

// engine is one engine under test.
type engine struct {
	b    backend.Backend
	spec backend.Spec
	key  string
	url  string
}

// newEngine prepares a spec (fresh id, port and key) and destroys the
// engine at the end of the test.
func (s *suite) newEngine(t *testing.T, b backend.Backend) *engine {
	t.Helper()
	key, hash := NewKey()
	port := FreePort(t)
	spec := backend.Spec{
		EngineID:  uuid.NewString(),
		ProductID: uuid.NewString(),
		Image:     s.image,
		Port:      port,
		KeyHash:   hash,
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := b.Destroy(ctx, spec.EngineID); err != nil {
			t.Errorf("cleanup: destroy %s: %v", spec.EngineID, err)
		}
	})
	return &engine{b: b, spec: spec, key: key, url: b.URL(spec.EngineID, port)}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func (s *suite) create(t *testing.T, e *engine) backend.Instance {
	t.Helper()
	inst, err := e.b.Create(ctxFor(t, time.Minute), e.spec)
	require.NoError(t, err)
	return inst
}

func (s *suite) start(t *testing.T, e *engine) {
	t.Helper()
	require.NoError(t, e.b.Start(ctxFor(t, time.Minute), e.spec.EngineID))
	require.NoError(t, WaitHealthy(ctxFor(t, s.opts.BootTimeout), e.url))
}

func (s *suite) stop(t *testing.T, e *engine) {
	t.Helper()
	require.NoError(t, e.b.Stop(ctxFor(t, s.opts.Grace+time.Minute), e.spec.EngineID, s.opts.Grace))
}

func (s *suite) inspect(t *testing.T, e *engine) backend.Instance {
	t.Helper()
	inst, err := e.b.Inspect(ctxFor(t, 30*time.Second), e.spec.EngineID)
	require.NoError(t, err)
	require.Equal(t, e.spec.EngineID, inst.EngineID)
	require.Equal(t, e.spec.ProductID, inst.ProductID)
	return inst
}

// call makes a keyed request and returns the status and decoded body.
func call(t *testing.T, method, url, key string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctxFor(t, 10*time.Second), method, url, rd)
	require.NoError(t, err)
	if key != "" {
		req.Header.Set("X-Engine-Key", key)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var out map[string]any
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	if len(data) > 0 {
		require.NoError(t, json.Unmarshal(data, &out), "body: %s", data)
	}
	return resp.StatusCode, out
}

// counter reads the engine's brain counter with key, requiring 200.
func counter(t *testing.T, e *engine, key string) int {
	t.Helper()
	status, body := call(t, http.MethodGet, e.url+"/brain", key, nil)
	require.Equal(t, http.StatusOK, status)
	n, ok := body["counter"].(float64)
	require.True(t, ok, "counter in %v", body)
	return int(n)
}

// execute runs one /execute and returns the new counter.
func execute(t *testing.T, e *engine, input string) int {
	t.Helper()
	status, body := call(t, http.MethodPost, e.url+"/execute", e.key, map[string]any{"input": input})
	require.Equal(t, http.StatusOK, status, "execute: %v", body)
	n, ok := body["counter"].(float64)
	require.True(t, ok, "counter in %v", body)
	return int(n)
}

// requireNotAnswering checks that /health gets no healthy answer quickly:
// refused, timed out or not ok.
func requireNotAnswering(t *testing.T, url string) {
	t.Helper()
	require.Error(t, probe(context.Background(), url, 500*time.Millisecond), "engine at %s still answers", url)
}

func (s *suite) testName(t *testing.T) {
	t.Parallel()
	require.NotEmpty(t, s.newBackend(t).Name())
}

func (s *suite) testMissingEngine(t *testing.T) {
	t.Parallel()
	b := s.newBackend(t)
	ctx := ctxFor(t, time.Minute)
	id := uuid.NewString()
	_, err := b.Inspect(ctx, id)
	require.ErrorIs(t, err, backend.ErrNotFound)
	require.ErrorIs(t, b.Start(ctx, id), backend.ErrNotFound)
	require.ErrorIs(t, b.Pause(ctx, id), backend.ErrNotFound)
	require.ErrorIs(t, b.Unpause(ctx, id), backend.ErrNotFound)
	require.NoError(t, b.Stop(ctx, id, time.Second), "stopping a missing engine is success")
	require.NoError(t, b.Remove(ctx, id), "removing a missing engine is success")
	require.NoError(t, b.Destroy(ctx, id), "destroying a missing engine is success")
	list, err := b.List(ctx)
	require.NoError(t, err)
	for _, inst := range list {
		require.NotEqual(t, id, inst.EngineID)
	}
}

func (s *suite) testCreateIdempotent(t *testing.T) {
	t.Parallel()
	b := s.newBackend(t)
	e := s.newEngine(t, b)
	first := s.create(t, e)
	require.Equal(t, e.spec.EngineID, first.EngineID)
	require.Equal(t, e.spec.ProductID, first.ProductID)
	require.Equal(t, backend.StatusCreated, first.Status)
	require.NotEmpty(t, first.ID)
	require.False(t, first.CreatedAt.IsZero())

	again := s.create(t, e)
	require.Equal(t, first.ID, again.ID, "the same spec adopts the existing instance")
	require.Equal(t, backend.StatusCreated, s.inspect(t, e).Status)

	// Created but never started: pausing it is a conflict.
	require.ErrorIs(t, b.Pause(ctxFor(t, time.Minute), e.spec.EngineID), backend.ErrConflict)

	// A running instance is adopted as is by the same spec.
	s.start(t, e)
	running := s.create(t, e)
	require.Equal(t, first.ID, running.ID)
	require.Equal(t, backend.StatusRunning, running.Status)
	require.NoError(t, probe(context.Background(), e.url, 5*time.Second), "adopting does not restart")

	// A different spec replaces it: the new instance exists, not started.
	e.spec.Port = FreePort(t)
	e.url = b.URL(e.spec.EngineID, e.spec.Port)
	replaced := s.create(t, e)
	require.Equal(t, backend.StatusCreated, replaced.Status)
	list, err := b.List(ctxFor(t, time.Minute))
	require.NoError(t, err)
	n := 0
	for _, inst := range list {
		if inst.EngineID == e.spec.EngineID {
			n++
		}
	}
	require.Equal(t, 1, n, "one instance per engine")
	s.start(t, e)
	require.Equal(t, backend.StatusRunning, s.inspect(t, e).Status)
}

func (s *suite) testStartStopKeepsBrain(t *testing.T) {
	t.Parallel()
	b := s.newBackend(t)
	e := s.newEngine(t, b)
	s.create(t, e)
	s.start(t, e)
	require.Equal(t, backend.StatusRunning, s.inspect(t, e).Status)

	require.Equal(t, 0, counter(t, e, e.key))
	status, _ := call(t, http.MethodGet, e.url+"/brain", "sk-sept-wrong", nil)
	require.Equal(t, http.StatusUnauthorized, status)
	status, _ = call(t, http.MethodGet, e.url+"/brain", "", nil)
	require.Equal(t, http.StatusUnauthorized, status)
	require.Equal(t, 1, execute(t, e, "remember me"))

	// Starting a running engine is success and leaves it serving.
	require.NoError(t, b.Start(ctxFor(t, time.Minute), e.spec.EngineID))
	require.NoError(t, WaitHealthy(ctxFor(t, s.opts.BootTimeout), e.url))

	s.stop(t, e)
	requireNotAnswering(t, e.url)
	require.Equal(t, backend.StatusExited, s.inspect(t, e).Status)
	s.stop(t, e) // stopping a stopped engine is success

	s.start(t, e)
	require.Equal(t, backend.StatusRunning, s.inspect(t, e).Status)
	require.Equal(t, 1, counter(t, e, e.key), "the brain survives stop and start")
	require.Equal(t, 2, execute(t, e, "again"))
}

func (s *suite) testPauseUnpause(t *testing.T) {
	t.Parallel()
	b := s.newBackend(t)
	e := s.newEngine(t, b)
	ctx := ctxFor(t, time.Minute)
	s.create(t, e)
	s.start(t, e)
	require.Equal(t, 1, execute(t, e, "before sleep"))

	require.NoError(t, b.Pause(ctx, e.spec.EngineID))
	require.Equal(t, backend.StatusPaused, s.inspect(t, e).Status)
	requireNotAnswering(t, e.url)

	require.NoError(t, b.Unpause(ctx, e.spec.EngineID))
	require.NoError(t, WaitHealthy(ctxFor(t, s.opts.BootTimeout), e.url))
	require.Equal(t, backend.StatusRunning, s.inspect(t, e).Status)
	require.NoError(t, b.Unpause(ctx, e.spec.EngineID), "unpausing a running engine is success")
	require.Equal(t, 1, counter(t, e, e.key))

	// A paused engine can be stopped, and a stopped one cannot be paused.
	require.NoError(t, b.Pause(ctx, e.spec.EngineID))
	s.stop(t, e)
	require.Equal(t, backend.StatusExited, s.inspect(t, e).Status)
	requireNotAnswering(t, e.url)
	require.ErrorIs(t, b.Pause(ctx, e.spec.EngineID), backend.ErrConflict)
}

func (s *suite) testRemoveKeepsData(t *testing.T) {
	t.Parallel()
	b := s.newBackend(t)
	e := s.newEngine(t, b)
	ctx := ctxFor(t, time.Minute)
	s.create(t, e)
	s.start(t, e)
	require.Equal(t, 1, execute(t, e, "keep this"))

	require.NoError(t, b.Remove(ctx, e.spec.EngineID))
	requireNotAnswering(t, e.url)
	_, err := b.Inspect(ctx, e.spec.EngineID)
	require.ErrorIs(t, err, backend.ErrNotFound)
	require.ErrorIs(t, b.Start(ctx, e.spec.EngineID), backend.ErrNotFound, "a removed instance must be recreated")
	require.NoError(t, b.Remove(ctx, e.spec.EngineID), "removing twice is success")

	// Recreate with a new key on the same data (what rotate-key does).
	oldKey := e.key
	e.key, e.spec.KeyHash = NewKey()
	s.create(t, e)
	s.start(t, e)
	status, _ := call(t, http.MethodGet, e.url+"/brain", oldKey, nil)
	require.Equal(t, http.StatusUnauthorized, status, "the old key no longer works")
	require.Equal(t, 1, counter(t, e, e.key), "the brain survives remove and recreate")
}

func (s *suite) testDestroyDeletesData(t *testing.T) {
	t.Parallel()
	b := s.newBackend(t)
	e := s.newEngine(t, b)
	ctx := ctxFor(t, time.Minute)
	s.create(t, e)
	s.start(t, e)
	require.Equal(t, 1, execute(t, e, "forget this"))

	require.NoError(t, b.Destroy(ctx, e.spec.EngineID))
	requireNotAnswering(t, e.url)
	_, err := b.Inspect(ctx, e.spec.EngineID)
	require.ErrorIs(t, err, backend.ErrNotFound)
	require.NoError(t, b.Destroy(ctx, e.spec.EngineID), "destroy is idempotent")
	list, err := b.List(ctx)
	require.NoError(t, err)
	for _, inst := range list {
		require.NotEqual(t, e.spec.EngineID, inst.EngineID)
	}

	// Same id again: a fresh brain.
	s.create(t, e)
	s.start(t, e)
	require.Equal(t, 0, counter(t, e, e.key), "destroy deleted the data")
}

func (s *suite) testListScoped(t *testing.T) {
	t.Parallel()
	mine, theirs := s.newBackend(t), s.newBackend(t)
	a := s.newEngine(t, mine)
	b1 := s.newEngine(t, theirs)
	b2 := s.newEngine(t, theirs)
	s.create(t, a)
	s.create(t, b1)
	s.create(t, b2)
	s.start(t, b1)

	ids := func(bk backend.Backend) map[string]backend.Instance {
		list, err := bk.List(ctxFor(t, time.Minute))
		require.NoError(t, err)
		out := map[string]backend.Instance{}
		for _, inst := range list {
			out[inst.EngineID] = inst
		}
		return out
	}
	got := ids(mine)
	require.Contains(t, got, a.spec.EngineID)
	require.NotContains(t, got, b1.spec.EngineID)
	require.NotContains(t, got, b2.spec.EngineID)
	require.Equal(t, a.spec.ProductID, got[a.spec.EngineID].ProductID)
	require.Equal(t, backend.StatusCreated, got[a.spec.EngineID].Status)

	got = ids(theirs)
	require.NotContains(t, got, a.spec.EngineID)
	require.Contains(t, got, b1.spec.EngineID)
	require.Contains(t, got, b2.spec.EngineID)
	require.Equal(t, backend.StatusRunning, got[b1.spec.EngineID].Status)
	require.Equal(t, backend.StatusCreated, got[b2.spec.EngineID].Status)
}

func (s *suite) testEvents(t *testing.T) {
	t.Parallel()
	b := s.newBackend(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := b.Events(ctx)

	stopped, killed := s.newEngine(t, b), s.newEngine(t, b)
	for _, e := range []*engine{stopped, killed} {
		s.create(t, e)
		s.start(t, e)
	}
	// An exit the orchestrator asked for is no event ...
	s.stop(t, stopped)
	// ... an outside kill is.
	s.opts.Kill(t, b, killed.spec.EngineID)

	timeout := time.After(s.opts.EventTimeout)
	for got := false; !got; {
		select {
		case ev, ok := <-events:
			require.True(t, ok, "events closed early")
			require.NotEqual(t, stopped.spec.EngineID, ev.EngineID, "Stop must not be reported as a crash")
			if ev.EngineID == killed.spec.EngineID {
				require.False(t, ev.At.IsZero())
				got = true
			}
		case <-timeout:
			t.Fatalf("no event for the killed engine %s", killed.spec.EngineID)
		}
	}
	require.Eventually(t, func() bool {
		inst, err := b.Inspect(context.Background(), killed.spec.EngineID)
		return err == nil && inst.Status == backend.StatusExited
	}, s.opts.EventTimeout, 20*time.Millisecond)
	requireNotAnswering(t, killed.url)

	// The killed engine starts again on its data.
	s.start(t, killed)

	cancel()
	select {
	case _, ok := <-drain(events):
		require.False(t, ok)
	case <-time.After(s.opts.EventTimeout):
		t.Fatal("Events channel not closed after its context ended")
	}
}

// drain forwards nothing and closes when events closes: it reports the
// close of a channel that may still hold undelivered events.
func drain(events <-chan backend.Event) <-chan backend.Event {
	out := make(chan backend.Event)
	go func() {
		for range events {
		}
		close(out)
	}()
	return out
}

// readLogs returns the whole of a Logs answer.
func readLogs(t *testing.T, b backend.Backend, engineID string, opts backend.LogOptions) string {
	t.Helper()
	rc, err := b.Logs(ctxFor(t, 30*time.Second), engineID, opts)
	require.NoError(t, err)
	defer rc.Close()
	data, err := io.ReadAll(rc)
	require.NoError(t, err)
	return string(data)
}

func (s *suite) testLogs(t *testing.T) {
	b := s.newBackend(t)
	_, err := b.Logs(ctxFor(t, 30*time.Second), uuid.NewString(), backend.LogOptions{})
	require.ErrorIs(t, err, backend.ErrNotFound)

	e := s.newEngine(t, b)
	s.create(t, e)
	s.start(t, e)
	execute(t, e, "remember me")
	var all string
	require.Eventually(t, func() bool {
		all = readLogs(t, b, e.spec.EngineID, backend.LogOptions{})
		return strings.Contains(all, `"/execute"`)
	}, 10*time.Second, 50*time.Millisecond, "the engine's own request log reaches Logs")
	require.NotContains(t, all, e.key, "the engine's key is never in its log")
	lines := strings.Split(strings.TrimSuffix(all, "\n"), "\n")
	require.Greater(t, len(lines), 1)
	require.Equal(t, lines[len(lines)-1]+"\n", readLogs(t, b, e.spec.EngineID, backend.LogOptions{Tail: 1}))
	require.Equal(t, strings.Join(lines[len(lines)-2:], "\n")+"\n", readLogs(t, b, e.spec.EngineID, backend.LogOptions{Tail: 2}))

	// Follow: the last line, then what the engine writes next, until ctx ends.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rc, err := b.Logs(ctx, e.spec.EngineID, backend.LogOptions{Tail: 1, Follow: true})
	require.NoError(t, err)
	defer rc.Close()
	got := make(chan string, 100)
	go func() {
		defer close(got)
		sc := bufio.NewScanner(rc)
		for sc.Scan() {
			got <- sc.Text()
		}
	}()
	require.Equal(t, lines[len(lines)-1], waitLine(t, got))
	call(t, http.MethodGet, e.url+"/brain", e.key, nil)
	for line := waitLine(t, got); !strings.Contains(line, `"/brain"`); line = waitLine(t, got) {
	}
	cancel()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-got:
			if !ok {
				// A stopped engine's log stays readable.
				s.stop(t, e)
				require.Contains(t, readLogs(t, b, e.spec.EngineID, backend.LogOptions{}), `"/brain"`)
				return
			}
		case <-deadline:
			t.Fatal("a followed log did not end with its ctx")
		}
	}
}

// waitLine is the next line of a followed log, within 10 s.
func waitLine(t *testing.T, lines <-chan string) string {
	t.Helper()
	select {
	case l, ok := <-lines:
		require.True(t, ok, "the followed log ended early")
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("no new log line within 10 s")
		return ""
	}
}
