package lifecycle

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// These tests drive flights, the per-key serialization every operation goes
// through, directly. synctest's bubble makes "everything else is blocked"
// observable, so the interleavings are exact rather than slept for.

func TestFlightsJoinTheSameOperation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFlights(time.Minute)
		release := make(chan struct{})
		var calls atomic.Int32
		fn := func(context.Context) (Result, error) {
			calls.Add(1)
			<-release
			return Result{outcome: "started"}, nil
		}
		results := make([]Result, 5)
		var wg sync.WaitGroup
		for i := range results {
			wg.Go(func() {
				res, err := f.do(t.Context(), "e1", "start", fn)
				assert.NoError(t, err)
				results[i] = res
			})
		}
		synctest.Wait()
		close(release)
		wg.Wait()
		assert.Equal(t, int32(1), calls.Load(), "five callers of one operation run it once")
		for _, r := range results {
			assert.Equal(t, "started", r.outcome)
		}
		assert.False(t, f.inFlight("e1"), "the slot is gone once nothing runs on the key")
	})
}

func TestFlightsSerializeOperationsOnAKey(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFlights(time.Minute)
		var running, most atomic.Int32
		var order []string
		var mu sync.Mutex
		op := func(name string) func(context.Context) (Result, error) {
			return func(context.Context) (Result, error) {
				n := running.Add(1)
				for {
					m := most.Load()
					if n <= m || most.CompareAndSwap(m, n) {
						break
					}
				}
				time.Sleep(time.Second)
				mu.Lock()
				order = append(order, name)
				mu.Unlock()
				running.Add(-1)
				return Result{outcome: name}, nil
			}
		}
		var wg sync.WaitGroup
		for _, name := range []string{"start", "stop", "rotate-key", "destroy"} {
			wg.Go(func() {
				res, err := f.do(t.Context(), "e1", name, op(name))
				assert.NoError(t, err)
				assert.Equal(t, name, res.outcome, "each caller gets its own operation's result")
			})
		}
		wg.Wait()
		assert.Equal(t, int32(1), most.Load(), "operations on one key never overlap")
		assert.Len(t, order, 4)
	})
}

func TestFlightsRunKeysConcurrently(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFlights(time.Minute)
		var running atomic.Int32
		release := make(chan struct{})
		fn := func(context.Context) (Result, error) {
			running.Add(1)
			<-release
			return Result{}, nil
		}
		var wg sync.WaitGroup
		for _, key := range []string{"e1", "e2", "e3"} {
			wg.Go(func() { _, _ = f.do(t.Context(), key, "start", fn) })
		}
		synctest.Wait()
		assert.Equal(t, int32(3), running.Load(), "different keys do not wait for each other")
		close(release)
		wg.Wait()
	})
}

func TestFlightsQueuedOperationIsJoinedToo(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFlights(time.Minute)
		release := make(chan struct{})
		var stops atomic.Int32
		var wg sync.WaitGroup
		wg.Go(func() {
			_, _ = f.do(t.Context(), "e1", "start", func(context.Context) (Result, error) {
				<-release
				return Result{}, nil
			})
		})
		synctest.Wait()
		for range 3 {
			wg.Go(func() {
				_, err := f.do(t.Context(), "e1", "stop", func(context.Context) (Result, error) {
					stops.Add(1)
					return Result{}, nil
				})
				assert.NoError(t, err)
			})
		}
		synctest.Wait()
		assert.Equal(t, int32(0), stops.Load(), "the stop waits for the start")
		close(release)
		wg.Wait()
		assert.Equal(t, int32(1), stops.Load(), "three callers queued for one stop share one run")
	})
}

func TestFlightsOutliveTheirCallers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFlights(time.Minute)
		ctx, cancel := context.WithCancel(t.Context())
		var finished atomic.Bool
		var sawCancel atomic.Bool
		errc := make(chan error, 1)
		go func() {
			_, err := f.do(ctx, "e1", "provision", func(opCtx context.Context) (Result, error) {
				time.Sleep(10 * time.Second)
				sawCancel.Store(opCtx.Err() != nil)
				finished.Store(true)
				return Result{}, nil
			})
			errc <- err
		}()
		synctest.Wait()
		cancel()
		err := <-errc
		require.ErrorIs(t, err, context.Canceled)
		assert.Contains(t, err.Error(), "provision", "the caller is told what it stopped waiting for")
		assert.True(t, f.inFlight("e1"), "the operation goes on without its caller")
		f.wait()
		assert.True(t, finished.Load())
		assert.False(t, sawCancel.Load(), "the caller's cancellation never reaches the operation")
		assert.False(t, f.inFlight("e1"))
	})
}

func TestFlightsBoundOperationsByTheTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFlights(30 * time.Second)
		start := time.Now()
		_, err := f.do(t.Context(), "e1", "start", func(ctx context.Context) (Result, error) {
			<-ctx.Done()
			return Result{}, ctx.Err()
		})
		require.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Equal(t, 30*time.Second, time.Since(start), "the operation's context ends at the operation timeout")
	})
}

func TestFlightsPanicIsAnErrorAndFreesTheKey(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFlights(time.Minute)
		_, err := f.do(t.Context(), "e1", "rotate-key", func(context.Context) (Result, error) {
			panic("boom")
		})
		require.Error(t, err)
		assert.True(t, strings.Contains(err.Error(), "rotate-key") && strings.Contains(err.Error(), "boom"), err.Error())
		res, err := f.do(t.Context(), "e1", "rotate-key", func(context.Context) (Result, error) {
			return Result{outcome: "rotated"}, nil
		})
		require.NoError(t, err)
		assert.Equal(t, "rotated", res.outcome, "the key is usable after a panic")
	})
}

func TestFlightsIdleWaitsForRunningAndQueued(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFlights(time.Minute)
		first, second := make(chan struct{}), make(chan struct{})
		block := func(ch chan struct{}) func(context.Context) (Result, error) {
			return func(context.Context) (Result, error) { <-ch; return Result{}, nil }
		}
		go func() { _, _ = f.do(t.Context(), "p/u", "provision", block(first)) }()
		synctest.Wait()
		go func() { _, _ = f.do(t.Context(), "p/u", "destroy", block(second)) }()
		synctest.Wait()

		var idle atomic.Bool
		go func() {
			assert.NoError(t, f.idle(t.Context(), "p/u"))
			idle.Store(true)
		}()
		synctest.Wait()
		assert.False(t, idle.Load())
		close(first)
		synctest.Wait()
		assert.False(t, idle.Load(), "idle also waits for what was queued behind the running operation")
		close(second)
		synctest.Wait()
		assert.True(t, idle.Load())

		// idle on a key with nothing returns at once, and honours its context.
		require.NoError(t, f.idle(t.Context(), "other"))
		hold := make(chan struct{})
		go func() { _, _ = f.do(t.Context(), "busy", "start", block(hold)) }()
		synctest.Wait()
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		assert.True(t, errors.Is(f.idle(ctx, "busy"), context.DeadlineExceeded))
		close(hold)
		f.wait()
	})
}
