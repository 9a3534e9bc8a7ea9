package discovery

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

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
			return st, registry.PublicErr("touch engines", err)
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
