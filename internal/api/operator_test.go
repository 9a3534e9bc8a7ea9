package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/client"
	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/storetest"
)

func TestProductsListAndGetBySlugOrID(t *testing.T) {
	eachHarness(t, options{}, func(t *testing.T, h *harness) {
		ctx := t.Context()
		acme, ap := h.product("acme", `{"max_engines": 5}`)
		_, bp := h.product("beta", "")
		h.provision(acme, "u1")
		h.provision(acme, "u2")
		_, err := acme.Stop(ctx, "u2")
		require.NoError(t, err)

		list, err := h.admin.Products(ctx)
		require.NoError(t, err)
		require.Equal(t, 2, list.Total)
		require.Equal(t, []string{"acme", "beta"}, []string{list.Products[0].Slug, list.Products[1].Slug})
		a := list.Products[0]
		require.Equal(t, ap.ProductID, a.ProductID)
		require.Equal(t, "Product acme", a.DisplayName)
		require.Equal(t, client.Policy{"max_engines": float64(5)}, a.Policy)
		require.Equal(t, 1, a.EnginesByStatus[client.StateRunning])
		require.Equal(t, 1, a.EnginesByStatus[client.StateStopped])
		require.Len(t, a.EnginesByStatus, len(bap.States), "every state is named")
		require.Equal(t, 0, list.Products[1].EnginesByStatus[client.StateRunning])

		for _, name := range []string{"acme", ap.ProductID, strings.ToUpper(ap.ProductID)} {
			got, err := h.admin.Product(ctx, name)
			require.NoError(t, err, name)
			require.Equal(t, ap.ProductID, got.ProductID, name)
			require.Equal(t, 2, got.EnginesByStatus[client.StateRunning]+got.EnginesByStatus[client.StateStopped])
		}
		for _, name := range []string{"nope", "00000000-0000-4000-8000-000000000000", "ACME", "a b", "acme'--"} {
			_, err := h.admin.Product(ctx, name)
			apiError(t, err, http.StatusNotFound, bap.CodeProductNotFound)
		}

		// The slug is accepted wherever a product id is.
		pol, err := h.admin.UpdatePolicy(ctx, "beta", client.Policy{"max_engines": 1})
		require.NoError(t, err)
		require.Equal(t, client.Policy{"max_engines": float64(1)}, pol)
		got, err := h.admin.Product(ctx, bp.ProductID)
		require.NoError(t, err)
		require.Equal(t, client.Policy{"max_engines": float64(1)}, got.Policy)
		rot, err := h.admin.RotatePlatformKey(ctx, "beta")
		require.NoError(t, err)
		h.remember(rot.PlatformAPIKey)
		require.Equal(t, bp.ProductID, rot.ProductID)
		_, err = h.admin.UpdatePolicy(ctx, "gamma", client.Policy{})
		apiError(t, err, http.StatusNotFound, bap.CodeProductNotFound)

		// Products are admin-only; a product key is not enough.
		r := h.do(http.MethodGet, "/products", "", map[string]string{api.HeaderPlatformKey: ap.PlatformAPIKey})
		require.Equal(t, http.StatusUnauthorized, r.status)
		require.NotContains(t, string(h.do(http.MethodGet, "/products", "", map[string]string{api.HeaderAdminKey: h.adminKey}).body), "api_key_hash")
	})
}

func TestFleetEnginesFilters(t *testing.T) {
	eachHarness(t, options{}, func(t *testing.T, h *harness) {
		ctx := t.Context()
		acme, ap := h.product("acme", "")
		beta, _ := h.product("beta", "")
		h.provision(acme, "alice")
		h.provision(acme, "bob")
		h.provision(beta, "Alice2")
		_, err := acme.Stop(ctx, "bob")
		require.NoError(t, err)

		all, err := h.admin.FleetEngines(ctx, client.FleetOptions{})
		require.NoError(t, err)
		require.Equal(t, 3, all.Total)
		require.Equal(t, []string{"alice", "bob", "Alice2"}, users(all))
		for _, e := range all.Engines {
			require.Empty(t, e.APIKey, "no keys in the fleet list")
			require.NotEmpty(t, e.ProductSlug)
			require.Zero(t, e.RestartCount)
			require.Zero(t, e.HealthFailures)
		}
		r := h.do(http.MethodGet, "/fleet/engines", "", map[string]string{api.HeaderAdminKey: h.adminKey})
		require.NotContains(t, string(r.body), "api_key")

		for _, tc := range []struct {
			opts client.FleetOptions
			want []string
		}{
			{client.FleetOptions{Product: "acme"}, []string{"alice", "bob"}},
			{client.FleetOptions{Product: ap.ProductID}, []string{"alice", "bob"}},
			{client.FleetOptions{Status: client.StateStopped}, []string{"bob"}},
			{client.FleetOptions{UserID: "alice"}, []string{"alice", "Alice2"}},
			{client.FleetOptions{Product: "beta", UserID: "ALICE"}, []string{"Alice2"}},
			{client.FleetOptions{Limit: 1, Offset: 1}, []string{"bob"}},
		} {
			got, err := h.admin.FleetEngines(ctx, tc.opts)
			require.NoError(t, err, "%+v", tc.opts)
			require.Equal(t, tc.want, users(got), "%+v", tc.opts)
		}
		one, err := h.admin.FleetEngines(ctx, client.FleetOptions{Limit: 1})
		require.NoError(t, err)
		require.Equal(t, 3, one.Total, "total counts every page")
		require.Equal(t, "acme", one.Engines[0].ProductSlug)

		_, err = h.admin.FleetEngines(ctx, client.FleetOptions{Product: "nobody"})
		apiError(t, err, http.StatusNotFound, bap.CodeProductNotFound)
		_, err = h.admin.FleetEngines(ctx, client.FleetOptions{Status: "zombie"})
		apiError(t, err, http.StatusUnprocessableEntity, bap.CodeValidation)
		_, err = h.admin.FleetEngines(ctx, client.FleetOptions{UserID: strings.Repeat("x", 200)})
		apiError(t, err, http.StatusUnprocessableEntity, bap.CodeValidation)
		r = h.do(http.MethodGet, "/fleet/engines?status=&product=", "", map[string]string{api.HeaderAdminKey: h.adminKey})
		require.Equal(t, http.StatusOK, r.status)
		require.EqualValues(t, 3, r.json(t)["total"])
	})
}

func users(l client.FleetEngineList) []string {
	out := []string{}
	for _, e := range l.Engines {
		out = append(out, e.UserID)
	}
	return out
}

func TestEmptyStatusFilterMeansAnyState(t *testing.T) {
	eachHarness(t, options{}, func(t *testing.T, h *harness) {
		c, p := h.product("acme", "")
		h.provision(c, "a")
		h.provision(c, "b")
		_, err := c.Stop(t.Context(), "b")
		require.NoError(t, err)
		key := map[string]string{api.HeaderPlatformKey: p.PlatformAPIKey}
		r := h.do(http.MethodGet, "/engines?status=&limit=100&offset=0", "", key)
		require.Equal(t, http.StatusOK, r.status, "%s", r.body)
		require.EqualValues(t, 2, r.json(t)["total"])
		r = h.do(http.MethodGet, "/engines?status=stopped", "", key)
		require.EqualValues(t, 1, r.json(t)["total"])
	})
}

func TestEngineLogsTailAndFollow(t *testing.T) {
	eachHarness(t, options{}, func(t *testing.T, h *harness) {
		ctx := t.Context()
		c, cp := h.product("acme", "")
		other, _ := h.product("other", "")
		e := h.provision(c, "alice")
		key := map[string]string{api.HeaderPlatformKey: cp.PlatformAPIKey}
		for i := range 5 {
			h.fake.Printf(e.EngineID, "line %d", i)
		}

		read := func(opts client.LogOptions) string {
			t.Helper()
			rc, err := c.Logs(ctx, "alice", opts)
			require.NoError(t, err)
			defer rc.Close()
			b, err := io.ReadAll(rc)
			require.NoError(t, err)
			return string(b)
		}
		all := read(client.LogOptions{Tail: -1})
		require.True(t, strings.HasPrefix(all, "engine "+e.EngineID+" listening on"), all)
		require.True(t, strings.HasSuffix(all, "line 3\nline 4\n"), all)
		require.Equal(t, "line 3\nline 4\n", read(client.LogOptions{Tail: 2}))
		require.Equal(t, all, read(client.LogOptions{}), "the default tail (200) holds all 6 lines")

		r := h.do(http.MethodGet, "/engines/alice/logs?tail=1", "", key)
		require.Equal(t, http.StatusOK, r.status)
		require.Equal(t, "text/plain; charset=utf-8", r.header.Get("Content-Type"))
		require.Equal(t, "line 4\n", string(r.body))

		// Another product's engine is absent; bad parameters are 422.
		_, err := other.Logs(ctx, "alice", client.LogOptions{})
		apiError(t, err, http.StatusNotFound, bap.CodeEngineNotFound)
		for _, q := range []string{"tail=-1", "tail=x", "tail=100001", "follow=maybe"} {
			r := h.do(http.MethodGet, "/engines/alice/logs?"+q, "", key)
			require.Equal(t, http.StatusUnprocessableEntity, r.status, q)
		}

		// follow: the last line at once, then what the engine writes next,
		// until the client leaves.
		fctx, cancel := context.WithCancel(ctx)
		defer cancel()
		rc, err := c.Logs(fctx, "alice", client.LogOptions{Tail: 1, Follow: true})
		require.NoError(t, err)
		defer rc.Close()
		lines := bufio.NewScanner(rc)
		require.True(t, lines.Scan())
		require.Equal(t, "line 4", lines.Text())
		h.fake.Printf(e.EngineID, "after follow")
		require.True(t, lines.Scan())
		require.Equal(t, "after follow", lines.Text())
		_, err = c.Stop(ctx, "alice")
		require.NoError(t, err)
		require.True(t, lines.Scan())
		require.Equal(t, "engine "+e.EngineID+" stopped", lines.Text())
		cancel()
		done := make(chan struct{})
		go func() {
			defer close(done)
			for lines.Scan() {
			}
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the followed log did not end when the client left")
		}
	})
}

func TestProbesAndVersion(t *testing.T) {
	runBoth(t, func(t *testing.T, store registry.Store) {
		var backendDown atomic.Bool
		h := newHarness(t, store, options{
			build: api.BuildInfo{Version: "v9.9.9", Commit: "abc123", Go: "go1.x"},
			ready: func(context.Context) error {
				if backendDown.Load() {
					return errors.New("docker daemon unreachable")
				}
				return nil
			},
		})
		r := h.do(http.MethodGet, "/livez", "", nil)
		require.Equal(t, http.StatusOK, r.status)
		require.Equal(t, "ok", r.json(t)["status"])
		r = h.do(http.MethodGet, "/readyz", "", nil)
		require.Equal(t, http.StatusOK, r.status)
		r = h.do(http.MethodGet, "/version", "", nil)
		require.Equal(t, http.StatusOK, r.status)
		require.Equal(t, map[string]any{"version": "v9.9.9", "commit": "abc123", "go": "go1.x"}, r.json(t))

		backendDown.Store(true)
		r = h.do(http.MethodGet, "/readyz", "", nil)
		require.Equal(t, http.StatusServiceUnavailable, r.status)
		require.Equal(t, bap.CodeBackendUnavailable, r.json(t)["error"].(map[string]any)["code"])
		require.Equal(t, http.StatusOK, h.do(http.MethodGet, "/livez", "", nil).status, "liveness ignores dependencies")
		require.Equal(t, http.StatusOK, h.do(http.MethodGet, "/health", "", nil).status, "/health keeps its meaning: the database")

		require.NoError(t, h.store.Close())
		r = h.do(http.MethodGet, "/readyz", "", nil)
		require.Equal(t, http.StatusServiceUnavailable, r.status)
		require.Equal(t, bap.CodeDatabaseUnavailable, r.json(t)["error"].(map[string]any)["code"])
		require.Equal(t, http.StatusOK, h.do(http.MethodGet, "/livez", "", nil).status, "liveness survives a database outage")
	})
}

func TestStartingHandler(t *testing.T) {
	var waiting atomic.Value
	waiting.Store(bap.Errorf(bap.CodeDatabaseUnavailable, "waiting for the database: connection refused"))
	srv := httptest.NewServer(api.Starting(api.BuildInfo{Version: "v1"}, func() error { return waiting.Load().(error) }))
	defer srv.Close()
	get := func(path string) (int, map[string]any) {
		resp, err := srv.Client().Get(srv.URL + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		var body map[string]any
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
		return resp.StatusCode, body
	}
	code, _ := get("/livez")
	require.Equal(t, http.StatusOK, code)
	code, body := get("/version")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "v1", body["version"])
	for _, path := range []string{"/readyz", "/health", "/engines"} {
		code, body = get(path)
		require.Equal(t, http.StatusServiceUnavailable, code, path)
		e := body["error"].(map[string]any)
		require.Equal(t, bap.CodeDatabaseUnavailable, e["code"])
		require.Contains(t, e["message"], "connection refused")
	}
	waiting.Store(bap.Errorf(bap.CodeBackendUnavailable, "waiting for the engine backend"))
	_, body = get("/readyz")
	require.Equal(t, bap.CodeBackendUnavailable, body["error"].(map[string]any)["code"])
}

// TestRequestIDReachesLifecycleLogs: the lifecycle's own log lines about a
// request's work carry the request's id.
func TestRequestIDReachesLifecycleLogs(t *testing.T) {
	h := newHarness(t, storetest.SQLite(t), options{})
	_, p := h.product("acme", "")
	h.fake.FailNext(backendtest.MethodStart, errors.New("engine would not start"))
	r := h.do(http.MethodPost, "/engines/provision", `{"user_id":"alice"}`,
		map[string]string{api.HeaderPlatformKey: p.PlatformAPIKey, api.HeaderRequestID: "trace-abc-123"})
	require.Equal(t, http.StatusBadGateway, r.status, "%s", r.body)
	found := false
	for _, line := range strings.Split(h.logs.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		if rec["msg"] == "provision failed" {
			require.Equal(t, "trace-abc-123", rec["request_id"], line)
			found = true
		}
	}
	require.True(t, found, "lifecycle logged the failed provision:\n%s", h.logs.String())
}
