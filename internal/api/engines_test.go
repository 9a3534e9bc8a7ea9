package api_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/client"
	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/registry/storetest"
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func itoa(n int) string { return strconv.Itoa(n) }

// apiTime is the API's timestamp form: RFC 3339 UTC with milliseconds.
var apiTime = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$`)

func keysOf(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestEngineLifecycleThroughHTTP(t *testing.T) {
	eachHarness(t, options{}, func(t *testing.T, h *harness) {
		c, p := h.product("acme", "")
		ctx := t.Context()

		prov := h.provision(c, "user-1@example.com")
		require.Equal(t, "user-1@example.com", prov.UserID)
		require.True(t, strings.HasPrefix(prov.APIKey, "sk-sept-"))
		require.NotEmpty(t, prov.URL)

		got, err := c.Get(ctx, "user-1@example.com")
		require.NoError(t, err)
		require.Equal(t, prov.EngineID, got.EngineID)
		require.Equal(t, prov.APIKey, got.APIKey, "GET decrypts the stored key")
		require.Equal(t, "september-engine:test", got.EngineVersion)
		require.Equal(t, client.StateRunning, got.Status)

		_, err = c.Provision(ctx, client.ProvisionRequest{UserID: "user-1@example.com"})
		checkGoldenErr(t, h, "engine_already_exists", err, 409, client.CodeEngineAlreadyExists)

		// The engine answers with the key we were given.
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, prov.URL+"/brain", nil)
		req.Header.Set("X-Engine-Key", prov.APIKey)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)

		_, err = c.Start(ctx, "user-1@example.com")
		checkGoldenErr(t, h, "engine_already_running", err, 409, client.CodeEngineAlreadyRunning)

		stopped, err := c.Stop(ctx, "user-1@example.com")
		require.NoError(t, err)
		require.Equal(t, client.Stopped{Status: "stopped", EngineID: prov.EngineID}, stopped)

		_, err = c.Stop(ctx, "user-1@example.com")
		checkGoldenErr(t, h, "engine_not_running_stop", err, 409, client.CodeEngineNotRunning)
		_, err = c.RotateKey(ctx, "user-1@example.com")
		checkGoldenErr(t, h, "engine_not_running_rotate_key", err, 409, client.CodeEngineNotRunning)

		started, err := c.Start(ctx, "user-1@example.com")
		require.NoError(t, err)
		require.Equal(t, client.Started{Status: "running", URL: prov.URL}, started)

		rot, err := c.RotateKey(ctx, "user-1@example.com")
		require.NoError(t, err)
		h.remember(rot.APIKey)
		require.Equal(t, prov.EngineID, rot.EngineID)
		require.Equal(t, "running", rot.Status)
		require.NotEqual(t, prov.APIKey, rot.APIKey)
		got, err = c.Get(ctx, "user-1@example.com")
		require.NoError(t, err)
		require.Equal(t, rot.APIKey, got.APIKey)

		// The audit trail, newest first, paginated.
		trail, err := c.Audit(ctx, "user-1@example.com", client.AuditOptions{})
		require.NoError(t, err)
		var actions []string
		for _, e := range trail.Entries {
			actions = append(actions, e.Action)
			require.Equal(t, "acme", e.Actor)
		}
		require.Equal(t, []string{"rotate_key", "start", "stop", "provision"}, actions)
		require.Equal(t, 4, trail.Total)
		require.NotNil(t, trail.Entries[3].DurationMS, "provision records its boot time")
		page, err := c.Audit(ctx, "user-1@example.com", client.AuditOptions{Limit: 2, Offset: 1})
		require.NoError(t, err)
		require.Equal(t, 4, page.Total)
		require.Len(t, page.Entries, 2)
		require.Equal(t, "start", page.Entries[0].Action)
		require.Equal(t, "stop", page.Entries[1].Action)

		destroyed, err := c.Destroy(ctx, "user-1@example.com")
		require.NoError(t, err)
		require.Equal(t, client.Destroyed{Status: "destroyed", EngineID: prov.EngineID}, destroyed)
		_, err = c.Get(ctx, "user-1@example.com")
		checkGoldenErr(t, h, "engine_not_found", err, 404, client.CodeEngineNotFound)
		_, err = c.Destroy(ctx, "user-1@example.com")
		apiError(t, err, 404, client.CodeEngineNotFound)
		_, err = c.Audit(ctx, "user-1@example.com", client.AuditOptions{})
		apiError(t, err, 404, client.CodeEngineNotFound)
		require.Equal(t, 1, h.auditCount(p.ProductID, audit.Destroy))
		for _, route := range []func() error{
			func() error { _, err := c.Start(ctx, "nobody"); return err },
			func() error { _, err := c.Stop(ctx, "nobody"); return err },
			func() error { _, err := c.RotateKey(ctx, "nobody"); return err },
		} {
			apiError(t, route(), 404, client.CodeEngineNotFound)
		}
	})
}

// checkGoldenErr checks an error the typed client returned against its
// golden file: status, code, message and Retry-After. (Tests that need the
// raw envelope's exact shape use h.do and checkGolden.)
func checkGoldenErr(t *testing.T, h *harness, name string, err error, status int, code string, norm ...func(string) string) {
	t.Helper()
	e := apiError(t, err, status, code)
	body := `{"error":{"code":` + quote(e.Code) + `,"message":` + quote(e.Message) + `}}`
	hdr := http.Header{"Content-Type": []string{"application/json"}}
	if e.RetryAfter > 0 {
		hdr.Set("Retry-After", itoa(int(e.RetryAfter/time.Second)))
	}
	checkGolden(t, name, response{status: e.Status, header: hdr, body: []byte(body)}, norm...)
}

func TestEngineInfoShapes(t *testing.T) {
	eachHarness(t, options{}, func(t *testing.T, h *harness) {
		c, p := h.product("shapes", "")
		prov := h.provision(c, "u1")
		key := map[string]string{api.HeaderPlatformKey: p.PlatformAPIKey}

		r := h.do(http.MethodPost, "/engines/provision", `{"user_id":"u2","engine_version":"september-engine:2.3.0","extra":"ignored"}`, key)
		require.Equal(t, http.StatusOK, r.status, "%s", r.body)
		require.Equal(t, []string{"api_key", "engine_id", "status", "url", "user_id"}, keysOf(r.json(t)))
		h.remember(r.json(t)["api_key"].(string))

		r = h.do(http.MethodGet, "/engines/u1", "", key)
		require.Equal(t, http.StatusOK, r.status)
		info := r.json(t)
		require.Equal(t, []string{"api_key", "created_at", "engine_id", "engine_version", "last_health_at", "status", "url", "user_id"}, keysOf(info))
		require.Equal(t, prov.EngineID, info["engine_id"])
		require.Regexp(t, apiTime, info["created_at"])
		require.Nil(t, info["last_health_at"], "never probed by a health loop: null")
		require.Equal(t, "application/json", r.header.Get("Content-Type"))

		r = h.do(http.MethodGet, "/engines/u2", "", key)
		require.Equal(t, "september-engine:2.3.0", r.json(t)["engine_version"])

		r = h.do(http.MethodGet, "/engines", "", key)
		require.Equal(t, http.StatusOK, r.status)
		list := r.json(t)
		require.Equal(t, []string{"engines", "total"}, keysOf(list))
		require.EqualValues(t, 2, list["total"])
		for _, e := range list["engines"].([]any) {
			require.Equal(t, []string{"created_at", "engine_id", "engine_version", "last_health_at", "status", "url", "user_id"},
				keysOf(e.(map[string]any)), "the list never carries keys")
		}

		r = h.do(http.MethodPost, "/engines/u1/admit", "", key)
		require.Equal(t, http.StatusOK, r.status)
		adm := r.json(t)
		require.Equal(t, []string{"admitted", "engine"}, keysOf(adm))
		require.Equal(t, prov.APIKey, adm["engine"].(map[string]any)["api_key"])

		r = h.do(http.MethodPost, "/engines/nobody/admit", `{}`, key)
		require.Equal(t, http.StatusOK, r.status)
		require.JSONEq(t, `{"admitted":false,"engine":null,"reason":"engine_not_found"}`, string(r.body))

		r = h.do(http.MethodPost, "/engines/u1/stop", "", key)
		require.JSONEq(t, `{"status":"stopped","engine_id":"`+prov.EngineID+`"}`, string(r.body))
		r = h.do(http.MethodPost, "/engines/u1/start", "", key)
		require.JSONEq(t, `{"status":"running","url":"`+prov.URL+`"}`, string(r.body))
		r = h.do(http.MethodPost, "/engines/u1/rotate-key", "", key)
		require.Equal(t, []string{"api_key", "engine_id", "status"}, keysOf(r.json(t)))
		h.remember(r.json(t)["api_key"].(string))

		r = h.do(http.MethodGet, "/engines/u1/audit?limit=1", "", key)
		require.Equal(t, http.StatusOK, r.status)
		au := r.json(t)
		require.Equal(t, []string{"entries", "total"}, keysOf(au))
		entry := au["entries"].([]any)[0].(map[string]any)
		require.Equal(t, []string{"action", "actor", "duration_ms", "metadata", "timestamp"}, keysOf(entry))
		require.Regexp(t, apiTime, entry["timestamp"])
		require.IsType(t, map[string]any{}, entry["metadata"])

		r = h.do(http.MethodDelete, "/engines/u1", "", key)
		require.JSONEq(t, `{"status":"destroyed","engine_id":"`+prov.EngineID+`"}`, string(r.body))

		r = h.do(http.MethodGet, "/status", "", key)
		require.Equal(t, []string{"by_status", "health", "total", "unhealthy_count"}, keysOf(r.json(t)))
		r = h.do(http.MethodGet, "/metrics", "", key)
		require.Equal(t, []string{"avg_boot_ms", "crashes_1h", "provisions_1h", "restarts_1h", "total_destroys", "total_provisions"}, keysOf(r.json(t)))
	})
}

func TestRequestID(t *testing.T) {
	h := newHarness(t, storetest.SQLite(t), options{})
	r := h.do(http.MethodGet, "/health", "", map[string]string{api.HeaderRequestID: "req-123.abc"})
	require.Equal(t, "req-123.abc", r.header.Get(api.HeaderRequestID))
	r = h.do(http.MethodGet, "/nowhere", "", map[string]string{api.HeaderRequestID: "bad id with spaces"})
	got := r.header.Get(api.HeaderRequestID)
	require.NotEmpty(t, got)
	require.NotEqual(t, "bad id with spaces", got)
	r = h.do(http.MethodGet, "/health", "", nil)
	require.NotEmpty(t, r.header.Get(api.HeaderRequestID))
	require.Contains(t, h.logs.String(), `"request_id":"req-123.abc"`)
	require.Contains(t, h.logs.String(), `"request_id":"`+got+`"`)
}
