package api

import (
	"fmt"
	"math"
	"net/http"
	"time"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// Fleet health values of GET /status.
const (
	healthOK       = "ok"
	healthDegraded = "degraded"
	healthCritical = "critical"
)

type statusResponse struct {
	Total          int            `json:"total"`
	ByStatus       map[string]int `json:"by_status"`
	Health         string         `json:"health"`
	UnhealthyCount int            `json:"unhealthy_count"`
}

// FleetHealth is the health GET /status reports for total engines of which
// failed are failed: critical when at least a quarter failed, degraded when
// any did, else ok.
func FleetHealth(total, failed int) string {
	switch {
	case failed == 0:
		return healthOK
	case failed*4 >= total:
		return healthCritical
	default:
		return healthDegraded
	}
}

// status: GET /status, over all the product's engines. by_status names
// every state, with 0 for states no engine is in, so dashboards see a
// stable shape.
func (s *server) status(w http.ResponseWriter, r *http.Request, p bap.Product) error {
	counts, err := s.store.CountByStatus(r.Context(), p.ID)
	if err != nil {
		return fmt.Errorf("count engines: %w", err)
	}
	out := statusResponse{ByStatus: make(map[string]int, len(bap.States))}
	for _, st := range bap.States {
		out.ByStatus[string(st)] = counts[st]
	}
	for _, n := range counts {
		out.Total += n
	}
	out.UnhealthyCount = counts[bap.StateFailed]
	out.Health = FleetHealth(out.Total, out.UnhealthyCount)
	writeJSON(w, http.StatusOK, out)
	return nil
}

type metricsResponse struct {
	Provisions1h    int   `json:"provisions_1h"`
	Crashes1h       int   `json:"crashes_1h"`
	Restarts1h      int   `json:"restarts_1h"`
	AvgBootMS       int64 `json:"avg_boot_ms"`
	TotalProvisions int   `json:"total_provisions"`
	TotalDestroys   int   `json:"total_destroys"`
}

// fleetMetrics: GET /metrics, from the product's audit log.
func (s *server) fleetMetrics(w http.ResponseWriter, r *http.Request, p bap.Product) error {
	st, err := s.store.AuditStats(r.Context(), p.ID, bap.Timestamp(s.now().Add(-time.Hour)))
	if err != nil {
		return fmt.Errorf("audit stats: %w", err)
	}
	writeJSON(w, http.StatusOK, metricsResponse{
		Provisions1h:    st.ProvisionsSince,
		Crashes1h:       st.CrashesSince,
		Restarts1h:      st.RestartsSince,
		AvgBootMS:       int64(math.Round(st.AvgBootMSSince)),
		TotalProvisions: st.TotalProvisions,
		TotalDestroys:   st.TotalDestroys,
	})
	return nil
}

// fleetEngineInfo is an engine of GET /fleet/engines: EngineInfo without
// its key, with its product's slug and its health counters.
type fleetEngineInfo struct {
	engineInfo
	ProductSlug    string `json:"product_slug"`
	HealthFailures int    `json:"health_failures"`
	RestartCount   int    `json:"restart_count"`
}

type fleetEnginesResponse struct {
	Engines []fleetEngineInfo `json:"engines"`
	Total   int               `json:"total"`
}

// fleetEngines: GET /fleet/engines?product=&status=&user_id=&limit=&offset=
// (admin key): engines of every product, ordered by created_at then id.
// product is an id or a slug; user_id selects the user ids containing it,
// ignoring case.
func (s *server) fleetEngines(w http.ResponseWriter, r *http.Request, _ bap.Product) error {
	q := r.URL.Query()
	var f registry.FleetFilter
	var err error
	if f.Status, err = statusFilter(q); err != nil {
		return err
	}
	if f.Limit, f.Offset, err = page(q); err != nil {
		return err
	}
	if u := q.Get("user_id"); u != "" {
		if len(u) > bap.MaxUserIDLen {
			return bap.Errorf(bap.CodeValidation, "user_id must be at most %d characters.", bap.MaxUserIDLen)
		}
		f.UserID = u
	}
	if name := q.Get("product"); name != "" {
		p, err := s.productNamed(r.Context(), name)
		if err != nil {
			return err
		}
		f.ProductID = p.ID
	}
	engines, total, err := s.store.ListFleet(r.Context(), f)
	if err != nil {
		return fmt.Errorf("list fleet: %w", err)
	}
	out := fleetEnginesResponse{Engines: make([]fleetEngineInfo, 0, len(engines)), Total: total}
	for _, e := range engines {
		out.Engines = append(out.Engines, fleetEngineInfo{
			engineInfo:     toEngineInfo(e.Engine, nil),
			ProductSlug:    e.ProductSlug,
			HealthFailures: e.HealthFailures,
			RestartCount:   e.RestartAttempts,
		})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
