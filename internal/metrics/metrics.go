package metrics

import (
	"cmp"
	"context"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every metric name.
const Namespace = "bap_engine"

// UnknownProduct is the product label used when a product id cannot be
// mapped to a slug (the lookup failed or no id was given).
const UnknownProduct = "unknown"

// Outcome label values.
const (
	OutcomeOK    = "ok"
	OutcomeError = "error"
)

// Admit result label values.
const (
	AdmitAdmitted = "admitted"
	AdmitDenied   = "denied"
	AdmitError    = "error"
)

// EngineSnapshot returns the current number of engines per product slug and
// state. It backs the engines gauge and is called on every scrape.
type EngineSnapshot func(ctx context.Context) (map[string]map[string]int, error)

// SlugLookup maps a product id to its slug. Results are cached: slugs never
// change.
type SlugLookup func(ctx context.Context, productID string) (string, error)

// Config is what New needs. Engines and Slug may be nil (no engines gauge;
// every product labelled UnknownProduct), which suits tests of other parts.
type Config struct {
	Engines EngineSnapshot
	Slug    SlugLookup
	// States, when set, are reported for every product in the engines gauge,
	// as 0 when the snapshot has none, so series do not vanish.
	States []string
	// ScrapeTimeout bounds one call of Engines (default 5 s).
	ScrapeTimeout time.Duration
	// LookupTimeout bounds one call of Slug (default 2 s).
	LookupTimeout time.Duration
	Logger        *slog.Logger
}

// Metrics holds the collectors and their registry. Its methods are safe for
// concurrent use and cheap enough to call on every request.
type Metrics struct {
	cfg      Config
	log      *slog.Logger
	registry *prometheus.Registry
	slugs    sync.Map // product id → slug

	admit         *prometheus.HistogramVec
	operation     *prometheus.HistogramVec
	boot          *prometheus.HistogramVec
	probeFailures *prometheus.CounterVec
	restarts      *prometheus.CounterVec
	httpRequests  *prometheus.CounterVec
	httpDuration  *prometheus.HistogramVec

	reconcileRuns     *prometheus.CounterVec
	reconcileRepairs  *prometheus.CounterVec
	orphansRemoved    prometheus.Counter
	restartsExhausted *prometheus.CounterVec
}

var (
	latencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	bootBuckets    = []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 20, 30, 60, 120}
)

// New builds the collectors and registers them, with the Go runtime and
// process collectors, on a registry of their own.
func New(cfg Config) *Metrics {
	cfg.ScrapeTimeout = cmp.Or(cfg.ScrapeTimeout, 5*time.Second)
	cfg.LookupTimeout = cmp.Or(cfg.LookupTimeout, 2*time.Second)
	m := &Metrics{
		cfg:      cfg,
		log:      cmp.Or(cfg.Logger, slog.Default()),
		registry: prometheus.NewRegistry(),
		admit: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace,
			Name:      "admit_duration_seconds",
			Help:      "Latency of admit calls by product slug and result (admitted, denied, error).",
			Buckets:   latencyBuckets,
		}, []string{"product", "result"}),
		operation: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace,
			Name:      "operation_duration_seconds",
			Help:      "Latency of lifecycle operations (provision, start, wake, stop, rotate_key, destroy) by product slug and outcome.",
			Buckets:   bootBuckets,
		}, []string{"product", "operation", "outcome"}),
		boot: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace,
			Name:      "boot_duration_seconds",
			Help:      "Time from starting an engine to its first healthy probe, by product slug.",
			Buckets:   bootBuckets,
		}, []string{"product"}),
		probeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace,
			Name:      "probe_failures_total",
			Help:      "Failed engine health probes by product slug.",
		}, []string{"product"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace,
			Name:      "restarts_total",
			Help:      "Automatic restart attempts by product slug and outcome.",
		}, []string{"product", "outcome"}),
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace,
			Name:      "http_requests_total",
			Help:      "HTTP requests served, by route pattern, method and status code.",
		}, []string{"route", "method", "code"}),
		httpDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace,
			Name:      "http_request_duration_seconds",
			Help:      "HTTP request latency by route pattern.",
			Buckets:   latencyBuckets,
		}, []string{"route"}),
	}
	m.reconcileRuns = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace,
		Name:      "reconcile_runs_total",
		Help:      "Full reconciliation passes (database against backend) by outcome.",
	}, []string{"outcome"})
	m.reconcileRepairs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace,
		Name:      "reconcile_repairs_total",
		Help:      "What reconciliation repaired, by kind: taken_over, running_lost, orphans_removed, ports_freed, errors.",
	}, []string{"kind"})
	m.orphansRemoved = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace,
		Name:      "orphans_removed_total",
		Help:      "Labelled engine instances without an engine row, removed by reconciliation.",
	})
	m.restartsExhausted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace,
		Name:      "restarts_exhausted_total",
		Help:      "Engines whose automatic restarts ran out (ORCH_RESTART_MAX_ATTEMPTS), by product slug: they stay failed until started.",
	}, []string{"product"})
	m.registry.MustRegister(
		m.admit, m.operation, m.boot, m.probeFailures, m.restarts, m.httpRequests, m.httpDuration,
		m.reconcileRuns, m.reconcileRepairs, m.orphansRemoved, m.restartsExhausted,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	if cfg.Engines != nil {
		m.registry.MustRegister(&engineCollector{m: m})
	}
	return m
}

// AdmitCacheStats is what AdmitCache reports on every scrape.
type AdmitCacheStats struct {
	// Live is whether the engine cache is on.
	Live bool
	// Engines is how many running engines it holds.
	Engines int
	// Hits counts admits served from memory; Reads counts admits that
	// read the database.
	Hits, Reads uint64
}

// AdmitCache exports the admit cache's state, read from stats on every
// scrape: bap_engine_admit_cache_live, bap_engine_admit_cache_engines and
// the counters bap_engine_admit_cache_hits_total and
// bap_engine_admit_cache_reads_total. Call it once.
func (m *Metrics) AdmitCache(stats func() AdmitCacheStats) {
	m.registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: Namespace,
			Name:      "admit_cache_live",
			Help:      "1 while the engine cache of admits is on (the store's change feed is live), else 0.",
		}, func() float64 {
			if stats().Live {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: Namespace,
			Name:      "admit_cache_engines",
			Help:      "Running engines held by the engine cache of admits.",
		}, func() float64 { return float64(stats().Engines) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: Namespace,
			Name:      "admit_cache_hits_total",
			Help:      "Admits whose product and engine came from memory, without a database round trip.",
		}, func() float64 { return float64(stats().Hits) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: Namespace,
			Name:      "admit_cache_reads_total",
			Help:      "Admits that read the database (cache miss, cache off, or product re-authentication).",
		}, func() float64 { return float64(stats().Reads) }),
	)
}

// DBPoolStats is what DBPool reports on every scrape.
type DBPoolStats struct {
	// InUse and Idle count the open connections lent out and waiting.
	InUse, Idle int
	// Max is the pool's ceiling.
	Max int
}

// DBPool exports the registry's connection pool, read from stats on every
// scrape: bap_engine_db_connections{state="in_use"|"idle"} and
// bap_engine_db_max_connections. Call it once.
func (m *Metrics) DBPool(stats func() DBPoolStats) {
	conns := prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "db_connections"),
		"Open connections of the registry's database pool, lent out (in_use) or waiting (idle).", []string{"state"}, nil)
	m.registry.MustRegister(
		collectorFunc{desc: conns, collect: func(ch chan<- prometheus.Metric) {
			st := stats()
			ch <- prometheus.MustNewConstMetric(conns, prometheus.GaugeValue, float64(st.InUse), "in_use")
			ch <- prometheus.MustNewConstMetric(conns, prometheus.GaugeValue, float64(st.Idle), "idle")
		}},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: Namespace,
			Name:      "db_max_connections",
			Help:      "Most connections the registry's database pool opens.",
		}, func() float64 { return float64(stats().Max) }),
	)
}

// collectorFunc is a collector of one metric family computed on scrape.
type collectorFunc struct {
	desc    *prometheus.Desc
	collect func(ch chan<- prometheus.Metric)
}

// Describe sends the family's one description.
func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect computes the family's metrics.
func (c collectorFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }

// Registry is the registry every collector of m is on (for tests and for
// adding collectors of the composition root's own).
func (m *Metrics) Registry() *prometheus.Registry { return m.registry }

// Handler serves the Prometheus text exposition of m's registry. A failing
// collector is reported in the scrape and does not hide the others.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{
		ErrorLog:      slogAdapter{m.log},
		ErrorHandling: promhttp.ContinueOnError,
	})
}

// Operation records a finished lifecycle operation on an engine of
// productID (lifecycle.Observer).
func (m *Metrics) Operation(productID, op string, d time.Duration, err error) {
	m.operation.WithLabelValues(m.slug(productID), op, outcome(err)).Observe(d.Seconds())
}

// Boot records how long an engine of productID took from start to healthy
// (lifecycle.Observer).
func (m *Metrics) Boot(productID string, d time.Duration) {
	m.boot.WithLabelValues(m.slug(productID)).Observe(d.Seconds())
}

// Admit records one admit call of productID; result is AdmitAdmitted,
// AdmitDenied or AdmitError.
func (m *Metrics) Admit(productID string, d time.Duration, result string) {
	m.admit.WithLabelValues(m.slug(productID), result).Observe(d.Seconds())
}

// ProbeFailure counts one failed health probe of an engine of productID.
func (m *Metrics) ProbeFailure(productID string) {
	m.probeFailures.WithLabelValues(m.slug(productID)).Inc()
}

// Restart counts one automatic restart attempt of an engine of productID
// and whether it brought the engine back (err == nil).
func (m *Metrics) Restart(productID string, err error) {
	m.restarts.WithLabelValues(m.slug(productID), outcome(err)).Inc()
}

// HTTPRequest records one served request. route is the matched pattern
// (e.g. "GET /engines/{user_id}"), never the raw path, so user ids stay out
// of the labels.
func (m *Metrics) HTTPRequest(route, method string, status int, d time.Duration) {
	m.httpRequests.WithLabelValues(route, method, strconv.Itoa(status)).Inc()
	m.httpDuration.WithLabelValues(route).Observe(d.Seconds())
}

func outcome(err error) string {
	if err != nil {
		return OutcomeError
	}
	return OutcomeOK
}

// slug maps a product id to its slug through the cache, calling the lookup
// on a miss. Failures are not cached, so a passing database outage labels
// a few samples UnknownProduct and nothing more.
func (m *Metrics) slug(productID string) string {
	if productID == "" || m.cfg.Slug == nil {
		return UnknownProduct
	}
	if s, ok := m.slugs.Load(productID); ok {
		return s.(string)
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.LookupTimeout)
	defer cancel()
	s, err := m.cfg.Slug(ctx, productID)
	if err != nil || s == "" {
		m.log.Warn("metrics: product slug lookup failed", "product_id", productID, "err", err)
		return UnknownProduct
	}
	m.slugs.Store(productID, s)
	return s
}

// engineCollector reports the engines gauge from the snapshot function at
// scrape time, so the numbers are the registry's, not a cached copy.
type engineCollector struct{ m *Metrics }

var enginesDesc = prometheus.NewDesc(
	prometheus.BuildFQName(Namespace, "", "engines"),
	"Engines by product slug and state.",
	[]string{"product", "state"}, nil,
)

// Describe sends the engines gauge's description.
func (c *engineCollector) Describe(ch chan<- *prometheus.Desc) { ch <- enginesDesc }

// Collect reads the snapshot and sends one sample per product and state.
func (c *engineCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.m.cfg.ScrapeTimeout)
	defer cancel()
	snap, err := c.m.cfg.Engines(ctx)
	if err != nil {
		c.m.log.Warn("metrics: engine snapshot failed", "err", err)
		ch <- prometheus.NewInvalidMetric(enginesDesc, err)
		return
	}
	products := make([]string, 0, len(snap))
	for p := range snap {
		products = append(products, p)
	}
	sort.Strings(products)
	for _, p := range products {
		counts := snap[p]
		seen := make(map[string]bool, len(counts))
		for _, st := range c.m.cfg.States {
			seen[st] = true
			ch <- prometheus.MustNewConstMetric(enginesDesc, prometheus.GaugeValue, float64(counts[st]), p, st)
		}
		for st, n := range counts {
			if !seen[st] {
				ch <- prometheus.MustNewConstMetric(enginesDesc, prometheus.GaugeValue, float64(n), p, st)
			}
		}
	}
}

// slogAdapter lets promhttp report encoding errors through slog.
type slogAdapter struct{ log *slog.Logger }

// Println logs one exposition error.
func (a slogAdapter) Println(v ...any) {
	a.log.Warn("metrics: exposition error", "detail", v)
}
