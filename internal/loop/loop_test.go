package loop_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/september/bap-engine/internal/loop"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRunFiresAtOnceThenPerTickAndStops(t *testing.T) {
	tick := make(chan time.Time)
	runs := make(chan int, 10)
	var n atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- loop.Run(ctx, loop.Config{Name: "test", Tick: tick}, func(context.Context) error {
			runs <- int(n.Add(1))
			return nil
		})
	}()
	require.Equal(t, 1, <-runs, "fires once at start, before any tick")
	tick <- time.Now()
	require.Equal(t, 2, <-runs)
	tick <- time.Now()
	require.Equal(t, 3, <-runs)
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	require.Len(t, runs, 0)
}

func TestRunBacksOffOnErrorsAndResets(t *testing.T) {
	var calls []time.Time
	var results []error
	errDown := errors.New("down")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Fail three times, then succeed twice: the waits grow 10, 20, 40 ms
	// and drop back to 10 ms.
	plan := []error{errDown, errDown, errDown, nil, nil}
	err := loop.Run(ctx, loop.Config{Name: "test", Every: 10 * time.Millisecond, MaxBackoff: time.Second,
		OnRun: func(err error) {
			results = append(results, err)
			if len(results) == len(plan) {
				cancel()
			}
		}},
		func(context.Context) error {
			calls = append(calls, time.Now())
			return plan[len(calls)-1]
		})
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, plan, results)
	gaps := make([]time.Duration, len(calls)-1)
	for i := range gaps {
		gaps[i] = calls[i+1].Sub(calls[i])
	}
	require.GreaterOrEqual(t, gaps[0], 10*time.Millisecond)
	require.GreaterOrEqual(t, gaps[1], 20*time.Millisecond, "second failure doubles the wait")
	require.GreaterOrEqual(t, gaps[2], 40*time.Millisecond, "third doubles again")
	require.GreaterOrEqual(t, gaps[3], 10*time.Millisecond)
}

func TestRunTimeoutBoundsOneRun(t *testing.T) {
	tick := make(chan time.Time)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan error, 1)
	go func() {
		_ = loop.Run(ctx, loop.Config{Name: "test", Tick: tick, Timeout: 20 * time.Millisecond,
			OnRun: func(err error) { got <- err }},
			func(ctx context.Context) error {
				<-ctx.Done()
				return ctx.Err()
			})
	}()
	select {
	case err := <-got:
		require.ErrorIs(t, err, context.DeadlineExceeded, "the run's own context ends at Timeout")
	case <-time.After(10 * time.Second):
		t.Fatal("the run was not bounded by Timeout")
	}
}

func TestJitteredStaysInBounds(t *testing.T) {
	for range 1000 {
		d := loop.Jittered(time.Second, 0.2)
		require.GreaterOrEqual(t, d, 800*time.Millisecond)
		require.LessOrEqual(t, d, 1200*time.Millisecond)
	}
	require.Equal(t, time.Second, loop.Jittered(time.Second, 0))
}

func TestSleep(t *testing.T) {
	require.True(t, loop.Sleep(context.Background(), time.Millisecond))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.False(t, loop.Sleep(ctx, time.Hour))
}

func TestRunPanicsOnZeroPeriod(t *testing.T) {
	require.Panics(t, func() { _ = loop.Run(context.Background(), loop.Config{Name: "x"}, nil) })
	require.Panics(t, func() {
		_ = loop.Run(context.Background(), loop.Config{Name: "x", Every: time.Second, Jitter: 1}, nil)
	})
}
