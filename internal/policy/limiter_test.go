package policy

import (
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/testclock"
)

func newClock() *testclock.Clock {
	return testclock.Fixed(time.Date(2026, 4, 27, 12, 0, 0, 0, time.UTC))
}

// step is one call in a scripted limiter scenario: advance the clock by
// after, then Reserve (or cancel the reservation made at step cancel).
type step struct {
	after  time.Duration
	limit  int
	cancel int // >0: cancel the reservation of step number cancel (1-based) instead of reserving
	ok     bool
	retry  time.Duration
}

func TestLimiterScenarios(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		steps []step
	}{
		{
			name: "burst of 5 at rpm 5: sixth denied until the first leaves",
			steps: []step{
				{limit: 5, ok: true},
				{after: time.Second, limit: 5, ok: true},
				{limit: 5, ok: true},
				{limit: 5, ok: true},
				{limit: 5, ok: true},
				{after: 10 * time.Second, limit: 5, ok: false, retry: 49 * time.Second},
				{after: 48*time.Second + 999*time.Millisecond, limit: 5, ok: false, retry: time.Millisecond},
				{after: time.Millisecond, limit: 5, ok: true},
				{limit: 5, ok: false, retry: time.Second},
			},
		},
		{
			name: "sliding, not fixed: a new minute does not reset the window",
			steps: []step{
				{after: 50 * time.Second, limit: 2, ok: true},
				{limit: 2, ok: true},
				// 20 s later a fixed per-minute counter would have reset.
				{after: 20 * time.Second, limit: 2, ok: false, retry: 40 * time.Second},
				{after: 39 * time.Second, limit: 2, ok: false, retry: time.Second},
				{after: time.Second, limit: 2, ok: true},
				{limit: 2, ok: true},
				{limit: 2, ok: false, retry: 60 * time.Second},
			},
		},
		{
			name: "retry-after counts from the oldest entry that must leave",
			steps: []step{
				{limit: 3, ok: true},
				{after: 10 * time.Second, limit: 3, ok: true},
				{after: 10 * time.Second, limit: 3, ok: true},
				{after: 5 * time.Second, limit: 3, ok: false, retry: 35 * time.Second},
				{after: 35 * time.Second, limit: 3, ok: true},
				{limit: 3, ok: false, retry: 10 * time.Second},
			},
		},
		{
			name: "cancel frees the slot",
			steps: []step{
				{limit: 2, ok: true},
				{limit: 2, ok: true},
				{limit: 2, ok: false, retry: 60 * time.Second},
				{cancel: 2},
				{limit: 2, ok: true},
				{limit: 2, ok: false, retry: 60 * time.Second},
			},
		},
		{
			name: "cancelling the oldest moves retry-after to the next",
			steps: []step{
				{limit: 2, ok: true},
				{after: 20 * time.Second, limit: 2, ok: true},
				{cancel: 1},
				{after: 10 * time.Second, limit: 2, ok: true},
				{limit: 2, ok: false, retry: 50 * time.Second},
			},
		},
		{
			name: "double cancel frees one slot only",
			steps: []step{
				{limit: 2, ok: true},
				{limit: 2, ok: true},
				{cancel: 2},
				{cancel: 2},
				{limit: 2, ok: true},
				{limit: 2, ok: false, retry: 60 * time.Second},
			},
		},
		{
			name: "cancel after the reservation aged out frees nothing",
			steps: []step{
				{limit: 1, ok: true},
				{after: 60 * time.Second, limit: 1, ok: true},
				{cancel: 1},
				{limit: 1, ok: false, retry: 60 * time.Second},
			},
		},
		{
			name: "lowering the limit applies at once, raising it too",
			steps: []step{
				{limit: 10, ok: true},
				{after: 10 * time.Second, limit: 10, ok: true},
				{after: 10 * time.Second, limit: 10, ok: true},
				// 3 counted, new limit 2: two must leave, the second at 70 s.
				{limit: 2, ok: false, retry: 50 * time.Second},
				{after: 40 * time.Second, limit: 2, ok: false, retry: 10 * time.Second},
				{limit: 4, ok: true},
				{limit: 4, ok: true},
				{limit: 4, ok: false, retry: 10 * time.Second},
				{after: 10 * time.Second, limit: 2, ok: false, retry: 50 * time.Second},
			},
		},
		{
			name: "limit 0 and negative are unlimited",
			steps: []step{
				{limit: 0, ok: true},
				{limit: 0, ok: true},
				{limit: -1, ok: true},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newClock()
			l := NewLimiter(c.Now)
			res := make([]Reservation, len(tc.steps)+1)
			for i, s := range tc.steps {
				c.Advance(s.after)
				if s.cancel > 0 {
					res[s.cancel].Cancel()
					continue
				}
				r, ok, retry := l.Reserve("p1", s.limit)
				require.Equal(t, s.ok, ok, "step %d ok", i+1)
				require.Equal(t, s.retry, retry, "step %d retry", i+1)
				res[i+1] = r
			}
		})
	}
}

func TestLimiterDenialCountsNothing(t *testing.T) {
	t.Parallel()
	c := newClock()
	l := NewLimiter(c.Now)
	_, ok, _ := l.Reserve("p", 1)
	require.True(t, ok)
	for range 100 {
		c.Advance(500 * time.Millisecond)
		_, ok, _ := l.Reserve("p", 1)
		require.False(t, ok)
	}
	c.Advance(10 * time.Second) // 60 s after the only counted reservation
	_, ok, _ = l.Reserve("p", 1)
	require.True(t, ok, "denials must not keep the window full")
}

func TestLimiterProductsAreIndependent(t *testing.T) {
	t.Parallel()
	c := newClock()
	l := NewLimiter(c.Now)
	for range 3 {
		_, ok, _ := l.Reserve("a", 3)
		require.True(t, ok)
	}
	_, ok, _ := l.Reserve("a", 3)
	require.False(t, ok)
	_, ok, _ = l.Reserve("b", 3)
	require.True(t, ok)
}

func TestLimiterClockSteppingBack(t *testing.T) {
	t.Parallel()
	c := newClock()
	l := NewLimiter(c.Now)
	c.Advance(10 * time.Second)
	_, ok, _ := l.Reserve("p", 2)
	require.True(t, ok)
	c.Advance(-5 * time.Second)
	_, ok, _ = l.Reserve("p", 2)
	require.True(t, ok)
	_, ok, retry := l.Reserve("p", 2)
	require.False(t, ok)
	require.Equal(t, 60*time.Second, retry, "measured from the clamped time")
}

func TestLimiterDropsIdleProducts(t *testing.T) {
	t.Parallel()
	c := newClock()
	l := NewLimiter(c.Now)
	for i := range 50 {
		_, ok, _ := l.Reserve("idle-"+strconv.Itoa(i), 10)
		require.True(t, ok)
	}
	r, ok, _ := l.Reserve("stale", 10)
	require.True(t, ok)
	require.Equal(t, 51, l.products())

	c.Advance(Window)
	_, ok, _ = l.Reserve("busy", 10)
	require.True(t, ok)
	require.Equal(t, 1, l.products(), "only the product with a counted reservation stays")

	// A reservation from a dropped bucket cancels to nothing, and the
	// product starts afresh.
	r.Cancel()
	for range 10 {
		_, ok, _ := l.Reserve("stale", 10)
		require.True(t, ok)
	}
	_, ok, _ = l.Reserve("stale", 10)
	require.False(t, ok)
}

func TestLimiterRingStaysBounded(t *testing.T) {
	t.Parallel()
	c := newClock()
	l := NewLimiter(c.Now)
	for range 1000 {
		c.Advance(time.Millisecond)
		l.Reserve("p", 100)
	}
	b := l.bucketFor(t, "p")
	require.Equal(t, 100, b.n)
	require.LessOrEqual(t, len(b.ring), 100)

	// Lowering the limit gives memory back once the window fits it: the
	// first 100 calls (at 1…100 ms) were counted; at 60.0985 s only those
	// at 99 and 100 ms remain.
	c.Advance(59*time.Second + 98500*time.Microsecond)
	_, ok, _ := l.Reserve("p", 4)
	require.True(t, ok)
	require.True(t, b == l.bucketFor(t, "p"), "the bucket must survive the sweep")
	require.LessOrEqual(t, len(b.ring), 4)
	require.Equal(t, 3, b.n)

	// Low traffic under a high limit keeps a small ring.
	l.Reserve("q", 1_000_000)
	require.LessOrEqual(t, len(l.bucketFor(t, "q").ring), 8)
}

func TestLimiterAllocations(t *testing.T) {
	c := newClock()
	l := NewLimiter(c.Now)
	require.Zero(t, testing.AllocsPerRun(1000, func() {
		r, ok, _ := l.Reserve("p", 0)
		if !ok {
			t.Fatal("unlimited must admit")
		}
		r.Cancel()
	}), "unlimited path")
	l.Reserve("q", 5)
	require.Zero(t, testing.AllocsPerRun(1000, func() {
		r, ok, _ := l.Reserve("q", 5)
		if !ok {
			t.Fatal("must admit")
		}
		r.Cancel()
	}), "limited path of a known product")
}

func TestLimiterConcurrentExactCount(t *testing.T) {
	t.Parallel()
	c := newClock()
	l := NewLimiter(c.Now)
	const limit, callers, each = 137, 16, 50
	var admitted, cancelled atomic.Int64
	var wg sync.WaitGroup
	for g := range callers {
		wg.Go(func() {
			for i := range each {
				r, ok, retry := l.Reserve("p", limit)
				if !ok {
					if retry <= 0 {
						t.Errorf("denied with retry %v", retry)
					}
					continue
				}
				admitted.Add(1)
				if (g+i)%7 == 0 {
					r.Cancel()
					cancelled.Add(1)
				}
			}
		})
	}
	wg.Wait()
	kept := admitted.Load() - cancelled.Load()
	require.LessOrEqual(t, kept, int64(limit), "more reservations kept than the limit")
	// A cancel near the end may leave a slot free; filling up must then
	// reach exactly the limit.
	for {
		if _, ok, _ := l.Reserve("p", limit); !ok {
			break
		}
		kept++
	}
	require.Equal(t, int64(limit), kept)
	require.Equal(t, limit, l.bucketFor(t, "p").n)
}

func TestRetryAfterSeconds(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		d    time.Duration
		want int
	}{
		{0, 1},
		{-time.Second, 1},
		{time.Nanosecond, 1},
		{time.Second, 1},
		{time.Second + time.Nanosecond, 2},
		{59*time.Second + 999*time.Millisecond, 60},
		{60 * time.Second, 60},
	} {
		require.Equal(t, tc.want, RetryAfterSeconds(tc.d), "%v", tc.d)
	}
	e := RateLimitError(1500 * time.Millisecond)
	require.Equal(t, "RATE_LIMITED", e.Code)
	require.Equal(t, "Rate limit exceeded. Retry in 2 seconds.", e.Message)
	require.Equal(t, 1500*time.Millisecond, e.RetryAfter)
}

func (l *Limiter) products() int {
	n := 0
	l.buckets.Range(func(any, any) bool { n++; return true })
	return n
}

func (l *Limiter) bucketFor(t *testing.T, id string) *bucket {
	t.Helper()
	v, ok := l.buckets.Load(id)
	require.True(t, ok, "product %s has no bucket", id)
	return v.(*bucket)
}

func BenchmarkReserve(b *testing.B) {
	b.Run("unlimited", func(b *testing.B) {
		l := NewLimiter(nil)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				l.Reserve("p", 0)
			}
		})
	})
	b.Run("one-product", func(b *testing.B) {
		l := NewLimiter(nil)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				r, _, _ := l.Reserve("p", 1000)
				r.Cancel()
			}
		})
	})
	b.Run("one-product-full", func(b *testing.B) {
		l := NewLimiter(nil)
		for range 600 {
			l.Reserve("p", 600)
		}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				l.Reserve("p", 600)
			}
		})
	})
	b.Run("1024-products", func(b *testing.B) {
		l := NewLimiter(nil)
		ids := make([]string, 1024)
		for i := range ids {
			ids[i] = "product-" + strconv.Itoa(i)
		}
		var next atomic.Int64
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := int(next.Add(1)) * 7919
			for pb.Next() {
				i++
				r, _, _ := l.Reserve(ids[i%len(ids)], 1000)
				r.Cancel()
			}
		})
	})
}
