package ui

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// chartHours is how far back the activity charts reach.
const chartHours = 24

// bootBoundsMS are the upper bounds of the boot time histogram's buckets.
var bootBoundsMS = []int64{250, 500, 1000, 2000, 5000, 10000, 30000, 60000}

// stateCount is the number of engines in one state.
type stateCount struct {
	State bap.State
	Count int
}

// productRow is one product of the overview and products tables.
type productRow struct {
	ID, Slug, DisplayName string
	Total                 int
	Counts                []stateCount // one per state, in states order
	Health                string
	Failed                int
	Created               time.Time
}

// overviewView is the body of the overview page.
type overviewView struct {
	Total    int
	Counts   []stateCount
	Health   string
	Failed   int
	Products []productRow
	Activity []barChart // provisions, crashes and restarts per hour
	Boot     barChart
	Since    time.Time
	// Replicas are the orchestrator processes sharing the database (admins
	// only, as GET /replicas).
	Replicas []registry.ReplicaStatus
	// ReplicaID is the process that served the page.
	ReplicaID string
}

// counted returns one stateCount per state from a map.
func counted(m map[bap.State]int) (out []stateCount, total int) {
	for _, st := range states {
		out = append(out, stateCount{State: st, Count: m[st]})
		total += m[st]
	}
	return out, total
}

// productRows is the table of the products the viewer sees, with their
// counts per state.
func (h *Handler) productRows(r *http.Request, v *viewer) ([]productRow, error) {
	ctx := r.Context()
	var (
		products []bap.Product
		bySlug   = map[string]map[bap.State]int{}
	)
	if v.admin {
		var err error
		if products, err = h.store.ListProducts(ctx); err != nil {
			return nil, fmt.Errorf("list products: %w", err)
		}
		if bySlug, err = h.store.CountByProductStatus(ctx); err != nil {
			return nil, fmt.Errorf("count engines: %w", err)
		}
	} else {
		products = []bap.Product{v.product}
		m, err := h.store.CountByStatus(ctx, v.product.ID)
		if err != nil {
			return nil, fmt.Errorf("count engines: %w", err)
		}
		bySlug[v.product.Slug] = m
	}
	rows := make([]productRow, 0, len(products))
	for _, p := range products {
		row := productRow{ID: p.ID, Slug: p.Slug, DisplayName: p.DisplayName, Created: p.CreatedAt}
		row.Counts, row.Total = counted(bySlug[p.Slug])
		row.Failed = bySlug[p.Slug][bap.StateFailed]
		row.Health = api.FleetHealth(row.Total, row.Failed)
		rows = append(rows, row)
	}
	return rows, nil
}

// overview: GET /ui/, the fleet at a glance.
func (h *Handler) overview(w http.ResponseWriter, r *http.Request, v *viewer) error {
	ctx := r.Context()
	counts, err := h.store.CountByStatus(ctx, v.scope())
	if err != nil {
		return fmt.Errorf("count engines: %w", err)
	}
	var ov overviewView
	ov.Counts, ov.Total = counted(counts)
	ov.Failed = counts[bap.StateFailed]
	ov.Health = api.FleetHealth(ov.Total, ov.Failed)
	if ov.Products, err = h.productRows(r, v); err != nil {
		return err
	}

	now := h.now().UTC()
	first := now.Truncate(time.Hour).Add(-(chartHours - 1) * time.Hour)
	ov.Since = first
	actions := append([]audit.Action{audit.Provision, audit.AutoRestartStart}, audit.CrashActions...)
	hourly, err := h.store.AuditHourly(ctx, v.scope(), first, actions)
	if err != nil {
		return fmt.Errorf("audit per hour: %w", err)
	}
	provisions := make([]int, chartHours)
	crashes := make([]int, chartHours)
	restarts := make([]int, chartHours)
	for _, ah := range hourly {
		i := int(ah.Hour.Sub(first) / time.Hour)
		if i < 0 || i >= chartHours {
			continue
		}
		switch {
		case ah.Action == audit.Provision:
			provisions[i] += ah.Count
		case ah.Action == audit.AutoRestartStart:
			restarts[i] += ah.Count
		case slices.Contains(audit.CrashActions, ah.Action):
			crashes[i] += ah.Count
		}
	}
	labels := make([]string, chartHours)
	for i := range labels {
		at := first.Add(time.Duration(i) * time.Hour)
		labels[i] = at.Format("15:04") + "–" + at.Add(time.Hour).Format("15:04") + " UTC"
	}
	hourTick := func(i int) (string, bool) {
		at := first.Add(time.Duration(i) * time.Hour)
		return at.Format("15:04"), at.Hour()%6 == 0
	}
	ov.Activity = []barChart{
		newBarChart("chart-provisions", "Provisions per hour", "provisions", labels, provisions, hourTick),
		newBarChart("chart-crashes", "Crashes per hour", "crashes", labels, crashes, hourTick),
		newBarChart("chart-restarts", "Auto-restarts per hour", "restarts", labels, restarts, hourTick),
	}

	boot, err := h.store.AuditDurations(ctx, v.scope(), audit.Provision, now.Add(-chartHours*time.Hour), bootBoundsMS)
	if err != nil {
		return fmt.Errorf("boot times: %w", err)
	}
	bootLabels := make([]string, len(boot))
	for i := range boot {
		switch {
		case i == 0:
			bootLabels[i] = "under " + seconds(bootBoundsMS[0])
		case i == len(bootBoundsMS):
			bootLabels[i] = seconds(bootBoundsMS[i-1]) + " or more"
		default:
			bootLabels[i] = seconds(bootBoundsMS[i-1]) + " to " + seconds(bootBoundsMS[i])
		}
	}
	ov.Boot = newBarChart("chart-boot", "Boot time of provisions, last 24 h (s)", "provisions", bootLabels, boot,
		func(i int) (string, bool) {
			if i == len(bootBoundsMS) {
				return "≥" + strings.TrimSuffix(seconds(bootBoundsMS[i-1]), " s"), true
			}
			return "<" + strings.TrimSuffix(seconds(bootBoundsMS[i]), " s"), true
		})
	if v.admin {
		rep := h.lm.Replica()
		if ov.Replicas, err = h.store.Replicas(ctx, rep.TTL()); err != nil {
			return fmt.Errorf("list replicas: %w", err)
		}
		ov.ReplicaID = rep.ID()
	}
	h.render(w, r, v, http.StatusOK, "overview", "Overview", ov)
	return nil
}

// seconds writes a millisecond bound as seconds ("0.25 s", "2 s").
func seconds(ms int64) string {
	if ms%1000 == 0 {
		return fmt.Sprintf("%d s", ms/1000)
	}
	return fmt.Sprintf("%g s", float64(ms)/1000)
}
