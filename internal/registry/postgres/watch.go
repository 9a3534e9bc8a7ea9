package postgres

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/september/bap-engine/internal/registry"
)

// Channel is the PostgreSQL notification channel the triggers of migration
// 00002 announce changes on.
const Channel = "bap_engine_changes"

// ListenerApplicationName is the application_name of the connection that
// listens on Channel (visible in pg_stat_activity).
const ListenerApplicationName = "bap-engine-listener"

// Timing of the listener. A heartbeat notification is sent through the pool
// every heartbeatEvery; a listener that has received nothing, heartbeats
// included, for heartbeatDeadline is taken for dead (a connection that
// silently stopped delivering), reported lost and reopened; that is checked
// every heartbeatCheck.
const (
	heartbeatEvery    = time.Second
	heartbeatDeadline = 3 * time.Second
	heartbeatCheck    = 100 * time.Millisecond
	connectTimeout    = 5 * time.Second
	minRelisten       = 100 * time.Millisecond
	maxRelisten       = 5 * time.Second
)

// WatchChanges reports changes (see registry.Watcher): those made through
// this Store as they are made, and those of every process sharing the
// database through LISTEN on Channel, on a connection of its own outside the
// pool. While that connection is down, the report is ChangesLost; it is
// reopened with backoff, and ChangesLive follows once it listens again.
// A change made through this Store is reported twice: when the write
// returns, and again when its notification comes back. The second report
// costs a reader one more read; skipping it would need to know the commit
// was this process's, and a write whose caller gave up (an ended ctx) may
// still commit after the first report.
func (s *Store) WatchChanges(ctx context.Context, fn func(registry.Change)) error {
	var mu sync.Mutex
	deliver := func(c registry.Change) {
		mu.Lock()
		defer mu.Unlock()
		fn(c)
	}
	unsubscribe := s.hub.Subscribe(deliver)
	defer unsubscribe()
	wait := minRelisten
	for {
		began := time.Now()
		wasLive := s.listen(ctx, deliver)
		if ctx.Err() != nil {
			deliver(registry.Change{Kind: registry.ChangesLost})
			return ctx.Err()
		}
		if wasLive && time.Since(began) > maxRelisten {
			wait = minRelisten
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			deliver(registry.Change{Kind: registry.ChangesLost})
			return ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, maxRelisten)
	}
}

// listen opens the listening connection and delivers what arrives on it
// until it fails or ctx ends. It reports whether it got to listen; if so
// it delivered ChangesLive and, on return, ChangesLost.
func (s *Store) listen(ctx context.Context, deliver func(registry.Change)) bool {
	cfg := s.pool.Config().ConnConfig
	cfg.RuntimeParams["application_name"] = ListenerApplicationName
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	conn, err := pgx.ConnectConfig(cctx, cfg)
	if err == nil {
		_, err = conn.Exec(cctx, "LISTEN "+Channel)
	}
	cancel()
	if conn != nil {
		defer func() {
			closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			defer cancel()
			_ = conn.Close(closeCtx)
		}()
	}
	if err != nil {
		return false
	}
	deliver(registry.Change{Kind: registry.ChangesLive})
	defer deliver(registry.Change{Kind: registry.ChangesLost})

	wctx, stop := context.WithCancel(ctx)
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	var wg sync.WaitGroup
	wg.Go(func() { s.heartbeat(wctx, stop, &last) })
	defer wg.Wait()
	defer stop()
	for {
		n, err := conn.WaitForNotification(wctx)
		if err != nil {
			return true
		}
		last.Store(time.Now().UnixNano())
		kind, id, ok := strings.Cut(n.Payload, ":")
		switch {
		case !ok:
			// A heartbeat.
		case kind == "e":
			deliver(registry.Change{Kind: registry.ChangeEngine, ID: id})
		case kind == "p":
			deliver(registry.Change{Kind: registry.ChangeProduct, ID: id})
		}
	}
}

// heartbeat sends a notification on Channel every heartbeatEvery, and
// calls stop once nothing has arrived on the listener for
// heartbeatDeadline. The deadline is checked every heartbeatCheck, apart
// from the sending, so a heartbeat stuck in a slow pool does not delay it.
func (s *Store) heartbeat(ctx context.Context, stop func(), last *atomic.Int64) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		every(ctx, heartbeatEvery, func() bool {
			hctx, cancel := context.WithTimeout(ctx, heartbeatEvery)
			defer cancel()
			_, _ = s.pool.Exec(hctx, "SELECT pg_notify($1, 'h')", Channel)
			return true
		})
	})
	every(ctx, heartbeatCheck, func() bool {
		if time.Since(time.Unix(0, last.Load())) > heartbeatDeadline {
			stop()
			return false
		}
		return true
	})
}

// every calls fn every d until ctx ends or fn returns false.
func every(ctx context.Context, d time.Duration, fn func() bool) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !fn() {
			return
		}
	}
}

// changed reports changes: at once, or when the transaction s runs in
// ends.
func (s *Store) changed(changes ...registry.Change) {
	if s.changes != nil {
		s.changes.Add(changes...)
		return
	}
	s.hub.Publish(changes...)
}
