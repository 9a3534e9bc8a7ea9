package loadtest_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/loadtest"
)

var errOdd = errors.New("every third request fails")

func TestRunCountsSuccessesAndFailures(t *testing.T) {
	t.Parallel()
	var calls, fails atomic.Int64
	r := loadtest.Run(t.Context(), loadtest.Config{Clients: 4, Duration: 50 * time.Millisecond}, func(ctx context.Context, _ *rand.Rand) error {
		time.Sleep(100 * time.Microsecond)
		if calls.Add(1)%3 == 0 {
			fails.Add(1)
			return errOdd
		}
		return nil
	})
	require.Equal(t, 4, r.Clients)
	require.Positive(t, r.Requests)
	require.Equal(t, int(calls.Load()-fails.Load()), r.Requests)
	require.Equal(t, int(fails.Load()), r.Errors)
	require.ErrorIs(t, r.FirstErr, errOdd)
	require.GreaterOrEqual(t, r.Elapsed, 50*time.Millisecond, "no request starts after the deadline, none before the start")
	require.GreaterOrEqual(t, r.Quantile(0.5), 100*time.Microsecond, "latency covers the whole op")
	require.Positive(t, r.Throughput())
}

func TestRunUsesEveryClientConcurrently(t *testing.T) {
	t.Parallel()
	const clients = 8
	// Every client must be inside op at once for the barrier to open: a
	// generator that ran clients one after another would never finish a
	// request, and the test would report zero successes.
	var mu sync.Mutex
	waiting := 0
	open := make(chan struct{})
	rngs := map[*rand.Rand]bool{}
	r := loadtest.Run(t.Context(), loadtest.Config{Clients: clients, Duration: 20 * time.Millisecond}, func(ctx context.Context, rng *rand.Rand) error {
		mu.Lock()
		rngs[rng] = true
		waiting++
		if waiting == clients {
			close(open)
		}
		mu.Unlock()
		select {
		case <-open:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	require.Zero(t, r.Errors)
	require.GreaterOrEqual(t, r.Requests, clients)
	require.Len(t, rngs, clients, "each client has its own random source")
}

func TestRunStopsWhenContextEnds(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	var calls atomic.Int64
	r := loadtest.Run(ctx, loadtest.Config{Clients: 3, Duration: time.Hour}, func(ctx context.Context, _ *rand.Rand) error {
		n := calls.Add(1)
		if n == 10 {
			cancel()
		}
		if n >= 10 {
			// Calls from the 10th on end with the context, however the
			// goroutines are scheduled, so each is cut short.
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	})
	require.Zero(t, r.Errors, "requests cut short by the end of ctx are not failures")
	require.NoError(t, r.FirstErr)
	// Run returned long before its hour: each client stopped after the call
	// it was in once ctx ended, so at most one call per client from the 10th.
	require.Equal(t, 9, r.Requests, "calls 1..9 succeeded, none after")
	require.GreaterOrEqual(t, calls.Load(), int64(10))
	require.LessOrEqual(t, calls.Load(), int64(12), "clients stop once ctx ends")
}

func TestRunWithEndedContextDoesNothing(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	r := loadtest.Run(ctx, loadtest.Config{Clients: 2, Duration: time.Second}, func(context.Context, *rand.Rand) error {
		t.Error("op called after ctx ended")
		return nil
	})
	require.Zero(t, r.Requests)
	require.Zero(t, r.Errors)
}

func TestRunRejectsNonsense(t *testing.T) {
	t.Parallel()
	op := func(context.Context, *rand.Rand) error { return nil }
	require.Panics(t, func() { loadtest.Run(t.Context(), loadtest.Config{Clients: 0, Duration: time.Second}, op) })
	require.Panics(t, func() { loadtest.Run(t.Context(), loadtest.Config{Clients: 1, Duration: 0}, op) })
	require.Panics(t, func() { loadtest.Run(t.Context(), loadtest.Config{Clients: 1, Duration: time.Second, Rate: -1}, op) })
}

func TestPacedRunSendsExactlyTheDueRequests(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	r := loadtest.Run(t.Context(), loadtest.Config{Clients: 4, Duration: 50 * time.Millisecond, Rate: 1000},
		func(context.Context, *rand.Rand) error {
			calls.Add(1)
			return nil
		})
	// Requests are due at 0, 1, ..., 49 ms: exactly 50 start before the
	// deadline, however fast or slow the clients are.
	require.Equal(t, int64(50), calls.Load())
	require.Equal(t, 50, r.Requests)
	require.InDelta(t, 1000.0, r.Offered, 0)
	require.GreaterOrEqual(t, r.Elapsed, 49*time.Millisecond, "the last request waits until it is due")
}

func TestPacedRunCountsQueueingInLatency(t *testing.T) {
	t.Parallel()
	// One client, a request due every millisecond, each taking at least
	// 2 ms: request k starts no earlier than 2k ms and ends no earlier than
	// 2(k+1) ms, so its latency from its due time k ms is at least k+2 ms.
	// A generator that timed from the send instead would see about 2 ms.
	r := loadtest.Run(t.Context(), loadtest.Config{Clients: 1, Duration: 20 * time.Millisecond, Rate: 1000},
		func(context.Context, *rand.Rand) error {
			time.Sleep(2 * time.Millisecond)
			return nil
		})
	require.Equal(t, 20, r.Requests)
	require.GreaterOrEqual(t, r.Quantile(1), 21*time.Millisecond)
}
