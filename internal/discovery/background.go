package discovery

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// flushTimeout bounds one batch of last_active_at writes.
const flushTimeout = 10 * time.Second

// Run writes recorded admits to last_active_at every TouchInterval and
// prunes the denial samples, until ctx ends; then it flushes what is left
// (bounded by its own timeout) and returns nil. A failed flush is logged
// and retried on the next tick. When the store reports changes
// (registry.Watcher) and EngineTTL is positive, Run also watches them, which
// turns the engine cache on while the watch is live.
func (s *Service) Run(ctx context.Context) error {
	if w, ok := s.store.(registry.Watcher); ok && s.cfg.EngineTTL > 0 {
		wctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Go(func() {
			_ = w.WatchChanges(wctx, func(ch registry.Change) { s.onChange(wctx, ch) })
		})
		defer wg.Wait()
		defer cancel()
	}
	t := time.NewTicker(s.cfg.TouchInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), flushTimeout)
			_, err := s.Flush(fctx)
			cancel()
			if err != nil {
				s.log.Warn("final last_active_at flush", "err", err)
			}
			return nil
		case <-t.C:
			fctx, cancel := context.WithTimeout(ctx, flushTimeout)
			if _, err := s.Flush(fctx); err != nil {
				s.log.Warn("last_active_at flush", "err", err)
			}
			cancel()
			s.denials.prune(s.cfg.Now())
		}
	}
}

// onChange applies a report of the store's change feed to the caches.
func (s *Service) onChange(ctx context.Context, ch registry.Change) {
	s.engines.change(ch)
	switch ch.Kind {
	case registry.ChangeProduct:
		s.products.forget(ch.ID)
	case registry.ChangesLive:
		s.products.clear()
		s.log.Info("admit cache on: the store reports changes")
	case registry.ChangesLost:
		s.products.clear()
		if ctx.Err() == nil {
			s.log.Warn("admit cache off until the store's change feed is back; admits read the database")
		}
	}
}

// EngineCacheLive reports whether the engine cache is on (Run is watching a
// live change feed).
func (s *Service) EngineCacheLive() bool {
	_, live := s.engines.generation()
	return live
}

// FlushStats describes one Flush.
type FlushStats struct {
	// Engines is how many engines had admits recorded.
	Engines int
	// Writes is how many TouchActive calls were made.
	Writes int
}

// Flush writes the admits recorded since the last flush: one TouchActive
// per second of admit time (each engine gets the time of its latest admit,
// to the second). Entries that could not be written are kept for the next
// flush. Run calls it; tests and shutdown may call it directly.
func (s *Service) Flush(ctx context.Context) (FlushStats, error) {
	batch := s.touches.take()
	if len(batch) == 0 {
		return FlushStats{}, nil
	}
	type group struct {
		at  time.Time
		ids []string
	}
	groups := map[int64]*group{}
	for id, at := range batch {
		sec := at.Unix()
		g := groups[sec]
		if g == nil {
			g = &group{}
			groups[sec] = g
		}
		if at.After(g.at) {
			g.at = at
		}
		g.ids = append(g.ids, id)
	}
	secs := make([]int64, 0, len(groups))
	for sec := range groups {
		secs = append(secs, sec)
	}
	slices.Sort(secs)
	st := FlushStats{Engines: len(batch)}
	for i, sec := range secs {
		g := groups[sec]
		slices.Sort(g.ids)
		if err := s.store.TouchActive(ctx, g.ids, bap.Timestamp(g.at)); err != nil {
			// Keep this group and the later ones for the next flush.
			for _, rest := range secs[i:] {
				for _, id := range groups[rest].ids {
					s.touches.restore(id, batch[id])
				}
			}
			return st, storeErr("touch engines", err)
		}
		st.Writes++
	}
	return st, nil
}

// touches holds the latest admit time of each engine admitted since the
// last flush.
type touches struct {
	mu      sync.Mutex
	pending map[string]time.Time
}

func newTouches() *touches { return &touches{pending: map[string]time.Time{}} }

// record notes an admit of e at now. An engine whose stored last_active_at
// is younger than interval needs no write yet: skipping it keeps the hot
// path off the lock and bounds writes to one per engine per interval even
// across processes.
func (t *touches) record(e *bap.Engine, now time.Time, interval time.Duration) {
	if e.LastActiveAt != nil && now.Sub(*e.LastActiveAt) < interval {
		return
	}
	t.restore(e.ID, now)
}

// restore records at for id unless a later admit is already recorded.
func (t *touches) restore(id string, at time.Time) {
	t.mu.Lock()
	if cur, ok := t.pending[id]; !ok || at.After(cur) {
		t.pending[id] = at
	}
	t.mu.Unlock()
}

// take returns the recorded admits and starts afresh.
func (t *touches) take() map[string]time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.pending) == 0 {
		return nil
	}
	batch := t.pending
	t.pending = make(map[string]time.Time, len(batch))
	return batch
}

// maxSamples bounds the denial sampler's memory. Under a flood of denials
// for more distinct users than this within one interval, further rows are
// dropped rather than memory grown: the audit log is a record, not a
// firehose.
const maxSamples = 1 << 16

// sampler lets at most one event per key through per interval.
type sampler struct {
	mu       sync.Mutex
	interval time.Duration
	last     map[string]time.Time
}

func newSampler(interval time.Duration) *sampler {
	return &sampler{interval: interval, last: map[string]time.Time{}}
}

// allow reports whether an event for key at now is to be recorded, and if
// so counts it.
func (s *sampler) allow(key string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.last[key]; ok && now.Sub(t) < s.interval {
		return false
	}
	if len(s.last) >= maxSamples {
		s.pruneLocked(now)
		if len(s.last) >= maxSamples {
			return false
		}
	}
	s.last[key] = now
	return true
}

// prune forgets keys whose interval has passed.
func (s *sampler) prune(now time.Time) {
	s.mu.Lock()
	s.pruneLocked(now)
	s.mu.Unlock()
}

func (s *sampler) pruneLocked(now time.Time) {
	for k, t := range s.last {
		if now.Sub(t) >= s.interval {
			delete(s.last, k)
		}
	}
}

// maxKeys bounds the decrypted-key cache.
const maxKeys = 4096

// keyCache maps Fernet tokens to the plaintext keys they seal, so a busy
// engine's key is decrypted once rather than on every admit. Reads take no
// lock; when full it is emptied and refills with the keys in use.
type keyCache struct {
	m sync.Map // token → key
	n atomic.Int64
}

func newKeyCache() *keyCache { return &keyCache{} }

func (c *keyCache) get(token string) (string, bool) {
	v, ok := c.m.Load(token)
	if !ok {
		return "", false
	}
	return v.(string), true
}

func (c *keyCache) put(token, key string) {
	if token == "" || key == "" {
		return
	}
	if _, loaded := c.m.LoadOrStore(token, key); loaded {
		return
	}
	if c.n.Add(1) > maxKeys {
		c.m.Clear()
		c.n.Store(0)
	}
}
