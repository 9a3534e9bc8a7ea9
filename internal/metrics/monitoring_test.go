package metrics_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/september/bap-engine/internal/metrics"
)

// monitoringDir holds the alert rules and the Grafana dashboard.
var monitoringDir = filepath.Join("..", "..", "deploy", "monitoring")

// everyFamily builds Metrics with every optional collector, makes one
// observation of every vector (vectors without a child are not gathered)
// and returns the names of the families gathered, histograms also under
// their _bucket, _sum and _count series names.
func everyFamily(t *testing.T) map[string]bool {
	t.Helper()
	m := metrics.New(metrics.Config{
		Engines: func(context.Context) (map[string]map[string]int, error) {
			return map[string]map[string]int{"acme": {"running": 1}}, nil
		},
		States: []string{"running", "failed"},
	})
	m.AdmitCache(func() metrics.AdmitCacheStats { return metrics.AdmitCacheStats{Live: true} })
	m.DBPool(func() metrics.DBPoolStats { return metrics.DBPoolStats{Max: 4} })
	m.BuildInfo("v1", "abc", "go1")
	m.Database(func(context.Context) error { return nil })
	m.Ports(func(context.Context) (metrics.PortStats, error) { return metrics.PortStats{Used: 1, Total: 10}, nil })
	m.Admit("p", time.Millisecond, metrics.AdmitAdmitted)
	m.Operation("p", "provision", time.Second, nil)
	m.Boot("p", time.Second)
	m.ProbeFailure("p")
	m.Restart("p", errors.New("x"))
	m.RestartsExhausted("p")
	m.HTTPRequest("GET /status", "GET", 200, time.Millisecond)
	m.Reconciled(metrics.ReconcilePass{OrphansRemoved: 1}, nil)

	fams, err := m.Registry().Gather()
	require.NoError(t, err)
	names := map[string]bool{}
	for _, f := range fams {
		names[f.GetName()] = true
		if f.GetType().String() == "HISTOGRAM" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[f.GetName()+s] = true
			}
		}
	}
	return names
}

var (
	ourMetric   = regexp.MustCompile(`bap_engine_[a-z0-9_]+`)
	identifier  = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	stringLit   = regexp.MustCompile(`"[^"]*"`)
	matchers    = regexp.MustCompile(`\{[^}]*\}`)
	ranges      = regexp.MustCompile(`\[[^\]]*\]`)
	grouping    = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promqlWords = []string{"sum", "min", "max", "avg", "count", "rate", "increase", "irate", "histogram_quantile",
		"and", "or", "unless", "bool", "offset", "abs", "clamp_min", "clamp_max", "topk", "bottomk", "vector", "scalar"}
)

// metricsIn returns the metric names a PromQL expression selects: what is
// left once strings, label matchers, ranges, grouping clauses, functions,
// keywords and numbers are taken out.
func metricsIn(expr string) []string {
	e := stringLit.ReplaceAllString(expr, `""`)
	e = matchers.ReplaceAllString(e, " ")
	e = ranges.ReplaceAllString(e, " ")
	e = grouping.ReplaceAllString(e, " ")
	var out []string
	for _, tok := range identifier.FindAllString(e, -1) {
		if !slices.Contains(promqlWords, tok) {
			out = append(out, tok)
		}
	}
	return out
}

func TestAlertRulesNameOnlyExportedMetrics(t *testing.T) {
	names := everyFamily(t)
	b, err := os.ReadFile(filepath.Join(monitoringDir, "alerts.yml"))
	require.NoError(t, err)
	var doc struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	require.NoError(t, yaml.Unmarshal(b, &doc))
	var alerts []string
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			used := metricsIn(r.Expr)
			require.NotEmpty(t, used, "%s selects no metric", r.Alert)
			for _, name := range used {
				require.True(t, names[name], "alert %s names %s, which bap-engine does not export", r.Alert, name)
			}
		}
	}
	for _, want := range []string{"BapEngineEnginesFailing", "BapEngineRestartsGivingUp", "BapEngineAdmitCacheDown",
		"BapEngineDatabaseUnreachable", "BapEnginePortsNearExhaustion"} {
		require.Contains(t, alerts, want)
	}
}

func TestGrafanaDashboardNamesOnlyExportedMetrics(t *testing.T) {
	names := everyFamily(t)
	b, err := os.ReadFile(filepath.Join(monitoringDir, "grafana-dashboard.json"))
	require.NoError(t, err)
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	require.NoError(t, json.Unmarshal(b, &dash))
	require.NotEmpty(t, dash.Panels)
	exprs := 0
	for _, p := range dash.Panels {
		require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
		for _, tg := range p.Targets {
			exprs++
			used := metricsIn(tg.Expr)
			require.NotEmpty(t, used, "panel %q: %s selects no metric", p.Title, tg.Expr)
			for _, name := range used {
				require.True(t, strings.HasPrefix(name, "bap_engine_"), "panel %q uses %s, not one of ours", p.Title, name)
				require.True(t, names[name], "panel %q names %s, which bap-engine does not export", p.Title, name)
			}
		}
	}
	// Anything else naming a metric (template variables) names ours.
	for _, name := range ourMetric.FindAllString(string(b), -1) {
		require.True(t, names[name], "the dashboard names %s, which bap-engine does not export", name)
	}
	require.Greater(t, exprs, 10)
}

// TestMetricsInFindsEveryMetric keeps the expression scanner honest.
func TestMetricsInFindsEveryMetric(t *testing.T) {
	require.Equal(t, []string{"a_total", "b"},
		metricsIn(`sum by (product) (rate(a_total{x="y{z}", le=~".*"}[5m])) / on (instance) max(b) > 0.25`))
	require.Equal(t, []string{"c_bucket"}, metricsIn(`histogram_quantile(0.99, sum by (le) (rate(c_bucket[5m])))`))
}
