package discovery

import (
	"context"
	"sync"
	"time"

	"github.com/september/bap-engine/internal/registry"
)

// flushTimeout bounds one batch of last_active_at writes.
const flushTimeout = 10 * time.Second

// Run writes recorded admits to last_active_at every TouchInterval and
// prunes the denial samples, until ctx ends; then it flushes what is left
// (bounded by its own timeout) and returns nil. A failed flush is logged
// and retried on the next tick. When EngineTTL is positive, Run also
// watches the store's changes (registry.Watcher), which turns the engine
// cache on while the watch is live.
func (s *Service) Run(ctx context.Context) error {
	if s.cfg.EngineTTL > 0 {
		wctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Go(func() {
			_ = s.store.WatchChanges(wctx, func(ch registry.Change) { s.onChange(wctx, ch) })
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
