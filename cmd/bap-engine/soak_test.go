package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/september/bap-engine/client"
	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/loadtest"
	"github.com/september/bap-engine/internal/loop"
	"github.com/september/bap-engine/internal/pgtest"
)

// envSoak runs TestSoak for the Go duration it holds (BAP_SOAK=6h for
// hours); with CI=true and no BAP_SOAK it runs for soakCIDuration.
const envSoak = "BAP_SOAK"

// The soak's shape. Fixed, so runs compare; the duration alone varies.
const (
	soakCIDuration = 3 * time.Minute
	soakEngines    = 500
	soakAdmitRate  = 200 // admits per second, paced
	soakAdmitConns = 16
	soakSlice      = 30 * time.Second // clean and hostile slices alternate
	soakSample     = 10 * time.Second
	soakStalled    = 100 // slow or stalled connections held at once
	soakBadWorkers = 2   // malformed, oversized and wrong-key requests
	soakBadPause   = 40 * time.Millisecond
	soakPolicyTick = 5 * time.Second
	soakReadTick   = time.Second
	soakChurnPause = 500 * time.Millisecond

	// The orchestrator's limits during the soak: short, so stalled
	// clients meet them many times per slice.
	soakReadTimeout = 5 * time.Second
	soakIdleTimeout = 15 * time.Second

	// How far above its baseline (the highest of the samples before the
	// load) a figure may end once the load has stopped: a leak of one
	// goroutine or descriptor per hostile connection would end thousands
	// above. RSS is bounded absolutely (the Go heap is not given back at
	// once, so it is not expected to return).
	soakGoroutineSlack = 25
	soakFDSlack        = 15
	soakConnSlack      = 2
	soakRSSBound       = 256 << 20
	soakSettle         = 90 * time.Second
)

// soakDuration is how long the load of TestSoak runs.
func soakDuration(t *testing.T) time.Duration {
	t.Helper()
	v := os.Getenv(envSoak)
	if v == "" {
		if os.Getenv("CI") == "true" {
			return soakCIDuration
		}
		t.Skipf("a %s soak with %d engines: scripts/test.sh runs it; or set %s=3m (or 6h)", soakCIDuration, soakEngines, envSoak)
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 2*soakSlice {
		t.Fatalf("%s=%q: want a Go duration of at least %s, such as 3m or 6h", envSoak, v, 2*soakSlice)
	}
	return d
}

// sample is one reading of the orchestrator's resources.
type sample struct {
	at         time.Duration // since the load began (negative: baseline)
	phase      string
	rss        float64 // bytes
	goroutines int
	fds        int
	poolInUse  int
	poolIdle   int
	poolMax    int
	pgConns    int     // the database's server-side connections from the orchestrator
	cpu        float64 // the orchestrator's CPU seconds so far
	gcs        int     // its garbage collections so far
	clientCPU  float64 // this process's (the clients') CPU seconds so far
	load       string  // the machine's load average over 1 minute
}

func (s sample) String() string {
	return fmt.Sprintf("%+6.0fs\t%s\t%.1f MiB\t%d\t%d\t%d/%d (max %d)\t%d\t%.1f s\t%d\t%.1f s\t%s",
		s.at.Seconds(), s.phase, s.rss/(1<<20), s.goroutines, s.fds, s.poolInUse, s.poolIdle, s.poolMax, s.pgConns,
		s.cpu, s.gcs, s.clientCPU, s.load)
}

// fold combines the resource figures of samples with pick (min or max).
func fold(samples []sample, pick func(a, b float64) float64) sample {
	out := samples[0]
	each := func(f *int, v int) { *f = int(pick(float64(*f), float64(v))) }
	for _, s := range samples[1:] {
		out.rss = pick(out.rss, s.rss)
		each(&out.goroutines, s.goroutines)
		each(&out.fds, s.fds)
		each(&out.poolInUse, s.poolInUse)
		each(&out.poolIdle, s.poolIdle)
		each(&out.pgConns, s.pgConns)
	}
	return out
}

// sampler reads the admin-only Prometheus scrape of the orchestrator and
// counts the database's connections.
type sampler struct {
	url, adminKey string
	hc            *http.Client
	pgMu          sync.Mutex
	pg            *pgx.Conn // nil: not counted
}

var metricLine = regexp.MustCompile(`(?m)^([a-z_]+(?:\{[^}]*\})?) (\S+)$`)

// scrape returns every sample line of /metrics/prometheus by series.
func (s *sampler) scrape(ctx context.Context) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url+"/metrics/prometheus", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set(api.HeaderAdminKey, s.adminKey)
	resp, err := s.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape: %d %s", resp.StatusCode, b)
	}
	out := map[string]float64{}
	for _, m := range metricLine.FindAllSubmatch(b, -1) {
		if v, err := strconv.ParseFloat(string(m[2]), 64); err == nil {
			out[string(m[1])] = v
		}
	}
	return out, nil
}

// read takes one sample.
func (s *sampler) read(ctx context.Context) (sample, error) {
	m, err := s.scrape(ctx)
	if err != nil {
		return sample{}, err
	}
	var missing []string
	get := func(name string) float64 {
		v, ok := m[name]
		if !ok {
			missing = append(missing, name)
		}
		return v
	}
	smp := sample{
		rss:        get("process_resident_memory_bytes"),
		goroutines: int(get("go_goroutines")),
		fds:        int(get("process_open_fds")),
		poolInUse:  int(get(`bap_engine_db_connections{state="in_use"}`)),
		poolIdle:   int(get(`bap_engine_db_connections{state="idle"}`)),
		poolMax:    int(get("bap_engine_db_max_connections")),
		cpu:        get("process_cpu_seconds_total"),
		gcs:        int(get("go_gc_duration_seconds_count")),
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		smp.clientCPU = time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		smp.load, _, _ = strings.Cut(string(b), " ")
	}
	if len(missing) > 0 {
		return sample{}, fmt.Errorf("scrape lacks %v", missing)
	}
	if s.pg != nil {
		s.pgMu.Lock()
		defer s.pgMu.Unlock()
		err := s.pg.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'`).Scan(&smp.pgConns)
		if err != nil {
			return sample{}, fmt.Errorf("count connections: %w", err)
		}
	}
	return smp, nil
}

// http5xx returns the orchestrator's bap_engine_http_requests_total of the
// status codes of 500 and above, by "code route".
func (s *sampler) http5xx(ctx context.Context) (map[string]float64, error) {
	m, err := s.scrape(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	code := regexp.MustCompile(`code="(5\d\d)"`)
	route := regexp.MustCompile(`route="([^"]*)"`)
	for series, v := range m {
		if strings.HasPrefix(series, "bap_engine_http_requests_total{") {
			if c := code.FindStringSubmatch(series); c != nil {
				out[c[1]+" "+route.FindStringSubmatch(series)[1]] += v
			}
		}
	}
	return out, nil
}

// admitHistogram returns the orchestrator's admit latency histogram
// (bap_engine_admit_duration_seconds, every series summed): cumulative
// counts by upper bound.
func (s *sampler) admitHistogram(ctx context.Context) (map[float64]float64, error) {
	m, err := s.scrape(ctx)
	if err != nil {
		return nil, err
	}
	le := regexp.MustCompile(`le="([^"]+)"`)
	out := map[float64]float64{}
	for series, v := range m {
		if !strings.HasPrefix(series, "bap_engine_admit_duration_seconds_bucket{") {
			continue
		}
		bound, err := strconv.ParseFloat(le.FindStringSubmatch(series)[1], 64)
		if err != nil {
			return nil, fmt.Errorf("bucket %s: %w", series, err)
		}
		out[bound] += v
	}
	return out, nil
}

// histogram is a latency histogram: counts by upper bound, cumulative.
type histogram map[float64]float64

// add adds the counts of b minus those of a (two scrapes of one histogram).
func (h histogram) add(a, b map[float64]float64) {
	for bound, n := range b {
		h[bound] += n - a[bound]
	}
}

// quantile returns the upper bound of the bucket that holds quantile q.
func (h histogram) quantile(q float64) float64 {
	bounds := slices.Sorted(maps.Keys(h))
	if len(bounds) == 0 {
		return 0
	}
	total := h[bounds[len(bounds)-1]]
	for _, b := range bounds {
		if h[b] >= q*total {
			return b
		}
	}
	return bounds[len(bounds)-1]
}

// TestSoakSamplerReadsServe checks, on every test run, what TestSoak reads
// of a real orchestrator: the scrape has every figure it samples.
func TestSoakSamplerReadsServe(t *testing.T) {
	env := baseEnv(t, pgtest.URL(t))
	o := startServe(t, env)
	s := &sampler{url: o.url, adminKey: env["ORCH_ADMIN_KEY"], hc: &http.Client{Timeout: 10 * time.Second}}
	smp, err := s.read(context.Background())
	require.NoError(t, err)
	require.Positive(t, smp.rss)
	require.Positive(t, smp.goroutines)
	require.Positive(t, smp.fds)
	require.Equal(t, 16, smp.poolMax, "the PostgreSQL pool's default size")
	require.Positive(t, smp.poolIdle+smp.poolInUse, "the registry has used the pool")
	_, err = s.http5xx(context.Background())
	require.NoError(t, err)
	prod, err := adminClient(o.url, env).RegisterProduct(context.Background(), client.ProductRequest{Slug: "acme", DisplayName: "Acme"})
	require.NoError(t, err)
	before, err := s.admitHistogram(context.Background())
	require.NoError(t, err)
	for range 3 {
		_, err := client.New(o.url, client.WithPlatformKey(prod.PlatformAPIKey)).Admit(context.Background(), "alice", client.AdmitOptions{})
		require.NoError(t, err)
	}
	after, err := s.admitHistogram(context.Background())
	require.NoError(t, err)
	h := histogram{}
	h.add(before, after)
	require.Equal(t, 3.0, h[math.Inf(1)], "three admits counted")
	require.Positive(t, h.quantile(.99))
}

// soakRun is the state of one TestSoak run shared by its workers.
type soakRun struct {
	t        *testing.T
	url      string
	addr     string
	adminKey string
	product  client.Product
	platform *client.Client
	admin    *client.Client
	// answered is how many bytes the stalled readers' 400 requests for
	// /openapi.json would get if the server never cut them off.
	answered int

	mu       sync.Mutex
	failures []string
	statuses map[string]int // "what status" → count
	holds    map[string][]time.Duration
	cutAfter []int64 // bytes a client that never read got before it was cut off
}

// fail records a failure of a worker; the test fails with all of them.
func (r *soakRun) fail(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.failures) < 50 {
		r.failures = append(r.failures, fmt.Sprintf(format, args...))
	}
}

func (r *soakRun) count(what string, status int) {
	r.mu.Lock()
	r.statuses[fmt.Sprintf("%s %d", what, status)]++
	r.mu.Unlock()
}

func (r *soakRun) hold(pattern string, d time.Duration) {
	r.mu.Lock()
	r.holds[pattern] = append(r.holds[pattern], d)
	r.mu.Unlock()
}

// documented5xx are the 5xx answers SPEC §2 documents: what the backend or
// the database may cause, never INTERNAL.
var documented5xx = map[string]bool{
	bap.CodePortExhaustion: true, bap.CodeBootTimeout: true, bap.CodeImageNotFound: true,
	bap.CodeBackendUnavailable: true, bap.CodeBackendError: true, bap.CodeDatabaseUnavailable: true,
}

// apiErr classifies a client error: a documented 5xx (say a boot timeout)
// is an answer the API may give; anything else fails the run.
func (r *soakRun) apiErr(what string, err error) {
	var ce *client.Error
	if errors.As(err, &ce) {
		r.count(what, ce.Status)
		if documented5xx[ce.Code] {
			return
		}
		r.fail("%s: %d %s: %s", what, ce.Status, ce.Code, ce.Message)
		return
	}
	r.fail("%s: %v", what, err)
}

// TestSoak runs a real orchestrator (serve, in its own process, on
// PostgreSQL, with the subprocess backend and the reference engine) under
// hours-able mixed load, and checks that nothing leaks and that hostile
// clients neither break nor starve it.
//
// Over soakEngines running engines it admits at a steady soakAdmitRate,
// provisions and destroys engines, changes the product's policy and reads
// the fleet, in slices of soakSlice; every other slice adds hostile
// clients: malformed, oversized and wrong-key requests, and soakStalled
// connections at a time that dribble or stop (headers, bodies, idle
// keep-alives, answers never read). Every soakSample it samples the
// orchestrator's RSS, goroutines, open fds and database connections (pool
// and server side). It asserts: no answer outside the documented ones (no
// 500, every 5xx a documented code), every stalled connection closed by
// the server within its limit, goroutines, fds and connections back to
// their baseline once the load stops, RSS under soakRSSBound. It reports
// the admit p99 of the clean and the hostile slices. BENCHMARKS.md has the
// figures.
//
//	BAP_SOAK=3m go test -count=1 -timeout 0 -run '^TestSoak$' -v ./cmd/bap-engine/
func TestSoak(t *testing.T) {
	dur := soakDuration(t)
	ctx := context.Background()

	dbURL := pgtest.URL(t)
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	q := u.Query()
	// Idle pool connections close after a few seconds (pgx keeps them 30
	// minutes by default), so the pool's size after the load shows whether
	// any connection is still held, not how large the pool once grew.
	q.Set("pool_max_conn_idle_time", "3s")
	q.Set("pool_health_check_period", "1s")
	u.RawQuery = q.Encode()
	env := baseEnv(t, u.String())
	// scripts/test.sh runs the soak beside the race suite, whose tests take
	// their ports from 10000 up: the soak's come from below.
	portMin, portMax := backendtest.PortRangeIn(t, soakEngines+100, 9000, 10000)
	env["ORCH_PORT_MIN"], env["ORCH_PORT_MAX"] = fmt.Sprint(portMin), fmt.Sprint(portMax)
	env["ORCH_HEALTH_CHECK_INTERVAL_S"] = "10"
	env["ORCH_HEALTH_CHECK_TIMEOUT_S"] = "5"
	env["ORCH_BOOT_TIMEOUT_S"] = "60"
	env["ORCH_HTTP_READ_TIMEOUT_S"] = fmt.Sprint(soakReadTimeout.Seconds())
	env["ORCH_HTTP_IDLE_TIMEOUT_S"] = fmt.Sprint(soakIdleTimeout.Seconds())
	orch := startChild(t, env)

	pg, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	t.Cleanup(func() { _ = pg.Close(context.Background()) })

	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr, Timeout: 2 * time.Minute}
	admin := client.New(orch.url, client.WithAdminKey(env["ORCH_ADMIN_KEY"]), client.WithHTTPClient(hc))
	prod, err := admin.RegisterProduct(ctx, client.ProductRequest{Slug: "soak", DisplayName: "Soak",
		Policy: client.Policy{"max_engines": soakEngines + 50}})
	require.NoError(t, err)
	r := &soakRun{
		t: t, url: orch.url, addr: strings.TrimPrefix(orch.url, "http://"), adminKey: env["ORCH_ADMIN_KEY"],
		product: prod, admin: admin,
		platform: client.New(orch.url, client.WithPlatformKey(prod.PlatformAPIKey), client.WithHTTPClient(hc)),
		statuses: map[string]int{}, holds: map[string][]time.Duration{},
	}
	smp := &sampler{url: orch.url, adminKey: r.adminKey, hc: &http.Client{Timeout: 30 * time.Second}, pg: pg}
	doc, err := admin.OpenAPI(ctx)
	require.NoError(t, err)
	docJSON, err := json.Marshal(doc)
	require.NoError(t, err)
	r.answered = stalledReads * len(docJSON) * 9 / 10 // compact JSON, a little shorter than served

	// The fleet.
	began := time.Now()
	users := make([]string, soakEngines)
	var g errgroup.Group
	g.SetLimit(8)
	for i := range users {
		users[i] = fmt.Sprintf("user-%03d", i)
		g.Go(func() error {
			_, err := r.platform.Provision(ctx, client.ProvisionRequest{UserID: users[i]})
			return err
		})
	}
	require.NoError(t, g.Wait())
	t.Logf("provisioned %d engines in %s", soakEngines, time.Since(began).Round(time.Second))

	// Baseline: the fleet running, every engine probed, no load.
	var samples []sample
	loadStart := time.Now().Add(soakSample + soakSample*2)
	takeSample := func(phase string) sample {
		t.Helper()
		s, err := smp.read(ctx)
		require.NoError(t, err)
		s.at, s.phase = time.Since(loadStart).Round(time.Second), phase
		samples = append(samples, s)
		return s
	}
	time.Sleep(soakSample) // every engine probed once
	for i := range 3 {
		if i > 0 {
			time.Sleep(soakSample)
		}
		takeSample("baseline")
	}
	low, base := fold(samples, math.Min), fold(samples, math.Max)

	// The load, in alternating slices; ordinary traffic throughout.
	conns, err := loadtest.DialConns(r.addr, soakAdmitConns)
	require.NoError(t, err)
	admits := make([][]byte, soakEngines)
	for i, u := range users {
		admits[i] = loadtest.Request(http.MethodPost, r.addr, "/engines/"+u+"/admit", nil, api.HeaderPlatformKey, prod.PlatformAPIKey)
	}
	admit := func(_ context.Context, rng *rand.Rand) error {
		return conns.Do(admits[rng.IntN(len(admits))], 30*time.Second, func(status int, body []byte) error {
			if status != http.StatusOK || !bytes.Contains(body, []byte(`"admitted":true`)) {
				return fmt.Errorf("admit: %d %s", status, body)
			}
			return nil
		})
	}
	loadCtx, stopLoad := context.WithCancel(ctx)
	var ordinary sync.WaitGroup
	ordinary.Go(func() { r.churn(loadCtx) })
	ordinary.Go(func() { r.policies(loadCtx) })
	ordinary.Go(func() { r.reads(loadCtx) })

	loadStart = time.Now()
	var phaseName atomic.Value
	phaseName.Store("clean")
	sampling, stopSampling := context.WithCancel(ctx)
	var sampled sync.WaitGroup
	var sampleMu sync.Mutex
	sampled.Go(func() {
		tick := time.NewTicker(soakSample)
		defer tick.Stop()
		for {
			select {
			case <-sampling.Done():
				return
			case <-tick.C:
			}
			s, err := smp.read(sampling)
			if err != nil {
				if sampling.Err() == nil {
					r.fail("sample: %v", err)
				}
				continue
			}
			s.at, s.phase = time.Since(loadStart).Round(time.Second), phaseName.Load().(string)
			sampleMu.Lock()
			samples = append(samples, s)
			sampleMu.Unlock()
		}
	})

	var clean, hostile []loadtest.Result
	serverClean, serverHostile := histogram{}, histogram{}
	for n := 0; time.Since(loadStart) < dur; n++ {
		slice := min(soakSlice, dur-time.Since(loadStart))
		hBefore, err := smp.admitHistogram(ctx)
		require.NoError(t, err)
		if n%2 == 0 {
			phaseName.Store("clean")
			clean = append(clean, loadtest.Run(ctx, loadtest.Config{Clients: soakAdmitConns, Duration: slice, Rate: soakAdmitRate}, admit))
			hAfter, err := smp.admitHistogram(ctx)
			require.NoError(t, err)
			serverClean.add(hBefore, hAfter)
			continue
		}
		phaseName.Store("hostile")
		hctx, stopHostile := context.WithCancel(ctx)
		var hostiles sync.WaitGroup
		for i := range soakStalled {
			hostiles.Go(func() { r.stall(hctx, i) })
		}
		for range soakBadWorkers {
			hostiles.Go(func() { r.malformed(hctx) })
		}
		hostile = append(hostile, loadtest.Run(ctx, loadtest.Config{Clients: soakAdmitConns, Duration: slice, Rate: soakAdmitRate}, admit))
		hAfter, err := smp.admitHistogram(ctx)
		require.NoError(t, err)
		serverHostile.add(hBefore, hAfter)
		stopHostile()
		hostiles.Wait()
	}
	stopLoad()
	ordinary.Wait()
	conns.Close()
	tr.CloseIdleConnections()
	loadEnd := time.Since(loadStart)
	phaseName.Store("after")

	// Back to the baseline once the load has stopped.
	var end sample
	settled := false
	for deadline := time.Now().Add(soakSettle); time.Now().Before(deadline); time.Sleep(2 * time.Second) {
		end, err = smp.read(ctx)
		require.NoError(t, err)
		if end.goroutines <= base.goroutines+soakGoroutineSlack && end.fds <= base.fds+soakFDSlack &&
			end.poolInUse <= base.poolInUse+soakConnSlack && end.poolInUse+end.poolIdle <= base.poolInUse+base.poolIdle+soakConnSlack &&
			end.pgConns <= base.pgConns+soakConnSlack {
			settled = true
			break
		}
	}
	stopSampling()
	sampled.Wait()
	sampleMu.Lock()
	defer sampleMu.Unlock()
	end.at, end.phase = time.Since(loadStart).Round(time.Second), "end"
	samples = append(samples, end)
	fiveXX, err := smp.http5xx(ctx)
	require.NoError(t, err)

	r.report(samples, low, base, end, clean, hostile, loadEnd, fiveXX)
	t.Logf("admit latency inside the orchestrator (its histogram; a bucket's upper bound):\n"+
		"  clean:   %.0f admits, p50 <= %gs, p99 <= %gs\n  hostile: %.0f admits, p50 <= %gs, p99 <= %gs",
		serverClean[math.Inf(1)], serverClean.quantile(.5), serverClean.quantile(.99),
		serverHostile[math.Inf(1)], serverHostile.quantile(.5), serverHostile.quantile(.99))

	// Nothing left behind: every engine destroyed, the orchestrator ends
	// gracefully.
	began = time.Now()
	list, err := r.platform.List(ctx, client.ListOptions{Limit: 1000})
	require.NoError(t, err)
	g = errgroup.Group{}
	g.SetLimit(8)
	for _, e := range list.Engines {
		g.Go(func() error {
			_, err := r.platform.Destroy(ctx, e.UserID)
			return err
		})
	}
	require.NoError(t, g.Wait())
	t.Logf("destroyed %d engines in %s", len(list.Engines), time.Since(began).Round(time.Second))
	require.Empty(t, engineDirs(t, env), "every engine's data is gone")
	require.NoError(t, orch.cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, orch.cmd.Wait(), "the orchestrator ends gracefully")

	// The verdict.
	require.Empty(t, r.failures, "answers outside the documented ones, or connections held past their limit")
	for codeRoute := range fiveXX {
		require.False(t, strings.HasPrefix(codeRoute, "500 "), "the orchestrator answered 500: %v", fiveXX)
	}
	for _, res := range append(slices.Clone(clean), hostile...) {
		require.Zero(t, res.Errors, "an ordinary admit failed: %v", res.FirstErr)
	}
	require.True(t, settled, "goroutines, fds or database connections did not return to the baseline within %s: baseline %v, end %v",
		soakSettle, base, end)
	for _, s := range samples {
		require.Less(t, s.rss, float64(soakRSSBound), "RSS over the bound at %v", s)
	}
}

// report logs the samples and the figures BENCHMARKS.md quotes.
func (r *soakRun) report(samples []sample, low, base, end sample, clean, hostile []loadtest.Result, load time.Duration, fiveXX map[string]float64) {
	t := r.t
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "at\tphase\tRSS\tgoroutines\tfds\tpool in use/idle\tPostgreSQL conns\tCPU\tGCs\tclients' CPU\tload")
	slices.SortStableFunc(samples, func(a, b sample) int { return int(a.at - b.at) })
	for _, s := range samples {
		fmt.Fprintln(w, s)
	}
	_ = w.Flush()
	t.Logf("samples (every %s; load %s; admits %d/s over %d engines):\n%s", soakSample, load.Round(time.Second), soakAdmitRate, soakEngines, b.String())

	b.Reset()
	w = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	peak := slices.MaxFunc(samples, func(a, b sample) int { return int(a.rss - b.rss) })
	fmt.Fprintln(w, "\tbaseline (min-max)\tend\tpeak")
	fmt.Fprintf(w, "RSS\t%.1f-%.1f MiB\t%.1f MiB\t%.1f MiB (bound %d MiB)\n", low.rss/(1<<20), base.rss/(1<<20), end.rss/(1<<20), peak.rss/(1<<20), soakRSSBound>>20)
	fmt.Fprintf(w, "goroutines\t%d-%d\t%d\t%d\n", low.goroutines, base.goroutines, end.goroutines,
		slices.MaxFunc(samples, func(a, b sample) int { return a.goroutines - b.goroutines }).goroutines)
	fmt.Fprintf(w, "open fds\t%d-%d\t%d\t%d\n", low.fds, base.fds, end.fds,
		slices.MaxFunc(samples, func(a, b sample) int { return a.fds - b.fds }).fds)
	fmt.Fprintf(w, "pool in use/idle\t%d-%d/%d-%d\t%d/%d\t\n", low.poolInUse, base.poolInUse, low.poolIdle, base.poolIdle, end.poolInUse, end.poolIdle)
	fmt.Fprintf(w, "PostgreSQL conns\t%d-%d\t%d\t%d\n", low.pgConns, base.pgConns, end.pgConns,
		slices.MaxFunc(samples, func(a, b sample) int { return a.pgConns - b.pgConns }).pgConns)
	_ = w.Flush()
	t.Logf("resources:\n%s", b.String())

	for i := range max(len(clean), len(hostile)) {
		for _, k := range []struct {
			name string
			rs   []loadtest.Result
		}{{"clean", clean}, {"hostile", hostile}} {
			if i < len(k.rs) {
				t.Logf("slice %d %s: p50 %s p99 %s max %s", i, k.name, k.rs[i].Quantile(.5), k.rs[i].Quantile(.99), k.rs[i].Quantile(1))
			}
		}
	}
	c, h := loadtest.Merge(clean...), loadtest.Merge(hostile...)
	t.Logf("admit latency (paced %d/s):\n  clean:   %d admits, p50 %s, p99 %s, max %s\n  hostile: %d admits, p50 %s, p99 %s, max %s",
		soakAdmitRate, c.Requests, c.Quantile(.5), c.Quantile(.99), c.Quantile(1), h.Requests, h.Quantile(.5), h.Quantile(.99), h.Quantile(1))

	r.mu.Lock()
	defer r.mu.Unlock()
	keys := make([]string, 0, len(r.statuses))
	for k := range r.statuses {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b.Reset()
	for _, k := range keys {
		fmt.Fprintf(&b, "  %s: %d\n", k, r.statuses[k])
	}
	t.Logf("answers seen:\n%s", b.String())
	b.Reset()
	for _, p := range slices.Sorted(maps.Keys(r.holds)) {
		hs := slices.Sorted(slices.Values(r.holds[p]))
		if p == "request abandoned" {
			fmt.Fprintf(&b, "  %s: %d sent and left\n", p, len(hs))
			continue
		}
		fmt.Fprintf(&b, "  %s: %d closed by the server, held %s to %s\n", p, len(hs), hs[0].Round(100*time.Millisecond), hs[len(hs)-1].Round(100*time.Millisecond))
	}
	if len(r.cutAfter) > 0 {
		slices.Sort(r.cutAfter)
		fmt.Fprintf(&b, "  answers never read: %d cut off after %.1f to %.1f MB delivered (%.1f MB asked for)\n", len(r.cutAfter),
			float64(r.cutAfter[0])/1e6, float64(r.cutAfter[len(r.cutAfter)-1])/1e6, float64(r.answered)/0.9/1e6)
	}
	t.Logf("stalled connections:\n%s", b.String())
	t.Logf("5xx answers by code (server counters): %v", fiveXX)
}

// churn provisions a new engine, reads it and destroys it, again and again.
func (r *soakRun) churn(stop context.Context) {
	ctx := context.WithoutCancel(stop) // an ordinary client never abandons a request
	for n := 0; stop.Err() == nil; n++ {
		user := fmt.Sprintf("churn-%d", n)
		if _, err := r.platform.Provision(ctx, client.ProvisionRequest{UserID: user}); err != nil {
			r.apiErr("provision", err)
		} else {
			r.count("provision", http.StatusOK)
			if _, err := r.platform.Get(ctx, user); err != nil {
				r.apiErr("get", err)
			}
		}
		// Destroy even when the provision failed.
		if _, err := r.platform.Destroy(ctx, user); err != nil && client.ErrorCode(err) != bap.CodeEngineNotFound {
			r.apiErr("destroy", err)
		} else {
			r.count("destroy", http.StatusOK)
		}
		loop.Sleep(stop, soakChurnPause)
	}
}

// policies changes the product's policy back and forth; neither limits the
// soak's admits.
func (r *soakRun) policies(stop context.Context) {
	ctx := context.WithoutCancel(stop)
	pols := []client.Policy{
		{"max_engines": soakEngines + 50, "rate_limit_rpm": 1_000_000},
		{"max_engines": soakEngines + 60, "tier": "soak"},
	}
	for n := 0; loop.Sleep(stop, soakPolicyTick); n++ {
		if _, err := r.admin.UpdatePolicy(ctx, r.product.ProductID, pols[n%2]); err != nil {
			r.apiErr("policy", err)
			continue
		}
		r.count("policy", http.StatusOK)
	}
}

// reads reads the fleet's status and a page of its engines.
func (r *soakRun) reads(stop context.Context) {
	ctx := context.WithoutCancel(stop)
	for loop.Sleep(stop, soakReadTick) {
		if _, err := r.platform.Status(ctx); err != nil {
			r.apiErr("status", err)
		}
		if _, err := r.platform.List(ctx, client.ListOptions{Limit: 100, Offset: rand.IntN(soakEngines)}); err != nil {
			r.apiErr("list", err)
		}
	}
}

// badRequest is a request the orchestrator must refuse, and how.
type badRequest struct {
	name   string
	raw    func(r *soakRun) []byte
	status int
	code   string // the envelope's code; "" for net/http's own answers
}

func soakRequest(r *soakRun, method, path, body string, headers ...string) []byte {
	return loadtest.Request(method, r.addr, path, []byte(body), headers...)
}

var badRequests = []badRequest{
	{"malformed JSON", func(r *soakRun) []byte {
		return soakRequest(r, "POST", "/engines/user-001/admit", `{"auto_provision":`, api.HeaderPlatformKey, r.product.PlatformAPIKey)
	}, 422, bap.CodeValidation},
	{"invalid user_id", func(r *soakRun) []byte {
		return soakRequest(r, "POST", "/engines/provision", `{"user_id":"../../etc"}`, api.HeaderPlatformKey, r.product.PlatformAPIKey)
	}, 422, bap.CodeValidation},
	{"invalid user_id in path", func(r *soakRun) []byte {
		return soakRequest(r, "GET", "/engines/bad%20id", "", api.HeaderPlatformKey, r.product.PlatformAPIKey)
	}, 422, bap.CodeValidation},
	{"wrong policy type", func(r *soakRun) []byte {
		return soakRequest(r, "PUT", "/products/"+r.product.ProductID+"/policy", `{"policy":{"max_engines":"many"}}`, api.HeaderAdminKey, r.adminKey)
	}, 422, bap.CodeValidation},
	{"oversized body", func(r *soakRun) []byte {
		return soakRequest(r, "POST", "/engines/provision", `{"user_id":"x","pad":"`+strings.Repeat("x", 1<<20)+`"}`,
			api.HeaderPlatformKey, r.product.PlatformAPIKey)
	}, 413, bap.CodePayloadTooLarge},
	{"oversized headers", func(r *soakRun) []byte {
		return soakRequest(r, "GET", "/health", "", "X-Pad", strings.Repeat("p", 70<<10))
	}, 431, ""},
	{"garbage", func(*soakRun) []byte { return []byte("HELLO THERE\r\n\r\n") }, 400, ""},
	{"unknown route", func(r *soakRun) []byte { return soakRequest(r, "GET", "/wp-admin.php", "") }, 404, bap.CodeNotFound},
	{"wrong method", func(r *soakRun) []byte { return soakRequest(r, "PATCH", "/engines/provision", "") }, 405, bap.CodeMethodNotAllowed},
	{"wrong platform key", func(r *soakRun) []byte {
		return soakRequest(r, "POST", "/engines/user-002/admit", "", api.HeaderPlatformKey, "pk-sept-"+strings.Repeat("A", 43))
	}, 401, bap.CodeInvalidPlatformKey},
	{"no platform key", func(r *soakRun) []byte { return soakRequest(r, "GET", "/status", "") }, 401, bap.CodeInvalidPlatformKey},
	{"wrong admin key", func(r *soakRun) []byte {
		return soakRequest(r, "POST", "/products/register", `{"slug":"evil","display_name":"Evil"}`, api.HeaderAdminKey, "guess")
	}, 401, bap.CodeInvalidAdminKey},
	{"wrong metrics key", func(r *soakRun) []byte {
		return soakRequest(r, "GET", "/metrics/prometheus", "", api.HeaderAdminKey, "guess")
	}, 401, bap.CodeInvalidAdminKey},
}

// malformed sends bad requests, each on a new connection, until ctx ends,
// and checks each answer.
func (r *soakRun) malformed(ctx context.Context) {
	reqs := make([][]byte, len(badRequests))
	for i, br := range badRequests {
		reqs[i] = br.raw(r)
	}
	for n := rand.IntN(len(reqs)); loop.Sleep(ctx, soakBadPause); n++ {
		br := badRequests[n%len(reqs)]
		status, code, err := sendRaw(r.addr, reqs[n%len(reqs)])
		if err != nil {
			r.fail("%s: %v", br.name, err)
			continue
		}
		r.count(br.name, status)
		if status != br.status || code != br.code {
			r.fail("%s: answered %d %q, want %d %q", br.name, status, code, br.status, br.code)
		}
	}
}

// sendRaw sends req on a new connection and returns the answer's status
// and, for the API's own answers, its envelope's code (which it checks).
func sendRaw(addr string, req []byte) (int, string, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return 0, "", err
	}
	// Written concurrently: the server may answer (413, 431) before it has
	// read all of it.
	go func() { _, _ = c.Write(req) }()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, "", fmt.Errorf("read answer: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		return 0, "", fmt.Errorf("read body: %w", err)
	}
	if resp.Header.Get(api.HeaderRequestID) == "" {
		return resp.StatusCode, "", nil // net/http's own answer, before any route
	}
	var env struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if err := json.Unmarshal(body, &env); err != nil || env.Error.Code == "" || env.Error.Message == "" {
		return 0, "", fmt.Errorf("%d without the error envelope: %.200s", resp.StatusCode, body)
	}
	return resp.StatusCode, env.Error.Code, nil
}

// stalledReads is how many answers a client that never reads asks for: far
// more than the kernel's buffers hold.
const stalledReads = 400

// Ways of stalling a connection, and the limit that must end each.
var stallPatterns = []struct {
	name  string
	limit time.Duration
}{
	{"silent after connecting", soakReadTimeout},
	{"headers dribbled", soakReadTimeout},
	{"body stopped", soakReadTimeout},
	{"body dribbled", soakReadTimeout},
	{"idle keep-alive", soakIdleTimeout},
	{"answers never read", soakReadTimeout},
	{"request abandoned", 0},
}

// stall holds one slow or stalled connection after another until ctx
// ends, each of the next pattern, and checks the server closes it within
// its limit (plus a margin for a loaded machine).
func (r *soakRun) stall(ctx context.Context, slot int) {
	const margin = 20 * time.Second
	for n := slot; ctx.Err() == nil; n++ {
		p := stallPatterns[n%len(stallPatterns)]
		c, err := net.DialTimeout("tcp", r.addr, 10*time.Second)
		if err != nil {
			r.fail("stall %s: dial: %v", p.name, err)
			loop.Sleep(ctx, time.Second)
			continue
		}
		began := time.Now()
		type end struct {
			read int64
			err  error
		}
		closed := make(chan end, 1)
		// The server's close is seen by reading; "answers never read"
		// reads only once its limit has long passed.
		watch := func() {
			_ = c.SetReadDeadline(time.Now().Add(p.limit + margin))
			n, err := io.Copy(io.Discard, c)
			closed <- end{n, err}
		}
		write := func(s string) { _ = c.SetWriteDeadline(time.Now().Add(10 * time.Second)); _, _ = io.WriteString(c, s) }
		dribble := func(s string) {
			for i := 0; i < len(s) && loop.Sleep(ctx, 500*time.Millisecond); i++ {
				if c.SetWriteDeadline(time.Now().Add(10*time.Second)) != nil {
					return
				}
				if _, err := c.Write([]byte{s[i]}); err != nil {
					return
				}
			}
		}
		key := api.HeaderPlatformKey + ": " + r.product.PlatformAPIKey + "\r\n"
		switch p.name {
		case "silent after connecting":
			go watch()
		case "headers dribbled":
			go watch()
			go dribble("GET /status HTTP/1.1\r\nHost: soak\r\n" + key + strings.Repeat("X-Slow: 1\r\n", 10) + "\r\n")
		case "body stopped":
			write("POST /engines/user-003/admit HTTP/1.1\r\nHost: soak\r\n" + key + "Content-Length: 100\r\n\r\n{\"auto_")
			go watch()
		case "body dribbled":
			write("POST /engines/user-004/admit HTTP/1.1\r\nHost: soak\r\n" + key + "Content-Length: 100\r\n\r\n")
			go watch()
			go dribble(strings.Repeat(" ", 100))
		case "idle keep-alive":
			write("GET /health HTTP/1.1\r\nHost: soak\r\n\r\n")
			go watch()
		case "request abandoned":
			// An admit, and gone before the answer.
			write("POST /engines/user-005/admit HTTP/1.1\r\nHost: soak\r\n" + key + "Content-Length: 0\r\n\r\n")
			_ = c.Close()
			r.hold(p.name, time.Since(began))
			continue
		case "answers never read":
			write(strings.Repeat("GET /openapi.json HTTP/1.1\r\nHost: soak\r\n\r\n", stalledReads))
			go func() {
				if loop.Sleep(ctx, p.limit+margin/2) {
					watch()
				} else {
					closed <- end{err: ctx.Err()}
				}
			}()
		}
		select {
		case e := <-closed:
			var ne net.Error
			switch {
			case ctx.Err() != nil:
			case errors.As(e.err, &ne) && ne.Timeout():
				r.fail("stall %s: still open after %s", p.name, time.Since(began).Round(time.Second))
			case p.name == "answers never read" && e.read >= int64(r.answered):
				// Read at last, every answer arrived: the server waited.
				r.fail("stall %s: not cut off (%d bytes delivered)", p.name, e.read)
			case p.name == "answers never read":
				r.mu.Lock()
				r.cutAfter = append(r.cutAfter, e.read)
				r.mu.Unlock()
			default:
				r.hold(p.name, time.Since(began))
			}
		case <-ctx.Done():
		}
		_ = c.Close()
	}
}
