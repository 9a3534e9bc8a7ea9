package lifecycle

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/bap"
)

func TestProvisionQueueIsFirstComeFirstServed(t *testing.T) {
	q := newProvisionQueue(2)
	ctx := context.Background()
	r1, err := q.acquire(ctx, time.Second)
	require.NoError(t, err)
	r2, err := q.acquire(ctx, time.Second)
	require.NoError(t, err)

	order := make(chan int, 3)
	releases := make(chan func(), 3)
	for i := range 3 {
		go func() {
			rel, err := q.acquire(ctx, time.Minute)
			if err == nil {
				order <- i
				releases <- rel
			}
		}()
		require.Eventually(t, func() bool {
			q.mu.Lock()
			defer q.mu.Unlock()
			return len(q.waiters) == i+1
		}, time.Second, time.Millisecond, "waiter %d queued", i)
	}
	r1()
	r1() // a second release gives nothing more
	require.Equal(t, 0, <-order)
	r2()
	require.Equal(t, 1, <-order)
	(<-releases)()
	require.Equal(t, 2, <-order)
	(<-releases)()
	(<-releases)()
	q.mu.Lock()
	require.Equal(t, 2, q.free, "every slot back")
	q.mu.Unlock()
}

func TestProvisionQueueRefusesPastItsWait(t *testing.T) {
	q := newProvisionQueue(1)
	ctx := context.Background()
	rel, err := q.acquire(ctx, time.Second)
	require.NoError(t, err)
	_, err = q.acquire(ctx, 20*time.Millisecond)
	e, ok := bap.AsError(err)
	require.True(t, ok, "%v", err)
	require.Equal(t, bap.CodeRateLimited, e.Code)
	require.GreaterOrEqual(t, e.RetryAfter, time.Second)
	q.mu.Lock()
	require.Empty(t, q.waiters, "the refused waiter left the queue")
	q.mu.Unlock()
	rel()
	rel2, err := q.acquire(ctx, time.Second)
	require.NoError(t, err)
	rel2()

	var none *provisionQueue
	r, err := none.acquire(ctx, 0)
	require.NoError(t, err, "no limit: never waits")
	r()
}
