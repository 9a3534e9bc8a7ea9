package client

import (
	"context"
	"fmt"
	"io"
	"net/http"
)

// Health reports whether the orchestrator and its database are up; a
// *Error with status 503 when they are not.
func (c *Client) Health(ctx context.Context) (Health, error) {
	return call[Health](ctx, c, http.MethodGet, "/health", nil, authNone, nil)
}

// Version returns the orchestrator's build (no key); it is answered even
// while the orchestrator waits for its database at start.
func (c *Client) Version(ctx context.Context) (Build, error) {
	return call[Build](ctx, c, http.MethodGet, "/version", nil, authNone, nil)
}

// Livez is the liveness probe (no key): the process serves HTTP. It
// checks nothing else.
func (c *Client) Livez(ctx context.Context) (Health, error) {
	return call[Health](ctx, c, http.MethodGet, "/livez", nil, authNone, nil)
}

// Readyz is the readiness probe (no key): the database and the engine
// backend are reachable; a *Error with status 503 (DATABASE_UNAVAILABLE or
// BACKEND_UNAVAILABLE) when they are not.
func (c *Client) Readyz(ctx context.Context) (Health, error) {
	return call[Health](ctx, c, http.MethodGet, "/readyz", nil, authNone, nil)
}

// PrometheusMetrics returns the fleet-wide Prometheus text exposition
// (admin key).
func (c *Client) PrometheusMetrics(ctx context.Context) (string, error) {
	resp, err := c.send(ctx, http.MethodGet, "/metrics/prometheus", nil, authAdmin, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("read /metrics/prometheus: %w", err)
	}
	return string(b), nil
}

// OpenAPI returns the server's OpenAPI 3.1 document.
func (c *Client) OpenAPI(ctx context.Context) (map[string]any, error) {
	return call[map[string]any](ctx, c, http.MethodGet, "/openapi.json", nil, authNone, nil)
}
