package backendtest

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/hub"
)

// Method names, for Fake's call counters and error knobs.
const (
	MethodCreate  = "Create"
	MethodStart   = "Start"
	MethodStop    = "Stop"
	MethodPause   = "Pause"
	MethodUnpause = "Unpause"
	MethodRemove  = "Remove"
	MethodDestroy = "Destroy"
	MethodInspect = "Inspect"
	MethodList    = "List"
)

// AllEngines, given as the engine id to SetUnhealthy or CrashAfterProbes,
// sets the default for every engine without a setting of its own.
const AllEngines = ""

// CrashExitCode is the exit code of an engine crashed by CrashAfterProbes.
const CrashExitCode = 137

// Fake is an in-memory Backend for the layers above the backends. It does
// not run the reference engine: each started engine is a tiny HTTP server on
// 127.0.0.1:<port> (the spec's port, or a free one chosen at Create when the
// spec's port is 0) that behaves like one where the layers above look:
//   - GET /health: 200 {"status":"ok"}; 503 {"status":"starting"} during the
//     boot delay; 503 {"status":"unhealthy"} when set unhealthy;
//   - any other request needs X-Engine-Key matching the spec's key hash
//     (else 401); GET /brain returns {"counter": n} and POST /execute
//     increments it ({"output", "counter"}); the counter survives
//     stop/start/remove/recreate and is dropped by Destroy;
//   - while paused, every request hangs until unpause (like a frozen
//     process), so health probes time out.
//
// Faults: SetBootDelay, SetError/FailNext (any method; SetCreateError and
// SetStartError are shorthands), SetUnhealthy, CrashAfterProbes, Crash.
// Observation: Calls, Probes. A crash closes the server, marks the instance
// exited and emits an Event. Safe for concurrent use. Close it at the end.
type Fake struct {
	hub    *hub.Hub[backend.Event]
	closed chan struct{}
	once   sync.Once

	mu        sync.Mutex
	engines   map[string]*fakeEngine
	brains    map[string]int
	calls     map[string]int
	errs      map[string]error
	next      map[string]error
	bootDelay time.Duration
	unhealthy map[string]bool
	crashAt   map[string]int
	seq       int
	logs      fakeLogs
}

var _ backend.Backend = (*Fake)(nil)

// fakeEngine is one instance.
type fakeEngine struct {
	spec     backend.Spec
	id       string
	port     int
	created  time.Time
	status   backend.Status
	exitCode int
	run      *fakeRun
}

// fakeRun is one started server; a new one per Start.
type fakeRun struct {
	srv     *http.Server
	started time.Time
	probes  int
	// gate is non-nil while paused; closed to release waiting requests.
	gate chan struct{}
	// served ends when the server goroutine returns.
	served chan struct{}
}

// NewFake returns an empty Fake with no faults.
func NewFake() *Fake {
	return &Fake{
		hub:       &hub.Hub[backend.Event]{},
		closed:    make(chan struct{}),
		engines:   map[string]*fakeEngine{},
		brains:    map[string]int{},
		calls:     map[string]int{},
		errs:      map[string]error{},
		next:      map[string]error{},
		unhealthy: map[string]bool{},
		crashAt:   map[string]int{},
	}
}

// Close stops every served engine and ends every Events channel.
func (f *Fake) Close() {
	f.once.Do(func() { close(f.closed) })
	f.mu.Lock()
	var runs []*fakeRun
	for _, e := range f.engines {
		if run := e.detach(); run != nil {
			runs = append(runs, run)
			e.status = backend.StatusExited
		}
	}
	f.mu.Unlock()
	for _, r := range runs {
		r.close()
	}
}

// SetBootDelay makes /health answer 503 "starting" for d after each Start
// (read at probe time, so shortening it takes effect at once).
func (f *Fake) SetBootDelay(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bootDelay = d
}

// SetError makes every call of method return err (nil clears it).
func (f *Fake) SetError(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.errs, method)
		return
	}
	f.errs[method] = err
}

// FailNext makes only the next call of method return err.
func (f *Fake) FailNext(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.next[method] = err
}

// SetCreateError is SetError(MethodCreate, err).
func (f *Fake) SetCreateError(err error) { f.SetError(MethodCreate, err) }

// SetStartError is SetError(MethodStart, err).
func (f *Fake) SetStartError(err error) { f.SetError(MethodStart, err) }

// SetUnhealthy makes the engine's /health answer 503 (AllEngines: every
// engine without its own setting).
func (f *Fake) SetUnhealthy(engineID string, unhealthy bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unhealthy[engineID] = unhealthy
}

// CrashAfterProbes makes the engine crash (exit CrashExitCode, Event) once
// it has answered n successful probes since its last Start; 0 disables.
// AllEngines sets it for every engine without its own setting.
func (f *Fake) CrashAfterProbes(engineID string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.crashAt[engineID] = n
}

// Crash stops the running engine as a crash would: the server closes, the
// instance is exited with exitCode, and an Event is emitted.
// ErrNotFound, ErrConflict when it is not running.
func (f *Fake) Crash(engineID string, exitCode int) error {
	return f.crash(engineID, nil, exitCode)
}

// crash crashes the engine's current run, or only run when it is non-nil.
func (f *Fake) crash(engineID string, only *fakeRun, exitCode int) error {
	f.mu.Lock()
	e := f.engines[engineID]
	if e == nil {
		f.mu.Unlock()
		return fmt.Errorf("crash %s: %w", engineID, backend.ErrNotFound)
	}
	if e.run == nil || (only != nil && e.run != only) {
		f.mu.Unlock()
		return fmt.Errorf("crash %s: not running: %w", engineID, backend.ErrConflict)
	}
	run := e.detach()
	e.status, e.exitCode = backend.StatusExited, exitCode
	f.mu.Unlock()
	run.close()
	f.logs.printf(engineID, "engine %s crashed (exit code %d)", engineID, exitCode)
	f.hub.Publish(backend.Event{EngineID: engineID, ExitCode: exitCode, At: time.Now().UTC()})
	return nil
}

// Calls is how many times method was called (failed calls included).
func (f *Fake) Calls(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[method]
}

// Probes is how many successful health probes the engine answered since its
// last Start.
func (f *Fake) Probes(engineID string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e := f.engines[engineID]; e != nil && e.run != nil {
		return e.run.probes
	}
	return 0
}

// enter counts a call and returns the injected error, if any. Caller holds
// f.mu.
func (f *Fake) enter(method string) error {
	f.calls[method]++
	if err, ok := f.next[method]; ok {
		delete(f.next, method)
		return err
	}
	return f.errs[method]
}

// Name is "fake".
func (f *Fake) Name() string { return "fake" }

// URL is http://127.0.0.1:<port>; port 0 names the port the Fake chose.
func (f *Fake) URL(engineID string, port int) string {
	if port == 0 {
		f.mu.Lock()
		if e := f.engines[engineID]; e != nil {
			port = e.port
		}
		f.mu.Unlock()
	}
	return "http://127.0.0.1:" + strconv.Itoa(port)
}

// Events delivers crashes until ctx ends or the Fake is closed.
func (f *Fake) Events(ctx context.Context) <-chan backend.Event {
	return f.hub.Stream(ctx, f.closed)
}

// Create records the instance; same spec adopts, a different one replaces.
func (f *Fake) Create(_ context.Context, spec backend.Spec) (backend.Instance, error) {
	f.mu.Lock()
	if err := f.enter(MethodCreate); err != nil {
		f.mu.Unlock()
		return backend.Instance{}, err
	}
	if e := f.engines[spec.EngineID]; e != nil {
		if e.spec == spec {
			inst := e.instance()
			f.mu.Unlock()
			return inst, nil
		}
		run := e.detach()
		delete(f.engines, spec.EngineID)
		if run != nil {
			f.mu.Unlock()
			run.close()
			f.mu.Lock()
		}
	}
	port := spec.Port
	if port == 0 {
		p, err := pickPort()
		if err != nil {
			f.mu.Unlock()
			return backend.Instance{}, fmt.Errorf("create %s: %w: %w", spec.EngineID, backend.ErrUnavailable, err)
		}
		port = p
	}
	f.seq++
	e := &fakeEngine{
		spec: spec, id: fmt.Sprintf("fake-%d", f.seq), port: port,
		created: time.Now().UTC().Truncate(time.Microsecond), status: backend.StatusCreated,
	}
	f.engines[spec.EngineID] = e
	inst := e.instance()
	f.mu.Unlock()
	f.logs.init(spec.EngineID)
	return inst, nil
}

// pickPort asks the kernel for a free loopback port.
func pickPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	return port, ln.Close()
}

// Start serves the engine on its port; running is success, paused resumes.
func (f *Fake) Start(_ context.Context, engineID string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter(MethodStart); err != nil {
		return err
	}
	e := f.engines[engineID]
	if e == nil {
		return fmt.Errorf("start %s: %w", engineID, backend.ErrNotFound)
	}
	if e.run != nil {
		e.run.resume()
		e.status = backend.StatusRunning
		return nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(e.port))
	if err != nil {
		return fmt.Errorf("start %s: listen: %w", engineID, err)
	}
	run := &fakeRun{started: time.Now(), served: make(chan struct{})}
	run.srv = &http.Server{Handler: f.handler(engineID, run), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(run.served)
		_ = run.srv.Serve(ln)
	}()
	e.run, e.status, e.exitCode = run, backend.StatusRunning, 0
	f.logs.printf(engineID, "engine %s listening on 127.0.0.1:%d", engineID, e.port)
	return nil
}

// Stop closes the engine's server. Missing or stopped is success.
func (f *Fake) Stop(_ context.Context, engineID string, _ time.Duration) error {
	f.mu.Lock()
	if err := f.enter(MethodStop); err != nil {
		f.mu.Unlock()
		return err
	}
	e := f.engines[engineID]
	if e == nil || e.run == nil {
		f.mu.Unlock()
		return nil
	}
	run := e.detach()
	e.status, e.exitCode = backend.StatusExited, 0
	f.mu.Unlock()
	run.close()
	f.logs.printf(engineID, "engine %s stopped", engineID)
	return nil
}

// Pause freezes the engine: requests hang until Unpause.
func (f *Fake) Pause(_ context.Context, engineID string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter(MethodPause); err != nil {
		return err
	}
	e := f.engines[engineID]
	if e == nil {
		return fmt.Errorf("pause %s: %w", engineID, backend.ErrNotFound)
	}
	if e.run == nil {
		return fmt.Errorf("pause %s: not running: %w", engineID, backend.ErrConflict)
	}
	if e.run.gate == nil {
		e.run.gate = make(chan struct{})
	}
	e.status = backend.StatusPaused
	return nil
}

// Unpause releases a paused engine; running is success.
func (f *Fake) Unpause(_ context.Context, engineID string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter(MethodUnpause); err != nil {
		return err
	}
	e := f.engines[engineID]
	if e == nil {
		return fmt.Errorf("unpause %s: %w", engineID, backend.ErrNotFound)
	}
	if e.run == nil {
		return fmt.Errorf("unpause %s: not running: %w", engineID, backend.ErrConflict)
	}
	e.run.resume()
	e.status = backend.StatusRunning
	return nil
}

// Remove deletes the instance and keeps its brain. Missing is success.
func (f *Fake) Remove(_ context.Context, engineID string) error {
	return f.drop(MethodRemove, engineID, false)
}

// Destroy deletes the instance and its brain. Idempotent.
func (f *Fake) Destroy(_ context.Context, engineID string) error {
	return f.drop(MethodDestroy, engineID, true)
}

func (f *Fake) drop(method, engineID string, data bool) error {
	f.mu.Lock()
	if err := f.enter(method); err != nil {
		f.mu.Unlock()
		return err
	}
	var run *fakeRun
	if e := f.engines[engineID]; e != nil {
		run = e.detach()
		delete(f.engines, engineID)
	}
	if data {
		delete(f.brains, engineID)
		f.logs.drop(engineID)
	}
	f.mu.Unlock()
	if run != nil {
		run.close()
	}
	return nil
}

// Inspect describes the instance. ErrNotFound.
func (f *Fake) Inspect(_ context.Context, engineID string) (backend.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter(MethodInspect); err != nil {
		return backend.Instance{}, err
	}
	e := f.engines[engineID]
	if e == nil {
		return backend.Instance{}, fmt.Errorf("inspect %s: %w", engineID, backend.ErrNotFound)
	}
	return e.instance(), nil
}

// List returns every instance.
func (f *Fake) List(_ context.Context) ([]backend.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter(MethodList); err != nil {
		return nil, err
	}
	out := make([]backend.Instance, 0, len(f.engines))
	for _, e := range f.engines {
		out = append(out, e.instance())
	}
	return out, nil
}

func (e *fakeEngine) instance() backend.Instance {
	return backend.Instance{
		ID: e.id, Name: "engine-" + e.spec.EngineID, EngineID: e.spec.EngineID,
		ProductID: e.spec.ProductID, Replica: e.spec.Replica, Status: e.status, CreatedAt: e.created, ExitCode: e.exitCode,
	}
}

// detach takes the engine's run away (releasing paused requests) and
// returns it for closing outside the lock. Caller holds the Fake's lock.
func (e *fakeEngine) detach() *fakeRun {
	run := e.run
	e.run = nil
	if run != nil {
		run.resume()
	}
	return run
}

// resume releases paused requests. Caller holds the Fake's lock.
func (r *fakeRun) resume() {
	if r.gate != nil {
		close(r.gate)
		r.gate = nil
	}
}

// close stops the server at once (like a killed process) and waits for its
// goroutine.
func (r *fakeRun) close() {
	_ = r.srv.Close()
	<-r.served
}

// handler is the engine-shaped HTTP surface of one run.
func (f *Fake) handler(engineID string, run *fakeRun) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		gate := run.gate
		f.mu.Unlock()
		if gate != nil {
			select {
			case <-gate:
			case <-r.Context().Done():
				return
			}
		}
		if r.URL.Path == "/health" {
			f.health(w, engineID, run)
			return
		}
		f.mu.Lock()
		e := f.engines[engineID]
		var want string
		if e != nil && e.run == run {
			want = e.spec.KeyHash
		}
		f.mu.Unlock()
		sum := sha256.Sum256([]byte(r.Header.Get("X-Engine-Key")))
		if want == "" || subtle.ConstantTimeCompare([]byte(hex.EncodeToString(sum[:])), []byte(want)) != 1 {
			fakeJSON(w, http.StatusUnauthorized, map[string]any{"error": map[string]string{"code": "INVALID_ENGINE_KEY", "message": "missing or invalid X-Engine-Key"}})
			return
		}
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/brain":
			f.mu.Lock()
			n := f.brains[engineID]
			f.mu.Unlock()
			fakeJSON(w, http.StatusOK, map[string]any{"counter": n})
		case r.Method == http.MethodPost && r.URL.Path == "/execute":
			var req struct {
				Input string `json:"input"`
			}
			if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
				fakeJSON(w, http.StatusUnprocessableEntity, map[string]any{"error": map[string]string{"code": "VALIDATION_ERROR", "message": "bad body"}})
				return
			}
			f.mu.Lock()
			f.brains[engineID]++
			n := f.brains[engineID]
			f.mu.Unlock()
			fakeJSON(w, http.StatusOK, map[string]any{"output": fmt.Sprintf("Noted #%d: %s", n, req.Input), "counter": n})
		default:
			fakeJSON(w, http.StatusNotFound, map[string]any{"error": map[string]string{"code": "NOT_FOUND", "message": "no such route"}})
		}
	})
}

// health answers a probe and applies the probe-driven faults.
func (f *Fake) health(w http.ResponseWriter, engineID string, run *fakeRun) {
	f.mu.Lock()
	unhealthy, ok := f.unhealthy[engineID]
	if !ok {
		unhealthy = f.unhealthy[AllEngines]
	}
	crashAt, ok := f.crashAt[engineID]
	if !ok {
		crashAt = f.crashAt[AllEngines]
	}
	booting := time.Since(run.started) < f.bootDelay
	crash := false
	if !booting && !unhealthy {
		run.probes++
		crash = crashAt > 0 && run.probes >= crashAt
	}
	f.mu.Unlock()
	switch {
	case booting:
		fakeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "starting"})
	case unhealthy:
		fakeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "unhealthy"})
	default:
		fakeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	}
	if crash {
		// After this answer is written; Crash waits for the server, which
		// waits for this handler, so it cannot run here.
		go func() { _ = f.crash(engineID, run, CrashExitCode) }()
	}
}

func fakeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
