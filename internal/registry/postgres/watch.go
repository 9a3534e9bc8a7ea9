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
// silently stopped delivering), reported lost and reopened.
const (
	heartbeatEvery    = time.Second
	heartbeatDeadline = 3 * time.Second
	connectTimeout    = 5 * time.Second
	minRelisten       = 100 * time.Millisecond
	maxRelisten       = 5 * time.Second
)

// WatchChanges reports changes (see registry.Watcher): those made through
// this Store as they are made, and those of every process sharing the
// database through LISTEN on Channel, on a connection of its own outside the
// pool. While that connection is down, the report is ChangesLost; it is
// reopened with backoff, and ChangesLive follows once it listens again.
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
		case s.own.has(n.PID):
			// Committed through this Store's pool, so already reported
			// when the write returned.
		case kind == "e":
			deliver(registry.Change{Kind: registry.ChangeEngine, ID: id})
		case kind == "p":
			deliver(registry.Change{Kind: registry.ChangeProduct, ID: id})
		}
	}
}

// heartbeat sends a notification on Channel every heartbeatEvery, and
// calls stop when nothing arrived on the listener for heartbeatDeadline.
func (s *Store) heartbeat(ctx context.Context, stop func(), last *atomic.Int64) {
	t := time.NewTicker(heartbeatEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if time.Since(time.Unix(0, last.Load())) > heartbeatDeadline {
			stop()
			return
		}
		hctx, cancel := context.WithTimeout(ctx, heartbeatEvery)
		_, _ = s.pool.Exec(hctx, "SELECT pg_notify($1, 'h')", Channel)
		cancel()
	}
}

// pidSet is a set of PostgreSQL server process ids: those of the pool's
// open connections, whose notifications WatchChanges skips (their commits
// were reported when they returned). A connection leaves it when the pool
// destroys it. A connection the server ended stays in it until the pool
// notices; should the server give its id to another client meanwhile, that
// client's changes would go unnoticed here for at most the reader's TTL.
type pidSet struct {
	mu sync.RWMutex
	m  map[uint32]bool
}

func (p *pidSet) add(pid uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.m[pid] = true
}

func (p *pidSet) remove(pid uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.m, pid)
}

func (p *pidSet) has(pid uint32) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.m[pid]
}

// changed reports changes: at once, or when the transaction s runs in
// ends.
func (s *Store) changed(changes ...registry.Change) {
	if s.changes != nil {
		s.changes.Add(changes...)
		return
	}
	s.hub.Emit(changes...)
}
