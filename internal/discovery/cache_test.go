package discovery_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/discovery"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/pgtest"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/postgres"
)

// watchingStore is the real store as the cached Service sees it: its
// change feed (into which the test can inject reports too), a count of
// the reads an admit makes, and a hook run once after the next read.
type watchingStore struct {
	registry.Store
	reads atomic.Int64

	mu        sync.Mutex
	report    func(registry.Change)
	afterRead func()
	seen      map[registry.Change]int
}

func (w *watchingStore) WatchChanges(ctx context.Context, fn func(registry.Change)) error {
	w.mu.Lock()
	w.report = fn
	w.mu.Unlock()
	return w.Store.WatchChanges(ctx, func(c registry.Change) {
		w.mu.Lock()
		if w.seen == nil {
			w.seen = map[registry.Change]int{}
		}
		w.seen[c]++
		w.mu.Unlock()
		fn(c)
	})
}

// reported is how many times the store reported c.
func (w *watchingStore) reported(c registry.Change) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seen[c]
}

func (w *watchingStore) inject(c registry.Change) {
	w.mu.Lock()
	fn := w.report
	w.mu.Unlock()
	fn(c)
}

func (w *watchingStore) read() {
	w.reads.Add(1)
	w.mu.Lock()
	fn := w.afterRead
	w.afterRead = nil
	w.mu.Unlock()
	if fn != nil {
		fn()
	}
}

func (w *watchingStore) AdmitLookup(ctx context.Context, keyHash, userID string, now time.Time) (bap.Product, *bap.Engine, error) {
	defer w.read()
	return w.Store.AdmitLookup(ctx, keyHash, userID, now)
}

func (w *watchingStore) GetEngineByUser(ctx context.Context, productID, userID string) (bap.Engine, error) {
	defer w.read()
	return w.Store.GetEngineByUser(ctx, productID, userID)
}

// cached gives e a Service over ws (the env's real store) with Run going,
// and waits for its engine cache to be on.
func (e *env) cached(t *testing.T) (*discovery.Service, *watchingStore) {
	t.Helper()
	ws := &watchingStore{Store: e.store.Store}
	svc := discovery.New(ws, e.lm, e.lim, discovery.Config{Now: e.clock.Now})
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	require.Eventually(t, svc.EngineCacheLive, 10*time.Second, 5*time.Millisecond, "the engine cache never came on")
	return svc, ws
}

// cachedEngine is a caching Service and the running engine of user "u" of
// a fresh product: where most engine cache tests start.
type cachedEngine struct {
	svc *discovery.Service
	ws  *watchingStore
	h   string // the product's key hash
	res lifecycle.Result
}

func (e *env) cachedEngine(t *testing.T) cachedEngine {
	t.Helper()
	svc, ws := e.cached(t)
	p, h := e.product(t, `{}`)
	return cachedEngine{svc: svc, ws: ws, h: h, res: e.provisioned(t, p, "u")}
}

// settle waits until the store's reports of the writes made so far have
// all reached svc, then admits user once so that its engine is cached. On
// PostgreSQL each write is reported when it returns and again when its
// notification comes back through the listener, a little later; a late
// one would drop the engine from the cache once more. Notifications arrive
// in commit order, so once a marker write made now has come back, every
// earlier one has too.
func settle(t *testing.T, e *env, svc *discovery.Service, ws *watchingStore, keyHash, user string) {
	t.Helper()
	if _, ok := ws.Store.(*postgres.Store); ok {
		marker, _ := e.product(t, `{}`)
		pol, err := bap.ParsePolicy([]byte(`{"max_engines": 1}`))
		require.NoError(t, err)
		_, err = ws.UpdatePolicy(t.Context(), marker.ID, pol,
			audit.Entry{ProductID: marker.ID, Action: audit.PolicyUpdate, Actor: audit.ActorAdmin})
		require.NoError(t, err)
		change := registry.Change{Kind: registry.ChangeProduct, ID: marker.ID}
		require.Eventually(t, func() bool { return ws.reported(change) == 2 }, 10*time.Second, 2*time.Millisecond,
			"the marker's notification never came back")
	}
	requireAdmitted(t, admit(t, svc, keyHash, user, discovery.Options{}), false)
	before := ws.reads.Load()
	requireAdmitted(t, admit(t, svc, keyHash, user, discovery.Options{}), false)
	require.Equal(t, before, ws.reads.Load(), "a settled engine is cached")
}

func admit(t *testing.T, svc *discovery.Service, keyHash, user string, o discovery.Options) discovery.Decision {
	t.Helper()
	_, d, err := svc.Admit(t.Context(), keyHash, bap.UserID(user), o)
	require.NoError(t, err)
	return d
}

// TestEngineCacheAdmitsWithoutTheDatabase: once an admit found a running
// engine, the next admits of it read nothing until the cache's TTL (and
// the product's) has passed.
func TestEngineCacheAdmitsWithoutTheDatabase(t *testing.T) {
	eachStore(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		e := newEnv(t, open, envOptions{})
		c := e.cachedEngine(t)
		svc, ws, h, res := c.svc, c.ws, c.h, c.res
		settle(t, e, svc, ws, h, "u")
		before := ws.reads.Load()
		for range 5 {
			d := admit(t, svc, h, "u", discovery.Options{})
			requireAdmitted(t, d, true)
			require.Equal(t, res.APIKey, d.APIKey)
		}
		require.Equal(t, before, ws.reads.Load(), "admits of a cached engine read nothing")
		st := svc.CacheStats()
		require.True(t, st.Live)
		require.Equal(t, 1, st.Engines)
		require.GreaterOrEqual(t, st.Hits, uint64(5))
		require.EqualValues(t, before, st.Reads, "the Service counts the reads the store saw")
		e.clock.Advance(svc.Config().EngineTTL)
		requireAdmitted(t, admit(t, svc, h, "u", discovery.Options{}), true)
		require.Equal(t, before+1, ws.reads.Load(), "read again after the TTL")
	})
}

// TestEngineCacheDropsChangedEngines: every lifecycle operation of this
// process applies to the very next admit.
func TestEngineCacheDropsChangedEngines(t *testing.T) {
	eachStore(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		e := newEnv(t, open, envOptions{})
		c := e.cachedEngine(t)
		svc, h, res := c.svc, c.h, c.res
		warm := func() {
			t.Helper()
			for range 2 {
				requireAdmitted(t, admit(t, svc, h, "u", discovery.Options{}), true)
			}
		}

		warm()
		_, err := e.lm.Stop(t.Context(), res.Engine.ID, "test")
		require.NoError(t, err)
		d := admit(t, svc, h, "u", discovery.Options{})
		require.False(t, d.Admitted, "admitted to a stopped engine")
		require.Equal(t, discovery.ReasonEngineStopped, d.Reason)
		requireAdmitted(t, admit(t, svc, h, "u", discovery.Options{AutoWake: true}), true)

		warm()
		slept, err := e.lm.Sleep(t.Context(), res.Engine.ID, time.Time{})
		require.NoError(t, err)
		require.True(t, slept)
		d = admit(t, svc, h, "u", discovery.Options{})
		require.Equal(t, discovery.ReasonEngineSleeping, d.Reason)
		requireAdmitted(t, admit(t, svc, h, "u", discovery.Options{AutoWake: true}), true)

		warm()
		rot, err := e.lm.RotateKey(t.Context(), res.Engine.ID, "test")
		require.NoError(t, err)
		d = admit(t, svc, h, "u", discovery.Options{})
		requireAdmitted(t, d, true)
		require.Equal(t, rot.APIKey, d.APIKey, "the old key was served after a rotation")

		warm()
		marked, err := e.lm.MarkFailed(t.Context(), res.Engine.ID, audit.HealthFailed, "probe failures", nil)
		require.NoError(t, err)
		require.True(t, marked)
		d = admit(t, svc, h, "u", discovery.Options{})
		require.Equal(t, discovery.ReasonEngineUnhealthy, d.Reason)
		_, err = e.lm.Start(t.Context(), res.Engine.ID, "test")
		require.NoError(t, err)

		warm()
		_, err = e.lm.Destroy(t.Context(), res.Engine.ID, "test")
		require.NoError(t, err)
		d = admit(t, svc, h, "u", discovery.Options{})
		require.Equal(t, discovery.ReasonEngineNotFound, d.Reason)
		d = admit(t, svc, h, "u", discovery.Options{AutoProvision: true})
		requireAdmitted(t, d, true)
		require.NotEqual(t, res.Engine.ID, d.Engine.ID)
	})
}

// TestEngineCacheRefusesARowReadBeforeAChange: a read that raced with a
// change does not put what it read in the cache, so the admit after the
// change sees it.
func TestEngineCacheRefusesARowReadBeforeAChange(t *testing.T) {
	eachStore(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		e := newEnv(t, open, envOptions{})
		c := e.cachedEngine(t)
		svc, ws, h, res := c.svc, c.ws, c.h, c.res
		// The stop commits after the admit read the running row and before
		// it could cache it.
		ws.mu.Lock()
		ws.afterRead = func() {
			_, err := e.lm.Stop(context.WithoutCancel(t.Context()), res.Engine.ID, "test")
			require.NoError(t, err)
		}
		ws.mu.Unlock()
		requireAdmitted(t, admit(t, svc, h, "u", discovery.Options{}), false)
		// The first admits after the race re-authenticate the product
		// (its read raced too); the later ones would meet a wrongly cached
		// engine.
		for range 3 {
			d := admit(t, svc, h, "u", discovery.Options{})
			require.False(t, d.Admitted, "a row read before the stop was cached")
			require.Equal(t, discovery.ReasonEngineStopped, d.Reason)
		}
	})
}

// TestEngineCacheIsOffWhileTheFeedIsLost: without a live change feed every
// admit reads the database, and a feed back live starts from empty.
func TestEngineCacheIsOffWhileTheFeedIsLost(t *testing.T) {
	eachStore(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		e := newEnv(t, open, envOptions{})
		c := e.cachedEngine(t)
		svc, ws, h := c.svc, c.ws, c.h
		settle(t, e, svc, ws, h, "u")
		before := ws.reads.Load()

		ws.inject(registry.Change{Kind: registry.ChangesLost})
		require.False(t, svc.EngineCacheLive())
		for i := range 3 {
			requireAdmitted(t, admit(t, svc, h, "u", discovery.Options{}), false)
			require.EqualValues(t, before+int64(i)+1, ws.reads.Load(), "an admit without the feed reads")
		}
		ws.inject(registry.Change{Kind: registry.ChangesLive})
		require.True(t, svc.EngineCacheLive())
		requireAdmitted(t, admit(t, svc, h, "u", discovery.Options{}), false)
		requireAdmitted(t, admit(t, svc, h, "u", discovery.Options{}), false)
		require.EqualValues(t, before+4, ws.reads.Load(), "one read refills the cache")
	})
}

// TestEngineCacheSeesOtherProcesses: two orchestrator processes on one
// PostgreSQL database. A stop, a key change and a policy change made by
// the other process apply to this one's admits as soon as PostgreSQL
// delivers the notification (waited for here; never after a TTL).
func TestEngineCacheSeesOtherProcesses(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	openPG := func(t testing.TB) registry.Store {
		s, err := postgres.Open(context.Background(), url)
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		return s
	}
	e := newEnv(t, openPG, envOptions{})
	svc, _ := e.cached(t)
	other := openPG(t)
	p, h := e.product(t, `{}`)
	en, _ := e.engineRow(t, p, "u", bap.StateRunning)
	requireAdmitted(t, admit(t, svc, h, "u", discovery.Options{}), false)
	requireAdmitted(t, admit(t, svc, h, "u", discovery.Options{}), false)

	// The Service's fake clock never moves, so no TTL runs out here: only
	// the notification can make the change apply.
	cur, err := other.GetEngine(t.Context(), en.ID)
	require.NoError(t, err)
	cur.Status = bap.StateStopped
	began := time.Now()
	require.NoError(t, other.UpdateEngine(t.Context(), cur, audit.Entry{EngineID: en.ID, Action: audit.Stop, Actor: audit.ActorSystem}))
	require.Eventually(t, func() bool {
		return admit(t, svc, h, "u", discovery.Options{}).Reason == discovery.ReasonEngineStopped
	}, 5*time.Second, time.Millisecond, "the other process's stop never applied")
	t.Logf("the other process's stop applied after %s", time.Since(began))

	// Back to running (denied admits never count against a rate limit).
	cur.Status = bap.StateRunning
	require.NoError(t, other.UpdateEngine(t.Context(), cur))
	require.Eventually(t, func() bool {
		return admit(t, svc, h, "u", discovery.Options{}).Admitted
	}, 5*time.Second, time.Millisecond, "the other process's start never applied")

	pol, err := bap.ParsePolicy([]byte(`{"rate_limit_rpm": 1}`))
	require.NoError(t, err)
	_, err = other.UpdatePolicy(t.Context(), p.ID, pol, audit.Entry{ProductID: p.ID, Action: audit.PolicyUpdate, Actor: audit.ActorAdmin})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, _, err := svc.Admit(t.Context(), h, "u", discovery.Options{})
		return bap.ErrorCode(err) == bap.CodeRateLimited
	}, 5*time.Second, time.Millisecond, "the other process's policy change never applied")
}
