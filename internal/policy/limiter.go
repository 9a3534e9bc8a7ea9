package policy

import (
	"sync"
	"sync/atomic"
	"time"
)

// Window is the length of the rate limiter's sliding window.
const Window = 60 * time.Second

// Limiter enforces rate_limit_rpm: at most limit reservations per product in
// any Window-long sliding window (not fixed minutes). It is in memory and per
// process. Products are independent: each has its own lock and its own ring
// of reservation times, holding at most limit entries (fewer while traffic is
// low), and a product idle for a whole window is dropped. Safe for concurrent
// use.
type Limiter struct {
	now     func() time.Time
	buckets sync.Map // product id → *bucket
	// nextSweep (unix nanoseconds of the injected clock) is when idle
	// products are next dropped; sweeping takes sweepMu without waiting.
	nextSweep atomic.Int64
	sweepMu   sync.Mutex
}

// NewLimiter returns a Limiter reading time from now (time.Now when nil).
func NewLimiter(now func() time.Time) *Limiter {
	if now == nil {
		now = time.Now
	}
	l := &Limiter{now: now}
	l.nextSweep.Store(now().Add(Window).UnixNano())
	return l
}

// Reservation is one counted admit. Cancel gives its slot back: an admit
// that ends up denied or failing must not consume the product's budget. The
// zero Reservation (from an unlimited Reserve) cancels to nothing.
type Reservation struct {
	b   *bucket
	seq uint64
}

// Cancel returns the reservation's slot to the window. Cancelling twice, or
// after the reservation has left the window, does nothing.
func (r Reservation) Cancel() {
	if r.b == nil {
		return
	}
	r.b.mu.Lock()
	r.b.cancel(r.seq)
	r.b.mu.Unlock()
}

// Reserve counts one admit of productID against limit reservations per
// Window. It reports ok=false with retryAfter, the exact time until the
// oldest counted reservation that must leave for a slot to free does so,
// when the window is full; a denial counts nothing. limit <= 0 means
// unlimited (and costs nothing). A changed limit applies from this call on:
// lowering it below what the window holds denies until enough entries age
// out.
func (l *Limiter) Reserve(productID string, limit int) (r Reservation, ok bool, retryAfter time.Duration) {
	if limit <= 0 {
		return Reservation{}, true, 0
	}
	now := l.now()
	if now.UnixNano() >= l.nextSweep.Load() {
		l.sweep(now)
	}
	for {
		b := l.bucket(productID)
		b.mu.Lock()
		if b.dead {
			// Dropped by a sweep between the lookup and the lock: a fresh
			// bucket is (or will be) in the map.
			b.mu.Unlock()
			continue
		}
		seq, ok, retryAfter := b.reserve(now, limit)
		b.mu.Unlock()
		if !ok {
			return Reservation{}, false, retryAfter
		}
		return Reservation{b: b, seq: seq}, true, 0
	}
}

func (l *Limiter) bucket(productID string) *bucket {
	if b, ok := l.buckets.Load(productID); ok {
		return b.(*bucket)
	}
	b, _ := l.buckets.LoadOrStore(productID, &bucket{})
	return b.(*bucket)
}

// sweep drops the products whose windows are empty, at most once per
// Window, by whichever caller gets there first.
func (l *Limiter) sweep(now time.Time) {
	if !l.sweepMu.TryLock() {
		return
	}
	defer l.sweepMu.Unlock()
	if now.UnixNano() < l.nextSweep.Load() {
		return
	}
	l.buckets.Range(func(key, v any) bool {
		b := v.(*bucket)
		b.mu.Lock()
		b.expire(now)
		if b.n == 0 {
			b.dead = true
			l.buckets.CompareAndDelete(key, b)
		}
		b.mu.Unlock()
		return true
	})
	l.nextSweep.Store(now.Add(Window).UnixNano())
}

// bucket is one product's window: a ring of the counted reservations in
// time (and sequence) order, oldest at head.
type bucket struct {
	mu   sync.Mutex
	ring []entry
	head int
	n    int
	seq  uint64
	// last is the newest reservation time; a clock that steps back is
	// clamped to it so the ring stays ordered.
	last time.Time
	// dead: dropped from the Limiter's map; callers must look up again.
	dead bool
}

type entry struct {
	at  time.Time
	seq uint64
}

func (b *bucket) at(i int) *entry { return &b.ring[(b.head+i)%len(b.ring)] }

// expire removes the reservations that have left the window at now.
func (b *bucket) expire(now time.Time) {
	for b.n > 0 && now.Sub(b.ring[b.head].at) >= Window {
		b.ring[b.head] = entry{}
		b.head = (b.head + 1) % len(b.ring)
		b.n--
	}
}

func (b *bucket) reserve(now time.Time, limit int) (uint64, bool, time.Duration) {
	if now.Before(b.last) {
		now = b.last
	}
	b.expire(now)
	if len(b.ring) > limit && b.n <= limit {
		// The limit was lowered: give the memory back.
		b.resize(limit)
	}
	if b.n >= limit {
		// n-limit+1 reservations must leave before one more fits; the
		// last of them to leave is the (n-limit)th oldest.
		return 0, false, b.at(b.n - limit).at.Add(Window).Sub(now)
	}
	if b.n == len(b.ring) {
		b.resize(min(max(8, 2*len(b.ring)), limit))
	}
	b.seq++
	*b.at(b.n) = entry{at: now, seq: b.seq}
	b.n++
	b.last = now
	return b.seq, true, 0
}

// resize moves the entries, oldest first, into a ring of size c >= n.
func (b *bucket) resize(c int) {
	ring := make([]entry, c)
	for i := range b.n {
		ring[i] = *b.at(i)
	}
	b.ring, b.head = ring, 0
}

// cancel removes the reservation seq if it is still counted. Sequences grow
// with time, so the ring is searched from the newest end, where a cancelled
// admit usually is.
func (b *bucket) cancel(seq uint64) {
	for i := b.n - 1; i >= 0; i-- {
		s := b.at(i).seq
		if s == seq {
			for j := i; j < b.n-1; j++ {
				*b.at(j) = *b.at(j + 1)
			}
			*b.at(b.n - 1) = entry{}
			b.n--
			return
		}
		if s < seq {
			return
		}
	}
}
