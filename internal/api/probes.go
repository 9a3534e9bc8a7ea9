package api

import (
	"context"
	"net/http"

	"github.com/september/bap-engine/internal/bap"
)

// BuildInfo names the running build: GET /version answers it.
type BuildInfo struct {
	Version string `json:"version"`
	Commit  string `json:"commit"`
	Go      string `json:"go"`
}

// probeResponse is the body of a probe that passed: /livez, /readyz,
// /health.
type probeResponse struct {
	Status string `json:"status"`
}

// livez: GET /livez, no auth: the process serves HTTP. It checks nothing
// else on purpose: a liveness probe that failed while the database is down
// would restart every replica during a database outage.
func (s *server) livez(w http.ResponseWriter, _ *http.Request, _ bap.Product) error {
	writeJSON(w, http.StatusOK, probeResponse{Status: "ok"})
	return nil
}

// readyz: GET /readyz, no auth: the database is reachable and migrated and
// the engine backend is reachable (Deps.Ready); 503 DATABASE_UNAVAILABLE or
// BACKEND_UNAVAILABLE otherwise, so a load balancer sends no traffic here.
func (s *server) readyz(w http.ResponseWriter, r *http.Request, _ bap.Product) error {
	ctx, cancel := context.WithTimeout(r.Context(), healthTimeout)
	defer cancel()
	if err := s.storeReady(ctx, "readiness"); err != nil {
		return err
	}
	if s.ready != nil {
		if err := s.ready(ctx); err != nil {
			loggerFrom(r.Context(), s.log).Warn("readiness: engine backend not reachable", "err", err)
			return bap.Errorf(bap.CodeBackendUnavailable, msgBackendUnavailable)
		}
	}
	writeJSON(w, http.StatusOK, probeResponse{Status: "ok"})
	return nil
}

// version: GET /version, no auth.
func (s *server) version(w http.ResponseWriter, _ *http.Request, _ bap.Product) error {
	writeJSON(w, http.StatusOK, s.build)
	return nil
}

// Starting is the handler that answers while serve waits for its
// dependencies at start: /livez 200 (the process is alive and working on
// it), /version, and 503 with Retry-After for everything else, /readyz and
// /health included, saying what it waits for: waiting() returns a
// *bap.Error (DATABASE_UNAVAILABLE or BACKEND_UNAVAILABLE); anything else
// is shown as DATABASE_UNAVAILABLE.
func Starting(build BuildInfo, waiting func() error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/livez":
			writeJSON(w, http.StatusOK, probeResponse{Status: "ok"})
		case r.Method == http.MethodGet && r.URL.Path == "/version":
			writeJSON(w, http.StatusOK, build)
		default:
			e, ok := bap.AsError(waiting())
			if !ok {
				e = bap.Errorf(bap.CodeDatabaseUnavailable, msgDatabaseUnavailable)
			}
			w.Header().Set("Retry-After", "1")
			writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: errorDetail{Code: e.Code, Message: "Starting: " + e.Message}})
		}
	})
}
