package metrics

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
)

// BuildInfo exports bap_engine_build_info{version, commit, go_version} 1,
// so dashboards and alerts can tell which build runs where. Call it once.
func (m *Metrics) BuildInfo(version, commit, goVersion string) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace:   Namespace,
		Name:        "build_info",
		Help:        "Always 1; its labels name the running build.",
		ConstLabels: prometheus.Labels{"version": version, "commit": commit, "go_version": goVersion},
	})
	g.Set(1)
	m.registry.MustRegister(g)
}

// PortStats is the engine port range's use, read on every scrape.
type PortStats struct {
	// Used counts allocated ports; Total is the size of the range.
	Used, Total int
}

// Ports exports the engine port range's capacity, read from stats on every
// scrape: bap_engine_ports_used, bap_engine_ports_free and
// bap_engine_ports_total. A failing read is reported in the scrape. Call it
// once.
func (m *Metrics) Ports(stats func(ctx context.Context) (PortStats, error)) {
	descs := map[string]*prometheus.Desc{
		"used":  prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "ports_used"), "Engine host ports allocated.", nil, nil),
		"free":  prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "ports_free"), "Engine host ports still free in [ORCH_PORT_MIN, ORCH_PORT_MAX]; none free means provisions fail with PORT_EXHAUSTION.", nil, nil),
		"total": prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "ports_total"), "Size of the engine port range [ORCH_PORT_MIN, ORCH_PORT_MAX].", nil, nil),
	}
	m.registry.MustRegister(multiCollector{descs: []*prometheus.Desc{descs["used"], descs["free"], descs["total"]}, collect: func(ch chan<- prometheus.Metric) {
		ctx, cancel := context.WithTimeout(context.Background(), m.cfg.ScrapeTimeout)
		defer cancel()
		st, err := stats(ctx)
		if err != nil {
			m.log.Warn("metrics: port allocations unreadable", "err", err)
			for _, d := range descs {
				ch <- prometheus.NewInvalidMetric(d, err)
			}
			return
		}
		ch <- prometheus.MustNewConstMetric(descs["used"], prometheus.GaugeValue, float64(st.Used))
		ch <- prometheus.MustNewConstMetric(descs["free"], prometheus.GaugeValue, float64(max(st.Total-st.Used, 0)))
		ch <- prometheus.MustNewConstMetric(descs["total"], prometheus.GaugeValue, float64(st.Total))
	}})
}

// Database exports bap_engine_database_up: 1 when ping (the registry's
// reachability and migrations) succeeds at scrape time, else 0. Call it once.
func (m *Metrics) Database(ping func(ctx context.Context) error) {
	m.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: Namespace,
		Name:      "database_up",
		Help:      "1 when the registry's database answers and is migrated, else 0 (checked on each scrape).",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), m.cfg.ScrapeTimeout)
		defer cancel()
		if ping(ctx) != nil {
			return 0
		}
		return 1
	}))
}

// ReconcilePass is what one full reconciliation pass repaired.
type ReconcilePass struct {
	TakenOver, RunningLost, OrphansRemoved, PortsFreed, Errors int
}

// Reconciled counts one full reconciliation pass: its outcome
// (bap_engine_reconcile_runs_total{outcome}), what it repaired
// (bap_engine_reconcile_repairs_total{kind}) and the orphans among them
// (bap_engine_orphans_removed_total).
func (m *Metrics) Reconciled(p ReconcilePass, err error) {
	m.reconcileRuns.WithLabelValues(outcome(err)).Inc()
	for kind, n := range map[string]int{
		"taken_over": p.TakenOver, "running_lost": p.RunningLost,
		"orphans_removed": p.OrphansRemoved, "ports_freed": p.PortsFreed, "errors": p.Errors,
	} {
		m.reconcileRepairs.WithLabelValues(kind).Add(float64(n))
	}
	m.orphansRemoved.Add(float64(p.OrphansRemoved))
}

// RestartsExhausted counts an engine of productID whose automatic restarts
// are used up: it stays failed until someone starts it
// (health.GiveUpObserver).
func (m *Metrics) RestartsExhausted(productID string) {
	m.restartsExhausted.WithLabelValues(m.slug(productID)).Inc()
}

// multiCollector is a collector of several metric families computed
// together on scrape.
type multiCollector struct {
	descs   []*prometheus.Desc
	collect func(ch chan<- prometheus.Metric)
}

// Describe sends every family's description.
func (c multiCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// Collect computes the families' metrics.
func (c multiCollector) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }
