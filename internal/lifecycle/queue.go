package lifecycle

import (
	"context"
	"math"
	"sync"
	"time"

	"github.com/september/bap-engine/internal/bap"
)

// provisionQueue bounds the provisions in flight in this process
// (MaxConcurrentProvisions), like JupyterHub's concurrent_spawn_limit: the
// extra ones wait their turn first come, first served, before anything of
// them exists, and one whose wait outlasts the caller's patience is refused
// with RATE_LIMITED and a Retry-After instead of timing out half-made.
type provisionQueue struct {
	limit   int
	mu      sync.Mutex
	free    int
	waiters []chan struct{}
	// avg is a moving average of how long a provision holds its slot, for
	// Retry-After.
	avg time.Duration
}

func newProvisionQueue(limit int) *provisionQueue {
	if limit <= 0 {
		return nil
	}
	return &provisionQueue{limit: limit, free: limit, avg: time.Second}
}

// acquire waits for a slot, at most wait or until ctx ends, and returns its
// release. A nil queue never waits.
func (q *provisionQueue) acquire(ctx context.Context, wait time.Duration) (func(), error) {
	if q == nil {
		return func() {}, nil
	}
	q.mu.Lock()
	if q.free > 0 && len(q.waiters) == 0 {
		q.free--
		q.mu.Unlock()
		return q.releaser(), nil
	}
	ch := make(chan struct{})
	q.waiters = append(q.waiters, ch)
	ahead := len(q.waiters)
	q.mu.Unlock()

	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ch:
		return q.releaser(), nil
	case <-t.C:
	case <-ctx.Done():
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, w := range q.waiters {
		if w == ch {
			q.waiters = append(q.waiters[:i], q.waiters[i+1:]...)
			// The queue drains about limit provisions per average hold.
			retry := time.Duration(math.Ceil(float64(q.avg) * float64(ahead) / float64(q.limit)))
			return nil, &bap.Error{Code: bap.CodeRateLimited,
				Message:    "Too many engines are being provisioned at once; retry shortly.",
				RetryAfter: max(retry, time.Second)}
		}
	}
	// The slot was handed over just as the wait ended: keep it.
	return q.releaser(), nil
}

// releaser returns the function that gives the slot to the next waiter, or
// back, once; it updates the average hold time.
func (q *provisionQueue) releaser() func() {
	began := time.Now()
	var once sync.Once
	return func() {
		once.Do(func() {
			q.mu.Lock()
			defer q.mu.Unlock()
			q.avg = (q.avg*7 + time.Since(began)) / 8
			if len(q.waiters) > 0 {
				ch := q.waiters[0]
				q.waiters = q.waiters[1:]
				close(ch)
				return
			}
			q.free++
		})
	}
}
