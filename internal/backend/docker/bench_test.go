package docker_test

import (
	"context"
	"testing"
	"time"
)

// BenchmarkCreateStartStopRemove measures one engine's container life on
// its kept volume: create, start (until the daemon reports it started),
// boot (until /health answers), stop with SIGTERM, remove.
func BenchmarkCreateStartStopRemove(b *testing.B) {
	f := setup(b)
	ctx := context.Background()
	e := newEngine(b)
	var phases [5]time.Duration
	step := func(i int, fn func() error) {
		start := time.Now()
		if err := fn(); err != nil {
			b.Fatal(err)
		}
		phases[i] += time.Since(start)
	}
	id := e.spec.EngineID
	for b.Loop() {
		step(0, func() error { _, err := f.b.Create(ctx, e.spec); return err })
		step(1, func() error { return f.b.Start(ctx, id) })
		step(2, func() error { waitHealthy(b, e.spec.Port); return nil })
		step(3, func() error { return f.b.Stop(ctx, id, 10*time.Second) })
		step(4, func() error { return f.b.Remove(ctx, id) })
	}
	for i, name := range []string{"create-ms", "start-ms", "boot-ms", "stop-ms", "remove-ms"} {
		b.ReportMetric(float64(phases[i].Microseconds())/1000/float64(b.N), name)
	}
}

// BenchmarkPauseUnpause measures the sleep/wake round trip of the pause
// sleep mode.
func BenchmarkPauseUnpause(b *testing.B) {
	f := setup(b)
	ctx := context.Background()
	e := newEngine(b)
	if _, err := f.b.Create(ctx, e.spec); err != nil {
		b.Fatal(err)
	}
	if err := f.b.Start(ctx, e.spec.EngineID); err != nil {
		b.Fatal(err)
	}
	waitHealthy(b, e.spec.Port)
	for b.Loop() {
		if err := f.b.Pause(ctx, e.spec.EngineID); err != nil {
			b.Fatal(err)
		}
		if err := f.b.Unpause(ctx, e.spec.EngineID); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkInspect measures one inspect, what reconciliation and start do
// per engine.
func BenchmarkInspect(b *testing.B) {
	f := setup(b)
	ctx := context.Background()
	e := newEngine(b)
	if _, err := f.b.Create(ctx, e.spec); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := f.b.Inspect(ctx, e.spec.EngineID); err != nil {
			b.Fatal(err)
		}
	}
}
