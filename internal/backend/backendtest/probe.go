package backendtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// WaitHealthy polls url's GET /health until it answers 200 with
// {"status":"ok"} or ctx ends; it then returns the last failure.
func WaitHealthy(ctx context.Context, url string) error {
	delay := 25 * time.Millisecond
	var last error
	for {
		last = probe(ctx, url, 2*time.Second)
		if last == nil {
			return nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("engine at %s not healthy: %w (last probe: %w)", url, ctx.Err(), last)
		case <-t.C:
		}
		delay = min(delay*2, 250*time.Millisecond)
	}
}

// probe makes one health request.
func probe(ctx context.Context, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&body); err != nil {
		return fmt.Errorf("health: status %d, undecodable body: %w", resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK || body.Status != "ok" {
		return fmt.Errorf("health: status %d, %q", resp.StatusCode, body.Status)
	}
	return nil
}

// NewKey returns a fresh engine key (sk-sept- format) and its hash.
func NewKey() (key, hash string) {
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	key = "sk-sept-" + base64.RawURLEncoding.EncodeToString(raw)
	sum := sha256.Sum256([]byte(key))
	return key, hex.EncodeToString(sum[:])
}

// ports hands out distinct free loopback ports to the tests of a process.
var ports = struct {
	sync.Mutex
	given map[int]bool
}{given: map[int]bool{}}
