// Package loop runs the orchestrator's periodic background work the same
// way everywhere: fire once, then on every tick (with jitter, so replicas
// started together drift apart), back off while the work fails (a store or
// backend that is down is not hammered), and stop when the context ends.
// It also holds Backoff, the pure delay function every retry uses.
//
// What belongs here: scheduling only. What each loop does, and whether this
// replica should do it at all, is its caller's business.
package loop

import (
	"cmp"
	"context"
	"log/slog"
	"math/rand/v2"
	"time"
)

// Config tunes Run. Every is required unless Tick is set.
type Config struct {
	// Name labels log lines.
	Name string
	// Every is the period between two runs.
	Every time.Duration
	// Jitter spreads each wait by up to ±Jitter·Every (0 ≤ Jitter < 1).
	Jitter float64
	// MaxBackoff caps the wait after consecutive failures, which grows as
	// Backoff(Every, MaxBackoff, failures-1) (default 30 s, never below
	// Every).
	MaxBackoff time.Duration
	// Timeout bounds one run (default: none beyond the loop's context).
	Timeout time.Duration
	// Tick, when set, replaces the timer: one run at start and one per
	// tick, with no backoff (tests drive loops this way).
	Tick <-chan time.Time
	// Logger receives a warning per failed run (default slog.Default()).
	Logger *slog.Logger
	// OnRun, when set, sees every run's error (nil for success) after it.
	OnRun func(error)
}

// Run calls fn at once, then as Config says, until ctx ends; it returns
// ctx's error. A panic in fn is not recovered: a broken loop should crash
// loudly, not spin.
func Run(ctx context.Context, cfg Config, fn func(ctx context.Context) error) error {
	if cfg.Tick == nil && cfg.Every <= 0 {
		panic("loop.Run: Every must be positive for " + cfg.Name)
	}
	if cfg.Jitter < 0 || cfg.Jitter >= 1 {
		panic("loop.Run: Jitter must be in [0, 1) for " + cfg.Name)
	}
	cfg.MaxBackoff = max(cmp.Or(cfg.MaxBackoff, 30*time.Second), cfg.Every)
	log := cmp.Or(cfg.Logger, slog.Default())
	failures := 0
	for {
		err := once(ctx, cfg.Timeout, fn)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if cfg.OnRun != nil {
			cfg.OnRun(err)
		}
		wait := cfg.Every
		if err != nil {
			failures++
			wait = Backoff(cfg.Every, cfg.MaxBackoff, failures-1)
			log.Warn(cfg.Name+" failed", "err", err, "failures", failures, "retry_in", wait)
		} else {
			if failures > 0 {
				log.Info(cfg.Name+" recovered", "after_failures", failures)
			}
			failures = 0
		}
		if cfg.Tick != nil {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-cfg.Tick:
			}
			continue
		}
		if !Sleep(ctx, Jittered(wait, cfg.Jitter)) {
			return ctx.Err()
		}
	}
}

func once(ctx context.Context, timeout time.Duration, fn func(context.Context) error) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	return fn(ctx)
}

// Jittered returns d spread uniformly by up to ±frac·d.
func Jittered(d time.Duration, frac float64) time.Duration {
	if frac <= 0 || d <= 0 {
		return d
	}
	spread := float64(d) * frac
	return d + time.Duration((rand.Float64()*2-1)*spread)
}

// Sleep waits d or until ctx ends, and reports whether the full wait
// happened.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
