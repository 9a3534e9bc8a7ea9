package health

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/september/bap-engine/internal/registry"
)

// Limits of the result batches.
const (
	// writeChunk bounds one RecordHealth call (one transaction).
	writeChunk = 1000
	// maxPending bounds the results kept while the registry cannot be
	// written; beyond it the oldest are dropped (a later probe says more).
	maxPending = 100_000
	// finalFlushTimeout bounds the last write at shutdown.
	finalFlushTimeout = 5 * time.Second
)

// writer batches probe results into RecordHealth calls.
type writer struct {
	store registry.Store
	log   *slog.Logger
	size  int
	full  chan struct{}

	mu      sync.Mutex
	pending []registry.HealthResult

	// flushMu serializes flushes, so a caller of flush knows every result
	// added before the call is written when it returns nil.
	flushMu sync.Mutex
	down    bool // the last write failed (guarded by flushMu)
}

func newWriter(store registry.Store, log *slog.Logger, size int) *writer {
	return &writer{store: store, log: log, size: size, full: make(chan struct{}, 1)}
}

// add queues one result; a full batch wakes the flusher.
func (w *writer) add(r registry.HealthResult) {
	w.mu.Lock()
	w.pending = append(w.pending, r)
	n := len(w.pending)
	w.mu.Unlock()
	if n >= w.size {
		select {
		case w.full <- struct{}{}:
		default:
		}
	}
}

// flush writes every queued result, in order. On error the unwritten
// results are queued again in front of newer ones.
func (w *writer) flush(ctx context.Context) error {
	w.flushMu.Lock()
	defer w.flushMu.Unlock()
	w.mu.Lock()
	batch := w.pending
	w.pending = nil
	w.mu.Unlock()
	for len(batch) > 0 {
		n := min(len(batch), writeChunk)
		if err := w.store.RecordHealth(ctx, batch[:n]); err != nil {
			w.requeue(batch)
			if !w.down {
				w.down = true
				w.log.Warn("health: results not recorded; retrying", "err", err)
			}
			return fmt.Errorf("record %d health results: %w", len(batch), err)
		}
		batch = batch[n:]
	}
	if w.down {
		w.down = false
		w.log.Info("health: results recorded again")
	}
	return nil
}

func (w *writer) requeue(batch []registry.HealthResult) {
	w.mu.Lock()
	defer w.mu.Unlock()
	all := append(batch, w.pending...)
	if drop := len(all) - maxPending; drop > 0 {
		w.log.Warn("health: dropping old unrecorded results", "count", drop)
		all = all[drop:]
	}
	w.pending = all
}

// run flushes every period, or when a batch is full, until ctx ends; then
// writes what is left.
func (w *writer) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalFlushTimeout)
			defer cancel()
			if err := w.flush(fctx); err != nil {
				w.log.Warn("health: last results not recorded", "err", err)
			}
			return
		case <-t.C:
		case <-w.full:
		}
		_ = w.flush(ctx) // a failure is logged once and retried next time
	}
}
