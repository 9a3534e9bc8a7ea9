package api_test

import (
	"cmp"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/client"
	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/storetest"
	"github.com/september/bap-engine/internal/servertest"
	"github.com/september/bap-engine/internal/testclock"
	"github.com/september/bap-engine/internal/testlog"
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

// eachHarness runs fn on a whole server tuned by o (newHarness), once on a
// fresh SQLite store and once on a fresh PostgreSQL store (runBoth).
func eachHarness(t *testing.T, o options, fn func(t *testing.T, h *harness)) {
	t.Helper()
	runBoth(t, func(t *testing.T, store registry.Store) { fn(t, newHarness(t, store, o)) })
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

// harness is a whole server (servertest.Serve with metrics and the
// discovery and rollout loops running), driven through the typed client
// and raw requests.
// The short fields are the Server's parts under the names the tests use.
type harness struct {
	*servertest.Server
	t        testing.TB
	store    registry.Store
	fake     *backendtest.Fake
	clock    *testclock.Clock // key grace, the rate limiter and the /metrics window; still unless advanced
	srv      *httptest.Server
	admin    *client.Client
	adminKey string
	logs     *testlog.Buffer
}

func newHarness(t testing.TB, store registry.Store, o options) *harness {
	t.Helper()
	s := servertest.Serve(t, store,
		servertest.Clock(testclock.Fixed(time.Now().UTC().Truncate(time.Second))),
		servertest.Ports(cmp.Or(o.ports, 300)),
		servertest.BootTimeout(o.bootTimeout),
		servertest.WithMetrics(),
		servertest.RunLoops(),
		servertest.API(func(d *api.Deps) {
			d.PlatformKeyGrace = o.grace
			d.MaxBodyBytes = o.maxBody
			d.Ready = o.ready
			d.Build = o.build
		}))
	return &harness{Server: s, t: t, store: store, fake: s.Fake, clock: s.Clock,
		srv: s.HTTP, admin: s.Admin, adminKey: s.AdminKey, logs: s.Logs}
}

func (h *harness) remember(keys ...string) { h.Remember(keys...) }

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
func (h *harness) platform(key string) *client.Client { return h.Platform(key) }

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
