package loadtest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/discovery"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/loadtest"
	"github.com/september/bap-engine/internal/metrics"
	"github.com/september/bap-engine/internal/pgtest"
	"github.com/september/bap-engine/internal/policy"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/postgres"
	"github.com/september/bap-engine/internal/registry/registrytest"
	"github.com/september/bap-engine/internal/registry/sqlite"
	"github.com/september/bap-engine/internal/secret"
	"github.com/september/bap-engine/internal/testmain"
)

func TestMain(m *testing.M) {
	os.Exit(testmain.Run(m, testmain.Goroutines(testmain.IdleHTTP()...)))
}

// Environment of the full run.
const (
	envFull     = "BAP_LOADTEST"
	envDuration = "BAP_LOADTEST_DURATION"
	envClients  = "BAP_LOADTEST_CLIENTS"
	envEngines  = "BAP_LOADTEST_ENGINES"
	envPace     = "BAP_LOADTEST_PACE"
)

// Targets of the full run (reported, never asserted: tests do not time).
const (
	targetRatio = 0.5
	targetP99   = 5 * time.Millisecond
)

// params shape one run.
type params struct {
	full     bool
	clients  int
	duration time.Duration
	warmup   time.Duration
	engines  int
	// pace is the total request rate of the paced admit run; 0 means half
	// the closed-loop admit rate just measured.
	pace float64
}

// loadParams reads the run's shape: a short smoke run unless
// BAP_LOADTEST=1, which measures for real and reads the tuning variables.
func loadParams(t *testing.T) params {
	t.Helper()
	if os.Getenv(envFull) != "1" {
		return params{clients: 4, duration: time.Second, warmup: 200 * time.Millisecond, engines: 20}
	}
	p := params{full: true, clients: 32, duration: 10 * time.Second, engines: 1000}
	if v := os.Getenv(envDuration); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("%s=%q: want a positive Go duration such as 10s", envDuration, v)
		}
		p.duration = d
	}
	for _, iv := range []struct {
		name string
		dst  *int
		max  int
	}{{envClients, &p.clients, 1024}, {envEngines, &p.engines, 4000}} {
		v := os.Getenv(iv.name)
		if v == "" {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > iv.max {
			t.Fatalf("%s=%q: want an integer from 1 to %d", iv.name, v, iv.max)
		}
		*iv.dst = n
	}
	if v := os.Getenv(envPace); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f <= 0 || f > 1e6 {
			t.Fatalf("%s=%q: want requests per second, above 0 and at most 1e6", envPace, v)
		}
		p.pace = f
	}
	// Long enough to open every connection and decrypt every engine key
	// once (discovery caches them), short beside the measurement.
	p.warmup = min(time.Second, p.duration/5)
	return p
}

// Names of the measurements, as the report shows them.
const (
	whatAdmit        = "admit over HTTP"
	whatAdmitNoCache = "admit, no engine cache"
	whatAdmitNetHTTP = "admit, net/http client"
	whatAdmitPaced   = "admit over HTTP, paced"
	whatLookup       = "AdmitLookup, no HTTP"
	whatFloor        = "HTTP floor, no work"
	whatPointSelect  = "point-select (pgx)"
)

// row is one line of the report.
type row struct {
	store, what string
	r           loadtest.Result
	cpu         cpuUse
}

// TestAdmitThroughput measures admits of running engines through the real
// HTTP API over PostgreSQL (as serve runs it, engine cache on), interleaved
// with the same admits without the engine cache, the same admits sent by
// net/http's client, discovery's query alone (no HTTP), a bare HTTP server
// and bare point-selects at the same client count; then admits paced
// below saturation (for the latency a product sees at ordinary load), and
// admits over SQLite. Without BAP_LOADTEST=1 it is a smoke run that checks
// every request succeeds.
func TestAdmitThroughput(t *testing.T) {
	p := loadParams(t)
	mode := "smoke run (set BAP_LOADTEST=1 for the measurement)"
	if p.full {
		mode = "full run"
	}
	t.Logf("%s: %d clients, %s per measurement after %s warm-up, %d running engines, GOMAXPROCS=%d, NumCPU=%d, load average %s",
		mode, p.clients, p.duration, p.warmup, p.engines, runtime.GOMAXPROCS(0), runtime.NumCPU(), loadAverage())

	var rows []row
	t.Run("postgres", func(t *testing.T) {
		url := pgtest.URL(t)
		store, err := postgres.Open(t.Context(), url)
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, store.Close()) })
		cfg, err := pgxpool.ParseConfig(url)
		require.NoError(t, err)
		port := int(cfg.ConnConfig.Port)
		h := newHarness(t, store, p)
		body := h.checkAdmit(t)
		closed := measureInterleaved(t, p,
			measurement{store: "postgres", what: whatAdmit, part: "admit-client", pgPort: port, op: h.admitOp},
			measurement{store: "postgres", what: whatAdmitNoCache, part: "admit-client", pgPort: port, op: h.admitNoCacheOp},
			measurement{store: "postgres", what: whatAdmitNetHTTP, part: "admit-client", pgPort: port, op: h.admitNetHTTPOp},
			measurement{store: "-", what: whatFloor, part: "floor-client", op: floorOp(t, p.clients, body)},
			measurement{store: "postgres", what: whatLookup, part: "lookup-client", pgPort: port, op: h.lookupOp},
			measurement{store: "postgres", what: whatPointSelect, part: "select-client", pgPort: port,
				op: pointSelectOp(t, cfg, h.engineIDs, p.clients)})
		pace := p.pace
		if pace == 0 {
			pace = closed[0].r.Throughput() / 2
		}
		paced := measure(t, p, measurement{store: "postgres", what: whatAdmitPaced, part: "admit-client",
			rate: pace, pgPort: port, op: h.admitOp})
		rows = append(rows, closed...)
		rows = append(rows, paced)
		h.requireTouched(t)
	})
	t.Run("sqlite", func(t *testing.T) {
		store, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "registry.db"))
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, store.Close()) })
		h := newHarness(t, store, p)
		_ = h.checkAdmit(t)
		rows = append(rows, measureInterleaved(t, p,
			measurement{store: "sqlite", what: whatAdmit, part: "admit-client", op: h.admitOp})...)
		h.requireTouched(t)
	})
	t.Logf("results (load average now %s):\n%s", loadAverage(), report(rows, p))
}

// measurement is one line of the report to measure.
type measurement struct {
	store, what string
	// part labels the clients' goroutines in CPU profiles.
	part string
	// rate paces the clients (0: closed loop).
	rate float64
	// pgPort is the port of the PostgreSQL server whose CPU time is
	// counted (0: none).
	pgPort int
	op     loadtest.Op
}

// sliceLen is the length of one slice of an interleaved measurement.
const sliceLen = 2 * time.Second

// measureInterleaved warms each closed-loop measurement up, then measures
// them in turns of sliceLen until each had p.duration, so that a change in
// the machine's background load (other test runs) affects them alike. It
// requires every request to succeed.
func measureInterleaved(t *testing.T, p params, ms ...measurement) []row {
	t.Helper()
	for _, m := range ms {
		warm, _ := runSlice(t, p, m, p.warmup)
		requireClean(t, m.what+" warm-up", warm)
	}
	rounds := max(1, int(p.duration/sliceLen))
	results := make([][]loadtest.Result, len(ms))
	cpus := make([]cpuUse, len(ms))
	for round := range rounds {
		d := p.duration / time.Duration(rounds)
		if round == rounds-1 {
			d = p.duration - d*time.Duration(rounds-1)
		}
		for i, m := range ms {
			r, cpu := runSlice(t, p, m, d)
			results[i] = append(results[i], r)
			cpus[i] = cpus[i].add(cpu)
		}
	}
	rows := make([]row, len(ms))
	for i, m := range ms {
		r := loadtest.Merge(results[i]...)
		requireClean(t, m.what, r)
		rows[i] = row{store: m.store, what: m.what, r: r, cpu: cpus[i]}
	}
	return rows
}

// measure runs m for p.duration in one piece (no warm-up) and requires
// every request to succeed.
func measure(t *testing.T, p params, m measurement) row {
	t.Helper()
	r, cpu := runSlice(t, p, m, p.duration)
	requireClean(t, m.what, r)
	return row{store: m.store, what: m.what, r: r, cpu: cpu}
}

// runSlice runs m for d with p.clients clients. The clients (and the HTTP
// transport goroutines they start) carry the profile label part=m.part.
func runSlice(t *testing.T, p params, m measurement, d time.Duration) (loadtest.Result, cpuUse) {
	t.Helper()
	var r loadtest.Result
	var cpu cpuUse
	pprof.Do(t.Context(), pprof.Labels("part", m.part), func(ctx context.Context) {
		before := sampleCPU(t, m.pgPort)
		r = loadtest.Run(ctx, loadtest.Config{Clients: p.clients, Duration: d, Rate: m.rate}, m.op)
		cpu = sampleCPU(t, m.pgPort).since(before)
	})
	return r, cpu
}

// harness is the orchestrator's HTTP API over one store, with a product
// whose users all have running engines.
type harness struct {
	base         string
	client       *http.Client
	conns        *loadtest.Conns
	connsNoCache *loadtest.Conns
	// reqs are the prepared admit requests, one per user.
	reqs        [][]byte
	store       registry.Store
	platformKey string
	keyHash     string
	users       []string
	engineIDs   []string
	engineKeys  []string
	stopLoop    func()
}

// newHarness registers a product without a rate limit, inserts p.engines
// running engines with real sealed keys, and serves the API on a loopback
// listener as the composition root wires it (metrics on, JSON access log at
// info level into io.Discard, discovery's background writer running).
func newHarness(t *testing.T, store registry.Store, p params) *harness {
	t.Helper()
	ctx := t.Context()
	masterKey, err := secret.NewFernetKey()
	require.NoError(t, err)
	sealer, err := secret.NewSealer(masterKey)
	require.NoError(t, err)
	platformKey, err := secret.NewPlatformKey()
	require.NoError(t, err)
	adminKey, err := secret.NewPlatformKey()
	require.NoError(t, err)

	prod := registrytest.NewProduct(t, store, func(pr *bap.Product) { pr.APIKeyHash = secret.Hash(platformKey) })
	require.Nil(t, prod.Policy.RateLimitRPM, "the product must have no rate limit")
	h := &harness{store: store, platformKey: platformKey, keyHash: secret.Hash(platformKey)}
	for i := range p.engines {
		user := fmt.Sprintf("user-%05d", i)
		key, err := secret.NewEngineKey()
		require.NoError(t, err)
		tok, err := sealer.Seal(key)
		require.NoError(t, err)
		e := registrytest.NewEngine(t, store, prod.ID, user, registrytest.WithStatus(bap.StateRunning),
			func(e *bap.Engine) { e.KeyEnc, e.KeyHash = tok, secret.Hash(key) })
		h.users = append(h.users, user)
		h.engineIDs = append(h.engineIDs, e.ID)
		h.engineKeys = append(h.engineKeys, key)
	}

	logger := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	fake := backendtest.NewFake()
	t.Cleanup(fake.Close)
	met := metrics.New(metrics.Config{
		Logger: logger,
		Slug: func(ctx context.Context, productID string) (string, error) {
			pr, err := store.GetProduct(ctx, productID)
			return pr.Slug, err
		},
	})
	lm := lifecycle.New(store, fake, sealer, lifecycle.Config{Logger: logger, Observer: met})

	// Two servers on the same store: as serve configures it (engine cache
	// on), and with ORCH_ADMIT_CACHE_S=0 (every admit reads the database).
	var loops []func()
	serveAPI := func(engineTTL time.Duration, part string) string {
		disc := discovery.New(store, lm, policy.NewLimiter(time.Now), discovery.Config{Logger: logger, EngineTTL: engineTTL})
		loopCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		loopDone := make(chan error, 1)
		go pprof.Do(loopCtx, pprof.Labels("part", "touch-writer"), func(ctx context.Context) {
			loopDone <- disc.Run(ctx)
		})
		var once sync.Once
		stop := func() {
			once.Do(func() {
				cancel()
				require.NoError(t, <-loopDone)
			})
		}
		loops = append(loops, stop)
		t.Cleanup(stop)
		if engineTTL > 0 {
			require.Eventually(t, disc.EngineCacheLive, 10*time.Second, 5*time.Millisecond, "the engine cache never came on")
		}

		// The limits serve sets by default (ORCH_HTTP_*_S), with the
		// per-answer write window that costs a little per request.
		srv := &http.Server{
			Handler: api.New(api.Deps{
				Store: store, Lifecycle: lm, Discovery: disc, Metrics: met,
				AdminKey: adminKey, Logger: logger, WriteTimeout: 30 * time.Second,
			}),
			ReadTimeout:    30 * time.Second,
			IdleTimeout:    120 * time.Second,
			MaxHeaderBytes: 60 << 10,
			ErrorLog:       log.New(io.Discard, "", 0),
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		served := make(chan error, 1)
		// Profile labels (go test -cpuprofile, then pprof -tagfocus part=...)
		// separate the server's goroutines from the load generator's; the
		// connection goroutines inherit the label of the one that serves.
		go pprof.Do(context.Background(), pprof.Labels("part", part), func(context.Context) {
			served <- srv.Serve(ln)
		})
		t.Cleanup(func() {
			sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer scancel()
			require.NoError(t, srv.Shutdown(sctx))
			require.ErrorIs(t, <-served, http.ErrServerClosed)
		})
		return ln.Addr().String()
	}
	h.stopLoop = func() {
		for _, stop := range loops {
			stop()
		}
	}
	addr := serveAPI(0, "http-server")
	h.base = "http://" + addr
	h.conns = dialConns(t, addr, p.clients)
	h.connsNoCache = dialConns(t, serveAPI(-1, "no-cache-server"), p.clients)
	for _, u := range h.users {
		h.reqs = append(h.reqs, loadtest.Request(http.MethodPost, addr, "/engines/"+u+"/admit", []byte("{}"),
			api.HeaderPlatformKey, platformKey, "Content-Type", "application/json"))
	}

	client, closeIdle := newClient(p.clients)
	h.client = client
	t.Cleanup(closeIdle)
	return h
}

// dialConns opens n load connections to addr, closed when the test ends.
func dialConns(t *testing.T, addr string, n int) *loadtest.Conns {
	t.Helper()
	cs, err := loadtest.DialConns(addr, n)
	require.NoError(t, err)
	t.Cleanup(cs.Close)
	return cs
}

// requestTimeout bounds one request of the load connections.
const requestTimeout = 30 * time.Second

// checkAdmitAnswer checks an admit's answer cheaply: 200, admitted, and the
// engine of that user. The body holds the engine key, so it is never
// quoted in an error unless it is an error envelope.
func checkAdmitAnswer(user string, status int, body []byte) error {
	if status != http.StatusOK {
		if bytes.HasPrefix(body, []byte(`{"error"`)) {
			return fmt.Errorf("admit %s: status %d: %.300s", user, status, body)
		}
		return fmt.Errorf("admit %s: status %d", user, status)
	}
	if !bytes.Contains(body, []byte(`"admitted":true`)) {
		return fmt.Errorf("admit %s: not admitted", user)
	}
	if !bytes.Contains(body, []byte(`"user_id":"`+user+`"`)) {
		return fmt.Errorf("admit %s: the answer names another engine", user)
	}
	return nil
}

// admit admits user through net/http's client.
func (h *harness) admit(ctx context.Context, user string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.base+"/engines/"+user+"/admit", strings.NewReader("{}"))
	if err != nil {
		return nil, fmt.Errorf("admit %s: %w", user, err)
	}
	req.Header.Set(api.HeaderPlatformKey, h.platformKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := h.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admit %s: %w", user, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("admit %s: read answer: %w", user, err)
	}
	if err := checkAdmitAnswer(user, resp.StatusCode, body); err != nil {
		return nil, err
	}
	return body, nil
}

// checkAdmit admits the first user and checks the whole answer, the
// decrypted engine key included; it returns the answer's body.
func (h *harness) checkAdmit(t *testing.T) []byte {
	t.Helper()
	body, err := h.admit(t.Context(), h.users[0])
	require.NoError(t, err)
	var got struct {
		Admitted bool `json:"admitted"`
		Engine   struct {
			EngineID string `json:"engine_id"`
			UserID   string `json:"user_id"`
			Status   string `json:"status"`
			APIKey   string `json:"api_key"`
		} `json:"engine"`
	}
	require.NoError(t, json.Unmarshal(body, &got))
	require.True(t, got.Admitted)
	require.Equal(t, h.engineIDs[0], got.Engine.EngineID)
	require.Equal(t, h.users[0], got.Engine.UserID)
	require.Equal(t, string(bap.StateRunning), got.Engine.Status)
	require.True(t, got.Engine.APIKey == h.engineKeys[0], "admit returns the engine's decrypted key")
	return body
}

// lookupOp runs discovery's one query for a random user straight on the
// store, without HTTP, the handler or discovery around it.
func (h *harness) lookupOp(ctx context.Context, rng *rand.Rand) error {
	i := rng.IntN(len(h.users))
	_, e, err := h.store.AdmitLookup(ctx, h.keyHash, h.users[i], time.Now())
	if err != nil {
		return fmt.Errorf("admit lookup %s: %w", h.users[i], err)
	}
	if e == nil || e.ID != h.engineIDs[i] {
		return fmt.Errorf("admit lookup %s: wrong or no engine", h.users[i])
	}
	return nil
}

// admitOp admits a random user on the load connections of the server
// with the engine cache.
func (h *harness) admitOp(_ context.Context, rng *rand.Rand) error {
	i := rng.IntN(len(h.users))
	return h.conns.Do(h.reqs[i], requestTimeout, func(status int, body []byte) error {
		return checkAdmitAnswer(h.users[i], status, body)
	})
}

// admitNoCacheOp admits a random user on the server without the engine
// cache: each admit reads the database once.
func (h *harness) admitNoCacheOp(_ context.Context, rng *rand.Rand) error {
	i := rng.IntN(len(h.users))
	return h.connsNoCache.Do(h.reqs[i], requestTimeout, func(status int, body []byte) error {
		return checkAdmitAnswer(h.users[i], status, body)
	})
}

// admitNetHTTPOp admits a random user through net/http's client, which
// takes more of the machine's CPU than the load connections.
func (h *harness) admitNetHTTPOp(ctx context.Context, rng *rand.Rand) error {
	_, err := h.admit(ctx, h.users[rng.IntN(len(h.users))])
	return err
}

// floorOp measures what HTTP alone costs on this machine: the same load
// connections and request as an admit, against a bare net/http server that reads the
// body and answers 200 with a fixed body of an admit's size (no routing,
// middleware, logging, metrics or database).
func floorOp(t *testing.T, clients int, body []byte) loadtest.Op {
	t.Helper()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if _, err := io.Copy(io.Discard, r.Body); err != nil {
				http.Error(w, "read body", http.StatusBadRequest)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go pprof.Do(context.Background(), pprof.Labels("part", "floor-server"), func(context.Context) {
		served <- srv.Serve(ln)
	})
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, srv.Shutdown(sctx))
		require.ErrorIs(t, <-served, http.ErrServerClosed)
	})
	addr := ln.Addr().String()
	conns := dialConns(t, addr, clients)
	req := loadtest.Request(http.MethodPost, addr, "/engines/user-00000/admit", []byte("{}"),
		api.HeaderPlatformKey, "pk-floor", "Content-Type", "application/json")
	return func(context.Context, *rand.Rand) error {
		return conns.Do(req, requestTimeout, func(status int, got []byte) error {
			if status != http.StatusOK || len(got) != len(body) {
				return fmt.Errorf("floor: status %d, %d bytes", status, len(got))
			}
			return nil
		})
	}
}

// newClient returns an HTTP client keeping one connection per load client
// alive, and the function that closes them.
func newClient(clients int) (*http.Client, func()) {
	tr := &http.Transport{
		MaxIdleConns:        clients,
		MaxIdleConnsPerHost: clients,
		MaxConnsPerHost:     clients,
		DisableCompression:  true,
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}, tr.CloseIdleConnections
}

// requireTouched stops discovery's background writer (which flushes what
// is left) and checks the admits reached last_active_at.
func (h *harness) requireTouched(t *testing.T) {
	t.Helper()
	h.stopLoop()
	e, err := h.store.GetEngine(t.Context(), h.engineIDs[0])
	require.NoError(t, err)
	require.NotNil(t, e.LastActiveAt, "admits are recorded in last_active_at")
}

// pointSelectOp selects a random engine row by primary key through a pgx
// pool with one connection per client.
func pointSelectOp(t *testing.T, cfg *pgxpool.Config, ids []string, clients int) loadtest.Op {
	t.Helper()
	cfg = cfg.Copy()
	cfg.MaxConns = int32(clients)
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	const q = `SELECT id, product_id, user_id, status, port, engine_key_enc, url, image, created_at
FROM engines WHERE id = $1`
	return func(ctx context.Context, rng *rand.Rand) error {
		id := ids[rng.IntN(len(ids))]
		var (
			gotID, productID, userID, status string
			port                             *int32
			keyEnc, engineURL, image         *string
			createdAt                        time.Time
		)
		err := pool.QueryRow(ctx, q, id).Scan(&gotID, &productID, &userID, &status, &port, &keyEnc, &engineURL, &image, &createdAt)
		if err != nil {
			return fmt.Errorf("select engine %s: %w", id, err)
		}
		if gotID != id {
			return fmt.Errorf("select engine %s: got row %s", id, gotID)
		}
		return nil
	}
}

// requireClean fails the test when a run had failures or no successes.
func requireClean(t *testing.T, what string, r loadtest.Result) {
	t.Helper()
	require.NoError(t, r.FirstErr, "%s: %d of %d requests failed", what, r.Errors, r.Errors+r.Requests)
	require.Zero(t, r.Errors, what)
	require.Positive(t, r.Requests, "%s: no request completed", what)
}

// report renders the rows as a table, then the ratio and the targets.
func report(rows []row, p params) string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "store\tmeasured\tclients\toffered/s\trequests\trate/s\tmean ms\tp50\tp90\tp99\tp99.9\tmax\terrors\tproc cores\tproc µs/req\tpg cores\tpg µs/req\tmachine busy cores\t")
	for _, rw := range rows {
		r := rw.r
		offered := "max"
		if r.Offered > 0 {
			offered = strconv.FormatFloat(r.Offered, 'f', 0, 64)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t\n",
			rw.store, rw.what, r.Clients, offered, r.Requests, r.Throughput(), ms(r.Mean()),
			ms(r.Quantile(0.5)), ms(r.Quantile(0.9)), ms(r.Quantile(0.99)), ms(r.Quantile(0.999)),
			ms(r.Quantile(1)), r.Errors,
			cores(rw.cpu.proc, rw.cpu.wall, true), perRequest(rw.cpu.proc, r.Requests, true),
			cores(rw.cpu.pg, rw.cpu.wall, rw.cpu.pgOK), perRequest(rw.cpu.pg, r.Requests, rw.cpu.pgOK),
			rw.cpu.machine())
	}
	_ = tw.Flush()
	admitRow, ok1 := find(rows, "postgres", whatAdmit)
	selRow, ok2 := find(rows, "postgres", whatPointSelect)
	if !ok1 || !ok2 {
		return b.String()
	}
	admit, sel := admitRow.r, selRow.r
	ratio := admit.Throughput() / sel.Throughput()
	fmt.Fprintf(&b, "postgres admit/point-select rate ratio: %.2f\n", ratio)
	if admitRow.cpu.pgOK && selRow.cpu.pgOK && admit.Requests > 0 && sel.Requests > 0 {
		// What the ratio would be with the machine to ourselves: the
		// inverse ratio of CPU spent per request by this process and
		// PostgreSQL, blind to other load on the machine.
		perAdmit := (admitRow.cpu.proc + admitRow.cpu.pg) / time.Duration(admit.Requests)
		perSelect := (selRow.cpu.proc + selRow.cpu.pg) / time.Duration(sel.Requests)
		fmt.Fprintf(&b, "CPU per request (this process + PostgreSQL): admit %d µs, point-select %d µs, ratio %.2f\n",
			perAdmit.Microseconds(), perSelect.Microseconds(), float64(perSelect)/float64(perAdmit))
	}
	if !p.full {
		b.WriteString("smoke run: targets not evaluated\n")
		return b.String()
	}
	for _, what := range []string{whatAdmitNoCache, whatAdmitNetHTTP} {
		if rw, ok := find(rows, "postgres", what); ok {
			fmt.Fprintf(&b, "%s: rate ratio %.2f, p99 %s ms\n", what, rw.r.Throughput()/sel.Throughput(), ms(rw.r.Quantile(0.99)))
		}
	}
	fmt.Fprintf(&b, "target ratio >= %.2f: %s\n", targetRatio, verdict(ratio >= targetRatio))
	fmt.Fprintf(&b, "target admit p99 < %s at 32 clients: %s (closed-loop p99 %s ms at %d clients)\n",
		targetP99, verdict(p.clients == 32 && admit.Quantile(0.99) < targetP99), ms(admit.Quantile(0.99)), p.clients)
	if pacedRow, ok := find(rows, "postgres", whatAdmitPaced); ok {
		paced := pacedRow.r
		fmt.Fprintf(&b, "paced at %.0f/s (%.0f%% of the closed-loop admit rate) with %d clients: p50 %s ms, p99 %s ms\n",
			paced.Offered, 100*paced.Offered/admit.Throughput(), p.clients, ms(paced.Quantile(0.5)), ms(paced.Quantile(0.99)))
	}
	return b.String()
}

func find(rows []row, store, what string) (row, bool) {
	for _, rw := range rows {
		if rw.store == store && rw.what == what {
			return rw, true
		}
	}
	return row{}, false
}

// cores is CPU time d over wall time, in cores; "-" when not measured.
func cores(d, wall time.Duration, ok bool) string {
	if !ok || wall <= 0 {
		return "-"
	}
	return strconv.FormatFloat(d.Seconds()/wall.Seconds(), 'f', 2, 64)
}

// perRequest is CPU time d per request in microseconds; "-" when not
// measured.
func perRequest(d time.Duration, requests int, ok bool) string {
	if !ok || requests == 0 {
		return "-"
	}
	return strconv.FormatInt((d / time.Duration(requests)).Microseconds(), 10)
}

func verdict(met bool) string {
	if met {
		return "met"
	}
	return "missed"
}

// ms formats d in milliseconds with three decimals.
func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 3, 64)
}

// loadAverage is the 1, 5 and 15 minute load averages of the machine, or
// "unknown" where /proc/loadavg does not exist.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "unknown"
		}
		return "unreadable: " + err.Error()
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// cpuUse is CPU time spent over an interval: by this process (load
// generator, HTTP server and database clients together) and by the whole
// machine (PostgreSQL and anything else running too).
type cpuUse struct {
	wall time.Duration
	proc time.Duration
	// pg is the CPU time of the PostgreSQL server's processes (postmaster
	// and backends); pgOK says it was measured.
	pg   time.Duration
	pgOK bool
	// busy and total are machine-wide jiffies from /proc/stat; both 0
	// where it does not exist.
	busy, total uint64
	at          time.Time
}

// sampleCPU reads the counters now; pgPort, when not 0, is the port of
// the PostgreSQL server whose processes are counted too.
func sampleCPU(t *testing.T, pgPort int) cpuUse {
	t.Helper()
	var ru syscall.Rusage
	require.NoError(t, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	c := cpuUse{at: time.Now(), proc: time.Duration(ru.Utime.Nano() + ru.Stime.Nano())}
	if pgPort != 0 {
		c.pg, c.pgOK = postgresCPU(pgPort)
	}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return c
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return c
	}
	for i, v := range f[1:] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			c.busy, c.total = 0, 0
			return c
		}
		if i >= 8 { // guest time is already in user time
			break
		}
		c.total += n
		if i != 3 && i != 4 { // idle, iowait
			c.busy += n
		}
	}
	return c
}

// since is the use from before to c.
func (c cpuUse) since(before cpuUse) cpuUse {
	return cpuUse{
		wall:  c.at.Sub(before.at),
		proc:  c.proc - before.proc,
		pg:    c.pg - before.pg,
		pgOK:  c.pgOK && before.pgOK,
		busy:  c.busy - before.busy,
		total: c.total - before.total,
	}
}

// add sums two uses of separate intervals.
func (c cpuUse) add(o cpuUse) cpuUse {
	return cpuUse{
		wall:  c.wall + o.wall,
		proc:  c.proc + o.proc,
		pg:    c.pg + o.pg,
		pgOK:  (c.pgOK || c.wall == 0) && o.pgOK,
		busy:  c.busy + o.busy,
		total: c.total + o.total,
	}
}

// clockTick is the unit of /proc/<pid>/stat times (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// postgresCPU sums the CPU time of the PostgreSQL server listening on port
// (a postmaster started with "-p port", as pgtest starts it): its own, its
// reaped children's and its live children's (the backends). False when no
// such process is visible, e.g. a server elsewhere.
func postgresCPU(port int) (time.Duration, bool) {
	procs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		return 0, false
	}
	type stat struct {
		ppid  int
		ticks uint64 // utime + stime
		child uint64 // cutime + cstime
	}
	stats := map[int]stat{}
	postmaster := 0
	want := []string{"-p", strconv.Itoa(port)}
	for _, dir := range procs {
		pid, err := strconv.Atoi(filepath.Base(dir))
		if err != nil {
			continue
		}
		b, err := os.ReadFile(dir + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 15 {
			continue
		}
		var st stat
		var n [4]uint64
		st.ppid, _ = strconv.Atoi(f[1])
		for k := range n {
			n[k], _ = strconv.ParseUint(f[11+k], 10, 64)
		}
		st.ticks, st.child = n[0]+n[1], n[2]+n[3]
		stats[pid] = st
		if postmaster == 0 && strings.Contains(string(b[:i]), "(postgres") {
			cmd, err := os.ReadFile(dir + "/cmdline")
			if err == nil {
				args := strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00")
				for j := 0; j+1 < len(args); j++ {
					if args[j] == want[0] && args[j+1] == want[1] {
						postmaster = pid
					}
				}
			}
		}
	}
	pm, ok := stats[postmaster]
	if postmaster == 0 || !ok {
		return 0, false
	}
	ticks := pm.ticks + pm.child
	for _, st := range stats {
		if st.ppid == postmaster {
			ticks += st.ticks
		}
	}
	return time.Duration(ticks) * clockTick, true
}

// machine is how many of the machine's cores were busy on average, or "?"
// without /proc/stat.
func (c cpuUse) machine() string {
	if c.total == 0 {
		return "?"
	}
	return strconv.FormatFloat(float64(c.busy)/float64(c.total)*float64(runtime.NumCPU()), 'f', 2, 64)
}
