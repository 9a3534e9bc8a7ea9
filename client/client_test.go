package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/september/bap-engine/client"
)

// The client module depends on nothing but the standard library, tests
// included, so these helpers stand in for an assertion library.

func check(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("unexpected error: %v", err)
	}
}

func equal(t *testing.T, got, want any, what string) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: got %#v, want %#v", what, got, want)
	}
}

// recorded is what the test server saw of one request.
type recorded struct {
	method, path, rawPath, query string
	platformKey, adminKey        string
	contentType                  string
	body                         map[string]any
}

// server answers every request with status and body and records it.
func server(t *testing.T, status int, body string, hdr map[string]string) (*client.Client, *recorded) {
	t.Helper()
	rec := &recorded{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.method, rec.path, rec.rawPath, rec.query = r.Method, r.URL.Path, r.URL.EscapedPath(), r.URL.RawQuery
		rec.platformKey = r.Header.Get(client.HeaderPlatformKey)
		rec.adminKey = r.Header.Get(client.HeaderAdminKey)
		rec.contentType = r.Header.Get("Content-Type")
		if b, _ := io.ReadAll(r.Body); len(b) > 0 {
			if err := json.Unmarshal(b, &rec.body); err != nil {
				t.Errorf("request body is not JSON: %v", err)
			}
		}
		for k, v := range hdr {
			w.Header().Set(k, v)
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	c := client.New(srv.URL+"/", client.WithPlatformKey("pk-test"), client.WithAdminKey("admin-test"),
		client.WithHTTPClient(srv.Client()))
	return c, rec
}

func TestRequestsCarryTheRightKeyPathAndBody(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	c, rec := server(t, 200, `{"admitted":true,"engine":{"engine_id":"e1","user_id":"u/1","status":"running","url":"http://x","api_key":"sk-sept-a","engine_version":"img:1","created_at":"2026-04-27T12:34:56.000Z","last_health_at":null}}`, nil)
	res, err := c.Admit(ctx, "u/1", client.AdmitOptions{AutoProvision: true})
	check(t, err)
	equal(t, rec.method, http.MethodPost, "method")
	equal(t, rec.rawPath, "/engines/u%2F1/admit", "user ids are path-escaped, never path segments")
	equal(t, rec.platformKey, "pk-test", "platform key")
	equal(t, rec.adminKey, "", "admin key on a product route")
	equal(t, rec.contentType, "application/json", "content type")
	equal(t, rec.body, map[string]any{"auto_provision": true, "auto_wake": false}, "admit body")
	equal(t, res.Admitted, true, "admitted")
	equal(t, res.Engine.APIKey, "sk-sept-a", "engine key")
	equal(t, res.Engine.CreatedAt.UTC(), time.Date(2026, 4, 27, 12, 34, 56, 0, time.UTC), "created_at")
	if res.Engine.LastHealthAt != nil {
		t.Fatalf("last_health_at: got %v, want nil", res.Engine.LastHealthAt)
	}

	c, rec = server(t, 200, `{"product_id":"p","slug":"s","platform_api_key":"pk-sept-x"}`, nil)
	p, err := c.RegisterProduct(ctx, client.ProductRequest{Slug: "s", DisplayName: "S", Policy: client.Policy{"max_engines": 3}})
	check(t, err)
	equal(t, rec.adminKey, "admin-test", "admin key")
	equal(t, rec.platformKey, "", "platform key on an admin route")
	equal(t, rec.path, "/products/register", "path")
	equal(t, rec.body, map[string]any{"slug": "s", "display_name": "S", "policy": map[string]any{"max_engines": float64(3)}}, "register body")
	equal(t, p.PlatformAPIKey, "pk-sept-x", "platform key answer")

	c, rec = server(t, 200, `{"engines":[],"total":0}`, nil)
	_, err = c.List(ctx, client.ListOptions{Status: "running", Limit: 5, Offset: 10})
	check(t, err)
	equal(t, rec.query, "limit=5&offset=10&status=running", "list query")

	c, rec = server(t, 200, `{"policy":{}}`, nil)
	pol, err := c.UpdatePolicy(ctx, "p-1", nil)
	check(t, err)
	equal(t, rec.method, http.MethodPut, "method")
	equal(t, rec.body, map[string]any{"policy": map[string]any{}}, "a nil policy is sent as {}")
	equal(t, pol, client.Policy{}, "policy answer")

	c, rec = server(t, 200, `{"status":"ok"}`, nil)
	h, err := c.Health(ctx)
	check(t, err)
	equal(t, h.Status, "ok", "health")
	equal(t, rec.platformKey+rec.adminKey, "", "no key on /health")

	for path, probe := range map[string]func(context.Context) (client.Health, error){"/livez": c.Livez, "/readyz": c.Readyz} {
		h, err = probe(ctx)
		check(t, err)
		equal(t, h.Status, "ok", path)
		equal(t, rec.path, path, "probe path")
		equal(t, rec.platformKey+rec.adminKey, "", "no key on "+path)
	}

	c, rec = server(t, 200, `{"version":"1.2.3","commit":"abc","go":"go1.22.1"}`, nil)
	v, err := c.Version(ctx)
	check(t, err)
	equal(t, rec.path, "/version", "version path")
	equal(t, v, client.Build{Version: "1.2.3", Commit: "abc", Go: "go1.22.1"}, "version")
}

func TestErrorEnvelopeIsDecoded(t *testing.T) {
	t.Parallel()
	c, _ := server(t, 429, `{"error":{"code":"RATE_LIMITED","message":"Rate limit exceeded."}}`, map[string]string{"Retry-After": "7"})
	_, err := c.Admit(context.Background(), "u", client.AdmitOptions{})
	var e *client.Error
	if !errors.As(err, &e) {
		t.Fatalf("got %T %v, want *client.Error", err, err)
	}
	equal(t, *e, client.Error{Status: 429, Code: client.CodeRateLimited, Message: "Rate limit exceeded.", RetryAfter: 7 * time.Second}, "error")
	equal(t, client.ErrorCode(fmt.Errorf("wrapped: %w", err)), client.CodeRateLimited, "ErrorCode through a wrap")
	if !strings.Contains(e.Error(), "RATE_LIMITED") {
		t.Fatalf("Error() = %q does not name the code", e.Error())
	}
}

func TestNonEnvelopeErrorKeepsStatus(t *testing.T) {
	t.Parallel()
	c, _ := server(t, 502, "<html>bad gateway</html>", nil)
	_, err := c.Status(context.Background())
	var e *client.Error
	if !errors.As(err, &e) {
		t.Fatalf("got %T %v, want *client.Error", err, err)
	}
	equal(t, e.Status, 502, "status")
	equal(t, e.Code, "", "code")
	equal(t, e.Message, "<html>bad gateway</html>", "message")
	if !strings.Contains(e.Error(), "HTTP 502") {
		t.Fatalf("Error() = %q does not name the status", e.Error())
	}
}

func TestRetryAfterAsHTTPDate(t *testing.T) {
	t.Parallel()
	at := time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)
	c, _ := server(t, 429, `{"error":{"code":"RATE_LIMITED","message":"x"}}`, map[string]string{"Retry-After": at})
	_, err := c.Admit(context.Background(), "u", client.AdmitOptions{})
	var e *client.Error
	if !errors.As(err, &e) {
		t.Fatalf("got %T %v, want *client.Error", err, err)
	}
	if e.RetryAfter <= 58*time.Minute || e.RetryAfter > time.Hour {
		t.Fatalf("RetryAfter = %s, want about an hour", e.RetryAfter)
	}
}

func TestTransportErrorIsNotAnAPIError(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	_, err := client.New(url).Health(context.Background())
	if err == nil {
		t.Fatal("a closed server answered")
	}
	var e *client.Error
	if errors.As(err, &e) {
		t.Fatalf("a transport error is a *client.Error: %v", e)
	}
	equal(t, client.ErrorCode(err), "", "ErrorCode of a transport error")
}

func TestMalformedSuccessBodyIsAnError(t *testing.T) {
	t.Parallel()
	c, _ := server(t, 200, `{"status":`, nil)
	_, err := c.Stop(context.Background(), "u")
	if err == nil || !strings.Contains(err.Error(), "decode POST /engines/u/stop answer") {
		t.Fatalf("got %v, want a decode error naming the route", err)
	}
}

func TestPrometheusMetricsReturnsText(t *testing.T) {
	t.Parallel()
	c, rec := server(t, 200, "bap_engine_engines{product=\"a\",state=\"running\"} 1\n", nil)
	text, err := c.PrometheusMetrics(context.Background())
	check(t, err)
	if !strings.Contains(text, "bap_engine_engines") {
		t.Fatalf("got %q", text)
	}
	equal(t, rec.adminKey, "admin-test", "admin key")
}
