package api

import (
	"context"
	_ "embed"
	"fmt"
	"net/http"
	"time"

	"github.com/september/bap-engine/internal/bap"
)

// healthTimeout bounds the database check of GET /health, so a hung
// database answers 503 before a load balancer's probe gives up.
const healthTimeout = 3 * time.Second

// health: GET /health, no auth. 503 when the database is unreachable or not
// migrated.
func (s *server) health(w http.ResponseWriter, r *http.Request, _ bap.Product) error {
	ctx, cancel := context.WithTimeout(r.Context(), healthTimeout)
	defer cancel()
	if err := s.storeReady(ctx, "health check"); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, probeResponse{Status: "ok"})
	return nil
}

// storeReady is the database half of /health and /readyz: nil when the
// store answers a ping within ctx, else DATABASE_UNAVAILABLE, with the
// cause logged under the probe's name.
func (s *server) storeReady(ctx context.Context, probe string) error {
	if err := s.store.Ping(ctx); err != nil {
		loggerFrom(ctx, s.log).Warn(probe+": database not ready", "err", err)
		return bap.Errorf(bap.CodeDatabaseUnavailable, msgDatabaseUnavailable)
	}
	return nil
}

// openAPIDoc is the OpenAPI 3.1 description of every route, served as is.
//
//go:embed openapi.json
var openAPIDoc []byte

// openAPI: GET /openapi.json, no auth, no network.
func (s *server) openAPI(w http.ResponseWriter, _ *http.Request, _ bap.Product) error {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", fmt.Sprint(len(openAPIDoc)))
	h.Set("Cache-Control", "public, max-age=300")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(openAPIDoc)
	return nil
}

// prometheus: GET /metrics/prometheus (admin key), fleet-wide.
func (s *server) prometheus(w http.ResponseWriter, r *http.Request, _ bap.Product) error {
	if s.promHTTP == nil {
		return bap.Errorf(bap.CodeNotFound, "Prometheus metrics are not enabled.")
	}
	s.promHTTP.ServeHTTP(w, r)
	return nil
}

type replicaInfo struct {
	ReplicaID   string `json:"replica_id"`
	Host        string `json:"host"`
	Pid         int    `json:"pid"`
	Version     string `json:"version"`
	StartedAt   string `json:"started_at"`
	HeartbeatAt string `json:"heartbeat_at"`
	Alive       bool   `json:"alive"`
	Shards      int    `json:"shards"`
}

type replicasResponse struct {
	Replicas []replicaInfo `json:"replicas"`
}

// replicas: GET /replicas (admin key): the orchestrator replicas sharing
// the database, alive or recently dead, and the shards each holds (SPEC §15).
func (s *server) replicas(w http.ResponseWriter, r *http.Request, _ bap.Product) error {
	list, err := s.store.Replicas(r.Context(), s.lifecycle.Replica().TTL())
	if err != nil {
		return fmt.Errorf("list replicas: %w", err)
	}
	out := replicasResponse{Replicas: make([]replicaInfo, 0, len(list))}
	for _, rp := range list {
		out.Replicas = append(out.Replicas, replicaInfo{
			ReplicaID: rp.ID, Host: rp.Host, Pid: rp.Pid, Version: rp.Version,
			StartedAt: bap.FormatTime(rp.StartedAt), HeartbeatAt: bap.FormatTime(rp.HeartbeatAt),
			Alive: rp.Alive, Shards: rp.Shards,
		})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
