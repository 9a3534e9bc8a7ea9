package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// errBootTimeout: the engine did not answer /health with ok in time.
var errBootTimeout = errors.New("engine did not become healthy in time")

// Boot detection polls /health 25 ms apart for the first second (engines
// usually become ready within it, and the poll interval is pure latency
// added to every provision and wake), then backs off to 500 ms.
const (
	probeFirstDelay = 25 * time.Millisecond
	probeMaxDelay   = 500 * time.Millisecond
	probeSteadyFor  = time.Second
)

func newProbeClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
			MaxIdleConns:        256,
			MaxIdleConnsPerHost: 2,
			IdleConnTimeout:     30 * time.Second,
			DisableCompression:  true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Probe performs one engine health check: GET <url>/health must answer 2xx
// with {"status":"ok"} within timeout.
func Probe(ctx context.Context, c *http.Client, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/health", nil)
	if err != nil {
		return fmt.Errorf("health request: %w", err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("health: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return fmt.Errorf("health body: %w", err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("health: status %d", resp.StatusCode)
	}
	var h struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(body, &h); err != nil || h.Status != "ok" {
		return fmt.Errorf("health: status is not ok")
	}
	return nil
}

// waitHealthy polls the engine until it is healthy or timeout passes.
func (m *Manager) waitHealthy(ctx context.Context, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	delay := probeFirstDelay
	began := time.Now()
	var last error
	for {
		last = Probe(ctx, m.probe, url, m.cfg.ProbeTimeout)
		if last == nil {
			return nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last probe: %v)", errBootTimeout, last)
		case <-t.C:
		}
		if time.Since(began) >= probeSteadyFor {
			delay = min(delay*3/2, probeMaxDelay)
		}
	}
}
