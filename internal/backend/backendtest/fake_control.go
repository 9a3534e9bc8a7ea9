package backendtest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/september/bap-engine/internal/backend"
)

// engine enters method (named verb in errors) and returns the engine of
// engineID: ErrNotFound without one, ErrConflict when running and it does
// not run. f.mu is held.
func (f *Fake) engine(method, verb, engineID string, running bool) (*fakeEngine, error) {
	if err := f.enter(method); err != nil {
		return nil, err
	}
	e := f.engines[engineID]
	if e == nil {
		return nil, fmt.Errorf("%s %s: %w", verb, engineID, backend.ErrNotFound)
	}
	if running && e.run == nil {
		return nil, fmt.Errorf("%s %s: not running: %w", verb, engineID, backend.ErrConflict)
	}
	return e, nil
}

// Start serves the engine on its port; running is success, paused resumes.
func (f *Fake) Start(_ context.Context, engineID string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, err := f.engine(MethodStart, "start", engineID, false)
	if err != nil {
		return err
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
	e, err := f.engine(MethodPause, "pause", engineID, true)
	if err != nil {
		return err
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
	e, err := f.engine(MethodUnpause, "unpause", engineID, true)
	if err != nil {
		return err
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
		delete(f.snaps, engineID)
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
	e, err := f.engine(MethodInspect, "inspect", engineID, false)
	if err != nil {
		return backend.Instance{}, err
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
