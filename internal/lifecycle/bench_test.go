package lifecycle_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/lifecycle"
)

// readySince asks the engine how long it has been serving and returns the
// moment it became ready.
func readySince(b *testing.B, url string) time.Time {
	resp, err := http.Get(url + "/health")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var h struct {
		Uptime float64 `json:"uptime_s"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		b.Fatal(err)
	}
	return time.Now().Add(-time.Duration(h.Uptime * float64(time.Second)))
}

// overhead is the orchestrator's part of an operation: its total time minus
// the backend calls and minus the engine's own time to readiness after the
// backend returned.
func overhead(total, backendCalls time.Duration, backendReturned, ready time.Time) time.Duration {
	readiness := max(ready.Sub(backendReturned), 0)
	return total - backendCalls - readiness
}

func median(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	return ds[len(ds)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkProvision measures provision latency with the subprocess backend
// and the reference engine, and the orchestrator overhead within it.
func BenchmarkProvision(b *testing.B) {
	benchProvision(b, func(t testing.TB) backend.Backend { return newSubprocessBackend(t, t.TempDir()) })
}

func benchProvision(b *testing.B, newBackend func(t testing.TB) backend.Backend) {
	en := newEnv(b, newBackend(b), envOptions{})
	ctx := context.Background()
	var totals, overheads []time.Duration
	i := 0
	for b.Loop() {
		i++
		began := time.Now()
		res, err := en.lm.Provision(ctx, en.product, bap.UserID(fmt.Sprintf("bench-%d", i)), "", "bench")
		total := time.Since(began)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		en.backend.mu.Lock()
		calls, returned := en.backend.lastCreateStart, en.backend.startReturned
		en.backend.mu.Unlock()
		totals = append(totals, total)
		overheads = append(overheads, overhead(total, calls, returned, readySince(b, res.Engine.URL)))
		if _, err := en.lm.Destroy(ctx, res.Engine.ID, "bench"); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(ms(median(totals)), "median-ms")
	b.ReportMetric(ms(median(overheads)), "overhead-median-ms")
}

// BenchmarkWake measures waking a sleeping engine in each sleep mode.
func BenchmarkWake(b *testing.B) {
	for _, mode := range []string{lifecycle.SleepMark, lifecycle.SleepPause, lifecycle.SleepStop} {
		b.Run(mode, func(b *testing.B) {
			benchWake(b, mode, func(t testing.TB) backend.Backend { return newSubprocessBackend(t, t.TempDir()) })
		})
	}
}

func benchWake(b *testing.B, mode string, newBackend func(t testing.TB) backend.Backend) {
	en := newEnv(b, newBackend(b), envOptions{sleepMode: mode})
	ctx := context.Background()
	res, err := en.lm.Provision(ctx, en.product, "sleeper", "", "bench")
	if err != nil {
		b.Fatal(err)
	}
	var totals, overheads []time.Duration
	for b.Loop() {
		b.StopTimer()
		if slept, err := en.lm.Sleep(ctx, res.Engine.ID, time.Time{}); err != nil || !slept {
			b.Fatalf("sleep: %v %v", slept, err)
		}
		en.backend.mu.Lock()
		en.backend.lastCreateStart, en.backend.startReturned, en.backend.inspectTime = 0, time.Time{}, 0
		en.backend.mu.Unlock()
		b.StartTimer()
		began := time.Now()
		w, err := en.lm.Wake(ctx, res.Engine.ID, "bench")
		total := time.Since(began)
		if err != nil || w.Engine.Status != bap.StateRunning {
			b.Fatalf("wake: %v", err)
		}
		b.StopTimer()
		en.backend.mu.Lock()
		calls, returned := en.backend.lastCreateStart+en.backend.inspectTime, en.backend.startReturned
		en.backend.mu.Unlock()
		ready := began
		if !returned.IsZero() {
			ready = readySince(b, res.Engine.URL)
		} else {
			returned = began
		}
		totals = append(totals, total)
		overheads = append(overheads, overhead(total, calls, returned, ready))
		b.StartTimer()
	}
	b.ReportMetric(ms(median(totals)), "median-ms")
	b.ReportMetric(ms(median(overheads)), "overhead-median-ms")
}

// BenchmarkRotateKey measures rotate-key (recreate on the same data).
func BenchmarkRotateKey(b *testing.B) {
	benchRotate(b, func(t testing.TB) backend.Backend { return newSubprocessBackend(t, t.TempDir()) })
}

func benchRotate(b *testing.B, newBackend func(t testing.TB) backend.Backend) {
	en := newEnv(b, newBackend(b), envOptions{})
	ctx := context.Background()
	res, err := en.lm.Provision(ctx, en.product, "rotor", "", "bench")
	if err != nil {
		b.Fatal(err)
	}
	var totals []time.Duration
	for b.Loop() {
		began := time.Now()
		if _, err := en.lm.RotateKey(ctx, res.Engine.ID, "bench"); err != nil {
			b.Fatal(err)
		}
		totals = append(totals, time.Since(began))
	}
	b.ReportMetric(ms(median(totals)), "median-ms")
}
