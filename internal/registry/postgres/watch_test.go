package postgres_test

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/pgtest"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/postgres"
	"github.com/september/bap-engine/internal/registry/registrytest"
)

// TestWatchReportsOtherProcessesChanges: changes committed through another
// Store (another orchestrator process) reach the watcher through
// LISTEN/NOTIFY, in commit order, and only for what an admit reads.
func TestWatchReportsOtherProcessesChanges(t *testing.T) {
	ctx := t.Context()
	url := pgtest.URL(t)
	mine, theirs := open(t, url), open(t, url)
	p := registrytest.NewProduct(t, theirs)
	e := registrytest.NewEngine(t, theirs, p.ID, "u1")
	touched := registrytest.NewEngine(t, theirs, p.ID, "u2")
	rec := registrytest.Watch(t, mine)

	eventually := func(c registry.Change, what string) {
		t.Helper()
		require.Eventually(t, func() bool { return rec.Has(c) }, 5*time.Second, 2*time.Millisecond,
			"%s by another process was never reported", what)
	}

	// Bookkeeping writes first, then a change that is reported: once it
	// arrives, anything the bookkeeping would have sent has arrived too.
	require.NoError(t, theirs.TouchActive(ctx, []string{touched.ID}, bap.Now()))
	require.NoError(t, theirs.RecordHealth(ctx, []registry.HealthResult{{EngineID: touched.ID, OK: false, At: bap.Now()}}))
	e.Status = bap.StateSleeping
	require.NoError(t, theirs.UpdateEngine(ctx, e, audit.Entry{EngineID: e.ID, Action: audit.Sleep, Actor: audit.ActorSystem}))
	eventually(registry.Change{Kind: registry.ChangeEngine, ID: e.ID}, "a status change")
	require.False(t, rec.Has(registry.Change{Kind: registry.ChangeEngine, ID: touched.ID}),
		"touches and probe results are not announced")

	pol, err := bap.ParsePolicy([]byte(`{"rate_limit_rpm": 10}`))
	require.NoError(t, err)
	_, err = theirs.UpdatePolicy(ctx, p.ID, pol, audit.Entry{ProductID: p.ID, Action: audit.PolicyUpdate, Actor: audit.ActorAdmin})
	require.NoError(t, err)
	eventually(registry.Change{Kind: registry.ChangeProduct, ID: p.ID}, "a policy change")

	e2 := registrytest.NewEngine(t, theirs, p.ID, "u3")
	require.NoError(t, theirs.DeleteEngine(ctx, e2.ID))
	eventually(registry.Change{Kind: registry.ChangeEngine, ID: e2.ID}, "a delete")

	// A change in a transaction is announced when it commits, and not at
	// all when it rolls back.
	e3 := registrytest.NewEngine(t, theirs, p.ID, "u4")
	require.ErrorIs(t, theirs.InTx(ctx, func(tx registry.Store) error {
		cur := e3
		cur.Status = bap.StateStopped
		if err := tx.UpdateEngine(ctx, cur); err != nil {
			return err
		}
		return errRollback
	}), errRollback)
	e.Status = bap.StateRunning
	require.NoError(t, theirs.UpdateEngine(ctx, e))
	require.Eventually(t, func() bool {
		return len(changesOf(rec, e.ID)) >= 2
	}, 5*time.Second, 2*time.Millisecond, "the wake by another process was never reported")
	require.False(t, rec.Has(registry.Change{Kind: registry.ChangeEngine, ID: e3.ID}), "a rolled-back change is not announced")
}

// TestWatchRecoversFromALostListener: when the listening connection dies,
// the watch reports ChangesLost at once, listens again, reports
// ChangesLive, and goes on reporting other processes' changes.
func TestWatchRecoversFromALostListener(t *testing.T) {
	ctx := t.Context()
	url := pgtest.URL(t)
	mine, theirs := open(t, url), open(t, url)
	p := registrytest.NewProduct(t, theirs)
	e := registrytest.NewEngine(t, theirs, p.ID, "u1")
	rec := registrytest.Watch(t, mine)

	admin, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = admin.Close(ctx) })
	var killed int
	require.NoError(t, admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name = $1 AND datname = current_database()`, postgres.ListenerApplicationName).Scan(&killed))
	require.Equal(t, 1, killed, "one listening connection")

	require.Eventually(t, func() bool {
		all := rec.All()
		lost := false
		for _, c := range all {
			if c.Kind == registry.ChangesLost {
				lost = true
			}
			if lost && c.Kind == registry.ChangesLive {
				return true
			}
		}
		return false
	}, 10*time.Second, 5*time.Millisecond, "want ChangesLost, then ChangesLive again")

	e.Status = bap.StateStopped
	require.NoError(t, theirs.UpdateEngine(ctx, e))
	require.Eventually(t, func() bool { return rec.Has(registry.Change{Kind: registry.ChangeEngine, ID: e.ID}) },
		5*time.Second, 2*time.Millisecond, "changes are reported again after the listener came back")
}

var errRollback = errors.New("roll back")

func changesOf(rec *registrytest.ChangeRecorder, id string) []registry.Change {
	var out []registry.Change
	for _, c := range rec.All() {
		if c.Kind == registry.ChangeEngine && c.ID == id {
			out = append(out, c)
		}
	}
	return out
}

// TestWatchNoticesASilentListener: a listening connection that stays open
// but stops delivering (a network path gone quiet) is noticed by the
// heartbeat and reported lost; once the path is back the watch listens
// again.
func TestWatchNoticesASilentListener(t *testing.T) {
	ctx := t.Context()
	url := pgtest.URL(t)
	cfg, err := pgx.ParseConfig(url)
	require.NoError(t, err)
	proxy := newFreezingProxy(t, fmt.Sprintf("%s:%d", cfg.Host, cfg.Port))
	proxied := strings.Replace(url, fmt.Sprintf("%s:%d", cfg.Host, cfg.Port), proxy.addr(), 1)
	mine, theirs := open(t, proxied), open(t, url)
	p := registrytest.NewProduct(t, theirs)
	e := registrytest.NewEngine(t, theirs, p.ID, "u1")
	rec := registrytest.Watch(t, mine)

	proxy.freeze()
	frozeAt := time.Now()
	require.Eventually(t, func() bool {
		all := rec.All()
		return all[len(all)-1].Kind == registry.ChangesLost
	}, 15*time.Second, 10*time.Millisecond, "a silent listener was never reported lost")
	t.Logf("silent listener reported lost after %s", time.Since(frozeAt).Round(time.Millisecond))

	proxy.thaw()
	require.Eventually(t, func() bool {
		all := rec.All()
		return all[len(all)-1].Kind == registry.ChangesLive
	}, 20*time.Second, 10*time.Millisecond, "the watch never listened again")
	e.Status = bap.StateStopped
	require.NoError(t, theirs.UpdateEngine(ctx, e))
	require.Eventually(t, func() bool { return rec.Has(registry.Change{Kind: registry.ChangeEngine, ID: e.ID}) },
		5*time.Second, 2*time.Millisecond, "changes are reported again")
}

// freezingProxy forwards TCP connections to a target; while frozen it
// holds every byte, in both directions, without closing anything.
type freezingProxy struct {
	ln     net.Listener
	mu     sync.Mutex
	cond   *sync.Cond
	frozen bool
	closed bool
	conns  []net.Conn
}

func newFreezingProxy(t *testing.T, target string) *freezingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &freezingProxy{ln: ln}
	p.cond = sync.NewCond(&p.mu)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			wg.Go(func() { p.pipe(u, c) })
			wg.Go(func() { p.pipe(c, u) })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		p.mu.Lock()
		p.closed = true
		for _, c := range p.conns {
			_ = c.Close()
		}
		p.cond.Broadcast()
		p.mu.Unlock()
		wg.Wait()
	})
	return p
}

func (p *freezingProxy) addr() string { return p.ln.Addr().String() }

func (p *freezingProxy) freeze() {
	p.mu.Lock()
	p.frozen = true
	p.mu.Unlock()
}

func (p *freezingProxy) thaw() {
	p.mu.Lock()
	p.frozen = false
	p.cond.Broadcast()
	p.mu.Unlock()
}

// pipe copies src to dst, holding each chunk while the proxy is frozen.
func (p *freezingProxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for p.frozen && !p.closed {
				p.cond.Wait()
			}
			p.mu.Unlock()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// TestWatchReportsOwnChangesTwice: a change made through the watched Store
// is reported when the write returns, and again when its notification comes
// back through the listener (nothing is skipped as this process's own).
func TestWatchReportsOwnChangesTwice(t *testing.T) {
	ctx := t.Context()
	url := pgtest.URL(t)
	mine := open(t, url)
	p := registrytest.NewProduct(t, mine)
	e := registrytest.NewEngine(t, mine, p.ID, "u1")
	rec := registrytest.Watch(t, mine)

	e.Status = bap.StateStopped
	require.NoError(t, mine.UpdateEngine(ctx, e))
	require.NotEmpty(t, changesOf(rec, e.ID), "reported when the write returned")
	require.Eventually(t, func() bool { return len(changesOf(rec, e.ID)) == 2 },
		5*time.Second, 2*time.Millisecond, "the notification of the own change was not reported")
}
