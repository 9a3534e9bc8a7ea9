package metrics_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/metrics"
)

// scrape returns the text exposition served by m.Handler().
func scrape(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics/prometheus", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	body, err := io.ReadAll(rec.Body)
	require.NoError(t, err)
	return string(body)
}

// family returns the gathered family called name, or nil.
func family(t *testing.T, m *metrics.Metrics, name string) *dto.MetricFamily {
	t.Helper()
	fams, err := m.Registry().Gather()
	require.NoError(t, err)
	for _, f := range fams {
		if f.GetName() == name {
			return f
		}
	}
	return nil
}

func labels(mt *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range mt.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

func TestEnginesGaugeFromSnapshot(t *testing.T) {
	t.Parallel()
	snap := map[string]map[string]int{
		"acme": {"running": 3, "failed": 1},
		"demo": {"sleeping": 2},
	}
	m := metrics.New(metrics.Config{
		Engines: func(context.Context) (map[string]map[string]int, error) { return snap, nil },
		States:  []string{"running", "sleeping", "failed"},
	})
	f := family(t, m, "bap_engine_engines")
	require.NotNil(t, f)
	got := map[string]float64{}
	for _, mt := range f.GetMetric() {
		l := labels(mt)
		got[l["product"]+"/"+l["state"]] = mt.GetGauge().GetValue()
	}
	require.Equal(t, map[string]float64{
		"acme/running": 3, "acme/sleeping": 0, "acme/failed": 1,
		"demo/running": 0, "demo/sleeping": 2, "demo/failed": 0,
	}, got)

	text := scrape(t, m)
	require.Contains(t, text, `bap_engine_engines{product="acme",state="running"} 3`)
}

func TestEnginesGaugeReadsSnapshotOnEveryScrape(t *testing.T) {
	t.Parallel()
	var n atomic.Int64
	m := metrics.New(metrics.Config{
		Engines: func(context.Context) (map[string]map[string]int, error) {
			return map[string]map[string]int{"p": {"running": int(n.Add(1))}}, nil
		},
	})
	require.Contains(t, scrape(t, m), `bap_engine_engines{product="p",state="running"} 1`)
	require.Contains(t, scrape(t, m), `bap_engine_engines{product="p",state="running"} 2`)
}

func TestSnapshotErrorDoesNotHideOtherMetrics(t *testing.T) {
	t.Parallel()
	m := metrics.New(metrics.Config{
		Engines: func(context.Context) (map[string]map[string]int, error) {
			return nil, errors.New("database down")
		},
	})
	m.ProbeFailure("")
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	require.Contains(t, rec.Body.String(), `bap_engine_probe_failures_total{product="unknown"} 1`)
	require.NotContains(t, rec.Body.String(), "bap_engine_engines{")
}

func TestObserverLabelsBySlugAndCachesLookup(t *testing.T) {
	t.Parallel()
	var lookups atomic.Int64
	m := metrics.New(metrics.Config{
		Slug: func(_ context.Context, id string) (string, error) {
			lookups.Add(1)
			if id == "p-1" {
				return "acme", nil
			}
			return "", errors.New("no such product")
		},
	})
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			m.Operation("p-1", "provision", 1500*time.Millisecond, nil)
			m.Boot("p-1", time.Second)
		})
	}
	wg.Wait()
	m.Operation("p-1", "start", time.Second, errors.New("boom"))
	m.Admit("p-1", 3*time.Millisecond, metrics.AdmitAdmitted)
	m.Restart("p-1", nil)
	m.Restart("p-1", errors.New("still down"))
	m.ProbeFailure("p-2")

	// 20 concurrent first uses may race to look up, but once cached no
	// further lookups happen.
	before := lookups.Load()
	require.GreaterOrEqual(t, before, int64(1))
	m.Boot("p-1", time.Second)
	require.Equal(t, before, lookups.Load())

	text := scrape(t, m)
	require.Contains(t, text, `bap_engine_operation_duration_seconds_count{operation="provision",outcome="ok",product="acme"} 20`)
	require.Contains(t, text, `bap_engine_operation_duration_seconds_count{operation="start",outcome="error",product="acme"} 1`)
	require.Contains(t, text, `bap_engine_boot_duration_seconds_count{product="acme"} 21`)
	require.Contains(t, text, `bap_engine_admit_duration_seconds_count{product="acme",result="admitted"} 1`)
	require.Contains(t, text, `bap_engine_restarts_total{outcome="ok",product="acme"} 1`)
	require.Contains(t, text, `bap_engine_restarts_total{outcome="error",product="acme"} 1`)
	require.Contains(t, text, `bap_engine_probe_failures_total{product="unknown"} 1`)

	// A failed lookup is not cached: the next use asks again.
	failedBefore := lookups.Load()
	m.ProbeFailure("p-2")
	require.Equal(t, failedBefore+1, lookups.Load())
}

func TestHTTPRequestsByRoutePattern(t *testing.T) {
	t.Parallel()
	m := metrics.New(metrics.Config{})
	m.HTTPRequest("GET /engines/{user_id}", http.MethodGet, 404, time.Millisecond)
	m.HTTPRequest("GET /engines/{user_id}", http.MethodGet, 404, time.Millisecond)
	text := scrape(t, m)
	require.Contains(t, text, `bap_engine_http_requests_total{code="404",method="GET",route="GET /engines/{user_id}"} 2`)
}

func TestOwnRegistryNotGlobal(t *testing.T) {
	t.Parallel()
	a := metrics.New(metrics.Config{})
	b := metrics.New(metrics.Config{})
	a.ProbeFailure("")
	require.Contains(t, scrape(t, a), "bap_engine_probe_failures_total")
	require.NotContains(t, scrape(t, b), `bap_engine_probe_failures_total{`)
	// Go runtime metrics are on the own registry.
	require.True(t, strings.Contains(scrape(t, b), "go_goroutines"))
}

func TestAdmitCacheFromStats(t *testing.T) {
	t.Parallel()
	m := metrics.New(metrics.Config{})
	var stats atomic.Pointer[metrics.AdmitCacheStats]
	stats.Store(&metrics.AdmitCacheStats{Live: true, Engines: 7, Hits: 120, Reads: 9})
	m.AdmitCache(func() metrics.AdmitCacheStats { return *stats.Load() })
	text := scrape(t, m)
	for _, line := range []string{
		"bap_engine_admit_cache_live 1",
		"bap_engine_admit_cache_engines 7",
		"bap_engine_admit_cache_hits_total 120",
		"bap_engine_admit_cache_reads_total 9",
	} {
		require.Contains(t, text, line+"\n")
	}
	stats.Store(&metrics.AdmitCacheStats{Hits: 121, Reads: 15})
	text = scrape(t, m)
	require.Contains(t, text, "bap_engine_admit_cache_live 0\n", "read on every scrape")
	require.Contains(t, text, "bap_engine_admit_cache_reads_total 15\n")
}

func TestDBPoolFromStats(t *testing.T) {
	t.Parallel()
	m := metrics.New(metrics.Config{})
	var stats atomic.Pointer[metrics.DBPoolStats]
	stats.Store(&metrics.DBPoolStats{InUse: 3, Idle: 5, Max: 16})
	m.DBPool(func() metrics.DBPoolStats { return *stats.Load() })
	text := scrape(t, m)
	for _, line := range []string{
		`bap_engine_db_connections{state="in_use"} 3`,
		`bap_engine_db_connections{state="idle"} 5`,
		"bap_engine_db_max_connections 16",
	} {
		require.Contains(t, text, line+"\n")
	}
	stats.Store(&metrics.DBPoolStats{Idle: 2, Max: 16})
	text = scrape(t, m)
	require.Contains(t, text, `bap_engine_db_connections{state="in_use"} 0`+"\n", "read on every scrape")
	require.Contains(t, text, `bap_engine_db_connections{state="idle"} 2`+"\n")
}
