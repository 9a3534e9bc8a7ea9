package backendtest

import (
	"context"
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
	MethodCreate   = "Create"
	MethodStart    = "Start"
	MethodStop     = "Stop"
	MethodPause    = "Pause"
	MethodUnpause  = "Unpause"
	MethodRemove   = "Remove"
	MethodDestroy  = "Destroy"
	MethodInspect  = "Inspect"
	MethodList     = "List"
	MethodSnapshot = "Snapshot"
	MethodRestore  = "Restore"
	MethodPrune    = "PruneSnapshots"
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
// Observation: Calls, Probes, and Logs (a line per start, stop, crash and
// request, as the engine's own output; Printf adds more). A crash closes the server, marks the instance
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
	// snaps holds each engine's snapshots of its brain, oldest first.
	snaps   map[string][]fakeSnap
	refused map[string]bool
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
		snaps:     map[string][]fakeSnap{},
		refused:   map[string]bool{},
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
