package backendtest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
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
	t.Run("Snapshots", s.testSnapshots)
	t.Run("ListIsScopedToDeployment", s.testListScoped)
	t.Run("EventsReportOutsideKill", s.testEvents)
	t.Run("LogsTailAndFollow", s.testLogs)
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

// running is the prologue of most cases: a fresh backend and one engine on
// it, created, started and answering.
func (s *suite) running(t *testing.T) (backend.Backend, *engine) {
	t.Helper()
	b := s.newBackend(t)
	e := s.newEngine(t, b)
	s.create(t, e)
	s.start(t, e)
	return b, e
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
	e.refreshURL()
	require.NoError(t, WaitHealthy(ctxFor(t, s.opts.BootTimeout), e.url))
}

// refreshURL reads the engine's address again after its instance started:
// a backend may only know it then (a Pod's IP, SPEC §10). Until the first
// start, url is what URL said before the instance existed.
func (e *engine) refreshURL() {
	if u := e.b.URL(e.spec.EngineID, e.spec.Port); u != "" {
		e.url = u
	}
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
