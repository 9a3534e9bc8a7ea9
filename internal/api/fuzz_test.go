package api_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry/storetest"
)

// onlyValidation fails unless err is nil or a VALIDATION_ERROR: a decoder
// never produces anything that would answer 5xx.
func onlyValidation(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	e, ok := bap.AsError(err)
	require.True(t, ok, "decoder returned a non-API error: %v", err)
	require.Equal(t, bap.CodeValidation, e.Code, "decoder returned %v", err)
	require.NotEmpty(t, e.Message)
}

func FuzzDecodeProvision(f *testing.F) {
	for _, s := range []string{
		`{"user_id":"u1"}`, `{"user_id":"u1","engine_version":"september-engine:2.3.0"}`,
		`{"user_id":42}`, `{"user_id":null}`, `{}`, `[]`, `null`, ``, `{"user_id":"a/b"}`,
		`{"user_id":"\u0000"}`, `{"user_id":"u","engine_version":{}}`, `{"user_id":"u"}{}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := api.DecodeProvision(b)
		onlyValidation(t, err)
		if err == nil {
			_, err := bap.ParseUserID(string(req.UserID))
			require.NoError(t, err, "an accepted body has a valid user_id")
		}
	})
}

func FuzzDecodeAdmit(f *testing.F) {
	for _, s := range []string{
		``, `{}`, `{"auto_provision":true}`, `{"auto_provision":true,"auto_wake":false}`,
		`{"auto_wake":"true"}`, `{"auto_wake":null}`, `{"auto_provision":1}`, `[true]`, `true`, `{"x":`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		opts, err := api.DecodeAdmit(b)
		onlyValidation(t, err)
		if err != nil {
			return
		}
		// An accepted body agrees with encoding/json on both switches.
		var v map[string]any
		if len(b) > 0 && json.Unmarshal(b, &v) == nil {
			ap, _ := v["auto_provision"].(bool)
			aw, _ := v["auto_wake"].(bool)
			require.Equal(t, ap, opts.AutoProvision)
			require.Equal(t, aw, opts.AutoWake)
		}
	})
}

func FuzzDecodePolicy(f *testing.F) {
	for _, s := range []string{
		`{"policy":{}}`, `{"policy":{"max_engines":10,"rate_limit_rpm":60}}`, `{"policy":{"max_engines":"10"}}`,
		`{"policy":{"engine_cpus":1.5,"tier":"x"}}`, `{"policy":null}`, `{"policy":[]}`, `{"policy":{"max_running":-1}}`,
		`{"policy":{"max_engines":1e400}}`, `{"policy":{"max_engines":2147483648}}`, `{}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		pol, err := api.DecodePolicyUpdate(b)
		onlyValidation(t, err)
		if err == nil {
			var m map[string]any
			require.NoError(t, json.Unmarshal(pol.JSON(), &m), "an accepted policy is stored as a JSON object")
		}
		reg, err := api.DecodeRegister(b)
		onlyValidation(t, err)
		if err == nil {
			require.NotEmpty(t, reg.Slug)
		}
	})
}

// FuzzUserID drives GET /engines/{user_id} through the whole handler: any
// user id answers 404 (valid, no engine) or 422 (invalid), never 5xx, and
// the handler agrees with bap.ParseUserID.
func FuzzUserID(f *testing.F) {
	for _, s := range []string{"u1", "user@example.com", ".x", "a/b", "", "a b", "é", "..", "%00", "x:y-z_1.2"} {
		f.Add(s)
	}
	h := newHarness(f, storetest.SQLite(f), options{})
	_, p := h.product("fuzzed", "")
	hc := h.srv.Client()
	f.Fuzz(func(t *testing.T, userID string) {
		if userID == "" {
			return // the empty segment is another route (GET /engines)
		}
		req, err := http.NewRequest(http.MethodGet, h.srv.URL+"/engines/"+url.PathEscape(userID), nil)
		require.NoError(t, err)
		req.Header.Set(api.HeaderPlatformKey, p.PlatformAPIKey)
		resp, err := hc.Do(req)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Less(t, resp.StatusCode, 500, "user_id %q: %s", userID, body)
		var env struct {
			Error struct{ Code string } `json:"error"`
		}
		require.NoError(t, json.Unmarshal(body, &env), "%s", body)
		switch env.Error.Code {
		case bap.CodeEngineNotFound:
			require.Equal(t, http.StatusNotFound, resp.StatusCode)
			_, err := bap.ParseUserID(userID)
			require.NoError(t, err, "accepted user_id %q", userID)
		case bap.CodeValidation:
			require.Equal(t, http.StatusUnprocessableEntity, resp.StatusCode)
			_, err := bap.ParseUserID(userID)
			require.Error(t, err, "rejected user_id %q", userID)
		case bap.CodeNotFound:
			// Dot segments and a lone escaped slash are path syntax to the
			// router, not a user id: the route is unknown. None is valid.
			require.Equal(t, http.StatusNotFound, resp.StatusCode)
			_, err := bap.ParseUserID(userID)
			require.Error(t, err, "user_id %q", userID)
		default:
			t.Fatalf("user_id %q: unexpected %d %s", userID, resp.StatusCode, body)
		}
	})
}

// Which keys FuzzHTTP's requests carry (its auth argument, modulo 5).
const (
	fuzzNoKey = iota
	fuzzPlatformKey
	fuzzAdminKey
	fuzzBothKeys
	fuzzWrongKeys
)

// FuzzHTTP drives the whole handler (middleware, router, authentication,
// decoders, handlers, the store and the lifecycle on the fake backend) with
// arbitrary methods, targets, headers and bodies. Each request is parsed
// from raw bytes by net/http's own parser, as the server does: what it
// rejects the server answers itself before any handler. Everything else
// must never panic or answer 500, and every answer outside 2xx must be the
// error envelope with a documented code and its status. Keys are put in
// by the target (auth selects which) so that the fuzzer reaches the
// authenticated routes; "{pid}" in the target is the product's id.
func FuzzHTTP(f *testing.F) {
	for _, s := range []struct {
		method, target, headers, body string
		auth                          uint8
	}{
		{"GET", "/health", "", "", fuzzNoKey},
		{"POST", "/engines/alice/admit", "Content-Type: application/json", `{"auto_provision":true}`, fuzzPlatformKey},
		{"POST", "/engines/provision", "Content-Type: application/json", `{"user_id":"bob","engine_version":"x:1"}`, fuzzPlatformKey},
		{"GET", "/engines/alice", "", "", fuzzPlatformKey},
		{"POST", "/engines/alice/stop", "", "", fuzzPlatformKey},
		{"POST", "/engines/alice/start", "", "", fuzzPlatformKey},
		{"POST", "/engines/alice/rotate-key", "", "", fuzzPlatformKey},
		{"DELETE", "/engines/alice", "", "", fuzzPlatformKey},
		{"GET", "/engines?status=running&limit=5&offset=0", "", "", fuzzPlatformKey},
		{"GET", "/engines?limit=-1", "", "", fuzzPlatformKey},
		{"GET", "/engines/alice/audit?limit=2", "", "", fuzzPlatformKey},
		{"GET", "/status", "", "", fuzzPlatformKey},
		{"GET", "/metrics", "", "", fuzzPlatformKey},
		{"GET", "/metrics/prometheus", "", "", fuzzAdminKey},
		{"POST", "/products/register", "", `{"slug":"s1","display_name":"S","policy":{"max_engines":3}}`, fuzzAdminKey},
		{"PUT", "/products/{pid}/policy", "", `{"policy":{"rate_limit_rpm":1000}}`, fuzzAdminKey},
		{"POST", "/products/{pid}/rotate-platform-key", "", "", fuzzWrongKeys},
		{"GET", "/openapi.json", "Accept: */*", "", fuzzNoKey},
		{"GET", "/products", "", "", fuzzAdminKey},
		{"GET", "/products/fuzzed", "", "", fuzzAdminKey},
		{"GET", "/fleet/engines?product=fuzzed&status=&user_id=AL&limit=3&offset=1", "", "", fuzzAdminKey},
		{"GET", "/engines/alice/logs?tail=5&follow=false", "", "", fuzzPlatformKey},
		{"GET", "/engines?status=", "", "", fuzzPlatformKey},
		{"GET", "/readyz", "", "", fuzzNoKey},
		{"GET", "/livez", "", "", fuzzNoKey},
		{"GET", "/version", "", "", fuzzNoKey},
		{"POST", "/engines/provision", "Transfer-Encoding: chunked", "5\r\n{\"use\r\n0\r\n\r\n", fuzzBothKeys},
		{"PATCH", "/engines/%2e%2e/admit", "X-Request-Id: abc", "{", fuzzPlatformKey},
		{"OPTIONS", "*", "", "", fuzzNoKey},
		{"HEAD", "//engines/../status?x=%zz", "", "", fuzzPlatformKey},
		{"BREW", "/engines/" + strings.Repeat("a", 200), "Content-Type: text/plain\nX-Pad: \x7f", "null", fuzzBothKeys},
	} {
		f.Add(s.method, s.target, s.headers, []byte(s.body), s.auth)
	}
	// A rotated platform key keeps working (the harness clock stands
	// still), so the fuzzer keeps its way into the platform routes.
	h := newHarness(f, storetest.SQLite(f), options{grace: time.Hour})
	_, p := h.product("fuzzed", `{"max_engines": 5}`)
	handler := h.srv.Config.Handler
	f.Fuzz(func(t *testing.T, method, target, headers string, body []byte, auth uint8) {
		var raw bytes.Buffer
		raw.WriteString(method + " " + strings.ReplaceAll(target, "{pid}", p.ProductID) + " HTTP/1.1\r\nHost: orchestrator\r\n")
		for _, line := range strings.Split(headers, "\n") {
			if line != "" {
				raw.WriteString(line + "\r\n")
			}
		}
		switch auth % 5 {
		case fuzzPlatformKey:
			raw.WriteString(api.HeaderPlatformKey + ": " + p.PlatformAPIKey + "\r\n")
		case fuzzAdminKey:
			raw.WriteString(api.HeaderAdminKey + ": " + h.adminKey + "\r\n")
		case fuzzBothKeys:
			raw.WriteString(api.HeaderPlatformKey + ": " + p.PlatformAPIKey + "\r\n" + api.HeaderAdminKey + ": " + h.adminKey + "\r\n")
		case fuzzWrongKeys:
			raw.WriteString(api.HeaderPlatformKey + ": pk-sept-wrong\r\n" + api.HeaderAdminKey + ": wrong\r\n")
		}
		fmt.Fprintf(&raw, "Content-Length: %d\r\n\r\n", len(body))
		raw.Write(body)
		req, err := http.ReadRequest(bufio.NewReader(&raw))
		if err != nil {
			return // net/http answers 400 itself; no handler runs
		}
		// A followed log streams until its client leaves: this client
		// leaves after a while, as a real one would.
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req.WithContext(ctx))
		res := rec.Result()
		got, _ := io.ReadAll(res.Body)
		require.NotEmpty(t, res.Header.Get(api.HeaderRequestID), "every answer carries its request id")
		require.NotEqual(t, http.StatusInternalServerError, res.StatusCode, "%s %q: %s", method, target, got)
		if res.StatusCode >= 200 && res.StatusCode < 300 {
			return
		}
		require.Equal(t, "application/json", res.Header.Get("Content-Type"), "%d %s", res.StatusCode, got)
		var env struct {
			Error *struct {
				Code    *string `json:"code"`
				Message *string `json:"message"`
			} `json:"error"`
		}
		dec := json.NewDecoder(bytes.NewReader(got))
		dec.DisallowUnknownFields()
		require.NoError(t, dec.Decode(&env), "%d: not the error envelope: %s", res.StatusCode, got)
		require.False(t, dec.More(), "one envelope: %s", got)
		require.NotNil(t, env.Error, "%s", got)
		require.NotNil(t, env.Error.Code, "%s", got)
		require.NotNil(t, env.Error.Message, "%s", got)
		require.NotEmpty(t, *env.Error.Message, "%s", got)
		status, documented := api.StatusOf()[*env.Error.Code]
		require.True(t, documented, "undocumented code %q", *env.Error.Code)
		require.Equal(t, status, res.StatusCode, "code %s answered with the wrong status", *env.Error.Code)
	})
}
