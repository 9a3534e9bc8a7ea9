package backendtest

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/september/bap-engine/internal/backend"
)

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
		// Like the reference engine, log every request but health probes.
		f.logs.printf(engineID, "request %s %q", r.Method, r.URL.Path)
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
	var refused bool
	if e := f.engines[engineID]; e != nil {
		refused = f.refused[e.spec.Image]
	}
	unhealthy = unhealthy || refused
	crash := false
	if !booting && !unhealthy {
		run.probes++
		crash = crashAt > 0 && run.probes >= crashAt
	}
	f.mu.Unlock()
	switch {
	case booting:
		fakeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "starting"})
	case refused:
		fakeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "refused", "reason": "engine version refused"})
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
