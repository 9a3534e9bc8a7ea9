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
	var h struct {
		Status string `json:"status"`
		Reason string `json:"reason"`
	}
	jsonErr := json.Unmarshal(body, &h)
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		if jsonErr == nil && h.Status != "" {
			// The engine's own word on why it does not serve (an upgrade's
			// UPGRADE_FAILED carries it), bounded.
			why := h.Status
			if h.Reason != "" {
				why += ": " + h.Reason
			}
			return fmt.Errorf("health: status %d (%s)", resp.StatusCode, truncate(why, 200))
		}
		return fmt.Errorf("health: status %d", resp.StatusCode)
	}
	if jsonErr != nil || h.Status != "ok" {
		return fmt.Errorf("health: status is not ok")
	}
	return nil
}

// waitHealthy polls the engine until it is healthy or timeout passes: a
// probe at once, then every 25 ms for the first second, backing off to
// 500 ms. Between those it adds a probe at the moment engines have lately
// become healthy after a start (learned, see learnBoot) and, if that one
// is too early, one more halfway to the next regular probe, so a typical
// boot is noticed about when it happens rather than up to a whole poll
// interval later: that interval is pure latency added to every provision
// and wake.
func (m *Manager) waitHealthy(ctx context.Context, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	began := time.Now()
	last := Probe(ctx, m.probe, url, m.cfg.ProbeTimeout)
	if last == nil {
		return nil // already serving: nothing to learn about boots
	}
	var extra []time.Duration // extra probe times, relative to began
	guess := time.Duration(m.bootGuess.Load())
	if guess > 0 && guess < probeSteadyFor {
		extra = append(extra, guess)
	}
	delay := probeFirstDelay
	next := delay
	for {
		at, isExtra := next, false
		if len(extra) > 0 && extra[0] < next {
			at, isExtra = extra[0], true
			extra = extra[1:]
		}
		t := time.NewTimer(time.Until(began.Add(at)))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last probe: %v)", errBootTimeout, last)
		case <-t.C:
		}
		err := Probe(ctx, m.probe, url, m.cfg.ProbeTimeout)
		if err != nil && ctx.Err() != nil && last != nil {
			// Cut short by the deadline itself: the probe before it holds
			// the engine's last word (a refusal's reason, say).
			err = last
		}
		last = err
		if last == nil {
			m.learnBoot(guess, at, isExtra && at == guess)
			return nil
		}
		if isExtra && at == guess {
			extra = append(extra, guess+(next-guess)/2)
		}
		if !isExtra {
			if at >= probeSteadyFor {
				delay = min(delay*3/2, probeMaxDelay)
			}
			next += delay
		}
	}
}

// learnBoot updates the guess of how long engines take from a start to a
// healthy answer, from the probe that first succeeded (at, after the
// start). A boot caught by the guessed probe moves the guess a little
// earlier, to keep finding the real moment; a boot caught later moves it
// to halfway between the guess and the success.
func (m *Manager) learnBoot(guess, at time.Duration, caughtAtGuess bool) {
	switch {
	case guess == 0 || guess >= probeSteadyFor:
		guess = at / 2
	case caughtAtGuess:
		guess -= guess / 16
	default:
		guess = (guess + at) / 2
	}
	m.bootGuess.Store(int64(guess))
}
