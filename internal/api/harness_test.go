package api_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/september/bap-engine/internal/testlog"

	"github.com/september/bap-engine/internal/registry/storetest"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/client"
	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/discovery"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/metrics"
	"github.com/september/bap-engine/internal/policy"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/requestid"
	"github.com/september/bap-engine/internal/rollout"
	"github.com/september/bap-engine/internal/secret"
	"github.com/september/bap-engine/internal/testclock"
	"github.com/september/bap-engine/internal/testmain"
)

func TestMain(m *testing.M) {
	os.Exit(testmain.Run(m, testmain.Goroutines()))
}

// runBoth runs fn against a fresh SQLite store and a fresh PostgreSQL store
// (skipped without PostgreSQL, failed when CI=true).
func runBoth(t *testing.T, fn func(t *testing.T, store registry.Store)) {
	t.Helper()
	storetest.Each(t, func(t *testing.T, open func(testing.TB) registry.Store) { fn(t, open(t)) })
}

// options tune a harness.
type options struct {
	grace       time.Duration
	maxBody     int64
	bootTimeout time.Duration
	ports       int // size of the engine port range (default 300)
	ready       func(context.Context) error
	build       api.BuildInfo
}

// harness is a whole server: real store, real lifecycle manager on the fake
// backend, real discovery, metrics, the api handler on httptest, and a
// client with the admin key.
type harness struct {
	t        testing.TB
	store    registry.Store
	fake     *backendtest.Fake
	lm       *lifecycle.Manager
	metrics  *metrics.Metrics
	clock    *testclock.Clock // key grace, the rate limiter and the /metrics window; still unless advanced
	srv      *httptest.Server
	admin    *client.Client
	adminKey string
	logs     *testlog.Buffer
	// secrets are every key the harness saw; none may appear in the logs.
	secretsMu sync.Mutex
	secrets   []string
}

func newHarness(t testing.TB, store registry.Store, o options) *harness {
	t.Helper()
	fake := backendtest.NewFake()
	t.Cleanup(fake.Close)
	fkey, err := secret.NewFernetKey()
	require.NoError(t, err)
	sealer, err := secret.NewSealer(fkey)
	require.NoError(t, err)
	clk := testclock.Fixed(time.Now().UTC().Truncate(time.Second))
	logs := &testlog.Buffer{}
	log := slog.New(requestid.Handler(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))

	m := metrics.New(metrics.Config{
		Engines: func(ctx context.Context) (map[string]map[string]int, error) {
			counts, err := store.CountByProductStatus(ctx)
			if err != nil {
				return nil, err
			}
			out := make(map[string]map[string]int, len(counts))
			for slug, byState := range counts {
				out[slug] = map[string]int{}
				for st, n := range byState {
					out[slug][string(st)] = n
				}
			}
			return out, nil
		},
		Slug: func(ctx context.Context, id string) (string, error) {
			p, err := store.GetProduct(ctx, id)
			return p.Slug, err
		},
		States: statesOf(),
		Logger: log,
	})
	ports := o.ports
	if ports == 0 {
		ports = 300
	}
	portMin, portMax := backendtest.PortRange(t, ports)
	bootTimeout := o.bootTimeout
	if bootTimeout == 0 {
		bootTimeout = 10 * time.Second
	}
	lm := lifecycle.New(store, fake, sealer, lifecycle.Config{
		PortMin:      portMin,
		PortMax:      portMax,
		BootTimeout:  bootTimeout,
		StopGrace:    time.Second,
		DefaultImage: "september-engine:test",
		Logger:       log,
		Observer:     m,
	})
	disc := discovery.New(store, lm, policy.NewLimiter(clk.Now), discovery.Config{Now: clk.Now, Logger: log})
	rollouts := rollout.New(rollout.Config{Store: store, Lifecycle: lm, Replica: lm.Replica(),
		Every: 20 * time.Millisecond, ProductChanged: disc.ForgetProduct, Logger: log})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() {
		defer func() { done <- struct{}{} }()
		_ = disc.Run(ctx)
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		_ = rollouts.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		<-done
	})

	adminKey := "admin-" + fkey[:16]
	h := &harness{t: t, store: store, fake: fake, lm: lm, metrics: m, clock: clk, adminKey: adminKey, logs: logs}
	h.srv = httptest.NewServer(api.New(api.Deps{
		Store:            store,
		Lifecycle:        lm,
		Discovery:        disc,
		Rollouts:         rollouts,
		Metrics:          m,
		AdminKey:         adminKey,
		PlatformKeyGrace: o.grace,
		Logger:           log,
		MaxBodyBytes:     o.maxBody,
		Now:              clk.Now,
		Ready:            o.ready,
		Build:            o.build,
	}))
	t.Cleanup(h.srv.Close)
	h.admin = client.New(h.srv.URL, client.WithAdminKey(adminKey), client.WithHTTPClient(h.srv.Client()))
	h.remember(adminKey)
	t.Cleanup(h.checkLogs)
	return h
}

func statesOf() []string {
	out := make([]string, 0, len(bap.States))
	for _, s := range bap.States {
		out = append(out, string(s))
	}
	return out
}

func (h *harness) remember(keys ...string) {
	h.secretsMu.Lock()
	h.secrets = append(h.secrets, keys...)
	h.secretsMu.Unlock()
}

// checkLogs fails the test when any key the harness saw was logged.
func (h *harness) checkLogs() {
	logs := h.logs.String()
	h.secretsMu.Lock()
	defer h.secretsMu.Unlock()
	for _, k := range h.secrets {
		if k != "" && strings.Contains(logs, k) {
			h.t.Errorf("a key appeared in the logs")
		}
	}
	for _, prefix := range []string{"pk-sept-", "sk-sept-"} {
		if strings.Contains(logs, prefix) {
			h.t.Errorf("a %s key appeared in the logs", prefix)
		}
	}
}

// product registers a product with policy (JSON, "" for none) and returns
// a client with its key.
func (h *harness) product(slug, policyJSON string) (*client.Client, client.Product) {
	h.t.Helper()
	var pol client.Policy
	if policyJSON != "" {
		require.NoError(h.t, json.Unmarshal([]byte(policyJSON), &pol))
	}
	p, err := h.admin.RegisterProduct(h.t.Context(), client.ProductRequest{Slug: slug, DisplayName: "Product " + slug, Policy: pol})
	require.NoError(h.t, err)
	h.remember(p.PlatformAPIKey)
	return h.platform(p.PlatformAPIKey), p
}

// platform returns a client with the given platform key.
func (h *harness) platform(key string) *client.Client {
	return client.New(h.srv.URL, client.WithPlatformKey(key), client.WithHTTPClient(h.srv.Client()))
}

// provision provisions userID's engine and checks it runs.
func (h *harness) provision(c *client.Client, userID string) client.Provisioned {
	h.t.Helper()
	res, err := c.Provision(h.t.Context(), client.ProvisionRequest{UserID: userID})
	require.NoError(h.t, err)
	require.Equal(h.t, client.StateRunning, res.Status)
	h.remember(res.APIKey)
	return res
}

// response is a raw answer.
type response struct {
	status int
	header http.Header
	body   []byte
}

// json decodes the body into a generic value.
func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var v map[string]any
	require.NoError(t, json.Unmarshal(r.body, &v), "body: %s", r.body)
	return v
}

// do sends a raw request: for what the typed client cannot express
// (malformed bodies, unknown routes, odd methods).
func (h *harness) do(method, path string, body string, headers map[string]string) response {
	h.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(h.t.Context(), method, h.srv.URL+path, rd)
	require.NoError(h.t, err)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := h.srv.Client().Do(req)
	require.NoError(h.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(h.t, err)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// auditCount counts the product's audit rows with action.
func (h *harness) auditCount(productID string, action audit.Action) int {
	h.t.Helper()
	_, total, err := h.store.ListAudit(h.t.Context(), registry.AuditFilter{ProductID: productID, Actions: []audit.Action{action}})
	require.NoError(h.t, err)
	return total
}

// auditTotal counts all of the product's audit rows.
func (h *harness) auditTotal(productID string) int {
	h.t.Helper()
	_, total, err := h.store.ListAudit(h.t.Context(), registry.AuditFilter{ProductID: productID})
	require.NoError(h.t, err)
	return total
}

// engineCount counts the product's engines.
func (h *harness) engineCount(productID string) int {
	h.t.Helper()
	_, total, err := h.store.ListEngines(h.t.Context(), registry.EngineFilter{ProductID: productID})
	require.NoError(h.t, err)
	return total
}

// apiError asserts err is an API error with status and code and returns it.
func apiError(t *testing.T, err error, status int, code string) *client.Error {
	t.Helper()
	var e *client.Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, status, e.Status, "error: %v", e)
	require.Equal(t, code, e.Code, "error: %v", e)
	require.NotEmpty(t, e.Message)
	return e
}
