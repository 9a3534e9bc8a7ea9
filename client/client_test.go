package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/client"
)

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
			require.NoError(t, json.Unmarshal(b, &rec.body))
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
	require.NoError(t, err)
	require.Equal(t, http.MethodPost, rec.method)
	require.Equal(t, "/engines/u%2F1/admit", rec.rawPath, "user ids are path-escaped, never path segments")
	require.Equal(t, "pk-test", rec.platformKey)
	require.Empty(t, rec.adminKey)
	require.Equal(t, "application/json", rec.contentType)
	require.Equal(t, map[string]any{"auto_provision": true, "auto_wake": false}, rec.body)
	require.True(t, res.Admitted)
	require.Equal(t, "sk-sept-a", res.Engine.APIKey)
	require.Equal(t, time.Date(2026, 4, 27, 12, 34, 56, 0, time.UTC), res.Engine.CreatedAt.UTC())
	require.Nil(t, res.Engine.LastHealthAt)

	c, rec = server(t, 200, `{"product_id":"p","slug":"s","platform_api_key":"pk-sept-x"}`, nil)
	p, err := c.RegisterProduct(ctx, client.ProductRequest{Slug: "s", DisplayName: "S", Policy: client.Policy{"max_engines": 3}})
	require.NoError(t, err)
	require.Equal(t, "admin-test", rec.adminKey)
	require.Empty(t, rec.platformKey)
	require.Equal(t, "/products/register", rec.path)
	require.Equal(t, map[string]any{"slug": "s", "display_name": "S", "policy": map[string]any{"max_engines": float64(3)}}, rec.body)
	require.Equal(t, "pk-sept-x", p.PlatformAPIKey)

	c, rec = server(t, 200, `{"engines":[],"total":0}`, nil)
	_, err = c.List(ctx, client.ListOptions{Status: "running", Limit: 5, Offset: 10})
	require.NoError(t, err)
	require.Equal(t, "limit=5&offset=10&status=running", rec.query)

	c, rec = server(t, 200, `{"policy":{}}`, nil)
	pol, err := c.UpdatePolicy(ctx, "p-1", nil)
	require.NoError(t, err)
	require.Equal(t, http.MethodPut, rec.method)
	require.Equal(t, map[string]any{"policy": map[string]any{}}, rec.body)
	require.Equal(t, client.Policy{}, pol)

	c, rec = server(t, 200, `{"status":"ok"}`, nil)
	h, err := c.Health(ctx)
	require.NoError(t, err)
	require.Equal(t, "ok", h.Status)
	require.Empty(t, rec.platformKey)
	require.Empty(t, rec.adminKey)
}

func TestErrorEnvelopeIsDecoded(t *testing.T) {
	t.Parallel()
	c, _ := server(t, 429, `{"error":{"code":"RATE_LIMITED","message":"Rate limit exceeded."}}`, map[string]string{"Retry-After": "7"})
	_, err := c.Admit(context.Background(), "u", client.AdmitOptions{})
	var e *client.Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, client.Error{Status: 429, Code: client.CodeRateLimited, Message: "Rate limit exceeded.", RetryAfter: 7 * time.Second}, *e)
	require.Equal(t, client.CodeRateLimited, client.ErrorCode(fmt.Errorf("wrapped: %w", err)))
	require.Contains(t, e.Error(), "RATE_LIMITED")
}

func TestNonEnvelopeErrorKeepsStatus(t *testing.T) {
	t.Parallel()
	c, _ := server(t, 502, "<html>bad gateway</html>", nil)
	_, err := c.Status(context.Background())
	var e *client.Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, 502, e.Status)
	require.Empty(t, e.Code)
	require.Equal(t, "<html>bad gateway</html>", e.Message)
	require.Contains(t, e.Error(), "HTTP 502")
}

func TestRetryAfterAsHTTPDate(t *testing.T) {
	t.Parallel()
	at := time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)
	c, _ := server(t, 429, `{"error":{"code":"RATE_LIMITED","message":"x"}}`, map[string]string{"Retry-After": at})
	_, err := c.Admit(context.Background(), "u", client.AdmitOptions{})
	var e *client.Error
	require.ErrorAs(t, err, &e)
	require.Greater(t, e.RetryAfter, 58*time.Minute)
	require.LessOrEqual(t, e.RetryAfter, time.Hour)
}

func TestTransportErrorIsNotAnAPIError(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	_, err := client.New(url).Health(context.Background())
	require.Error(t, err)
	var e *client.Error
	require.False(t, errors.As(err, &e))
	require.Empty(t, client.ErrorCode(err))
}

func TestMalformedSuccessBodyIsAnError(t *testing.T) {
	t.Parallel()
	c, _ := server(t, 200, `{"status":`, nil)
	_, err := c.Stop(context.Background(), "u")
	require.ErrorContains(t, err, "decode POST /engines/u/stop answer")
}

func TestPrometheusMetricsReturnsText(t *testing.T) {
	t.Parallel()
	c, rec := server(t, 200, "bap_engine_engines{product=\"a\",state=\"running\"} 1\n", nil)
	text, err := c.PrometheusMetrics(context.Background())
	require.NoError(t, err)
	require.Contains(t, text, "bap_engine_engines")
	require.Equal(t, "admin-test", rec.adminKey)
}
