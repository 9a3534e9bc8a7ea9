package api

import (
	"fmt"
	"math"
	"net/http"
	"time"

	"github.com/september/bap-engine/internal/bap"
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
