package discovery_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/discovery"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/policy"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/registrytest"
	"github.com/september/bap-engine/internal/registry/storetest"
	"github.com/september/bap-engine/internal/secret"
	"github.com/september/bap-engine/internal/servertest"
	"github.com/september/bap-engine/internal/testclock"
	"github.com/september/bap-engine/internal/testmain"
)

func TestMain(m *testing.M) {
	os.Exit(testmain.Run(m, testmain.Goroutines(testmain.IdleHTTP()...)))
}

// eachStore runs fn as a parallel subtest per store implementation.
func eachStore(t *testing.T, fn func(t *testing.T, open func(testing.TB) registry.Store)) {
	t.Parallel()
	storetest.Each(t, fn)
}

// env is one test's world (servertest.World on a store behind a hook
// wrapper, its Manager acting as a registered replica) and the Service
// under test.
type env struct {
	*servertest.World
	store  *hookStore
	fake   *backendtest.Fake
	sealer *secret.Sealer
	lm     *lifecycle.Manager
	lim    *policy.Limiter
	clock  *testclock.Clock
	svc    *discovery.Service
}

type envOptions struct {
	bootTimeout time.Duration
}

func newEnv(t testing.TB, open func(testing.TB) registry.Store, o envOptions) *env {
	t.Helper()
	store := &hookStore{Store: open(t)}
	w := servertest.New(t, store, servertest.BootTimeout(o.bootTimeout), servertest.Registered())
	lim := policy.NewLimiter(w.Clock.Now)
	svc := discovery.New(store, w.Manager, lim, discovery.Config{Now: w.Clock.Now})
	return &env{World: w, store: store, fake: w.Fake, sealer: w.Sealer, lm: w.Manager, lim: lim, clock: w.Clock, svc: svc}
}

// otherProcess is a second orchestrator process on e's database: its own
// manager and replica, so no in-process flight is shared with e.lm.
func (e *env) otherProcess(t testing.TB) *lifecycle.Manager {
	t.Helper()
	cfg := e.Config
	cfg.Replica = servertest.RegisteredReplica(t, e.store.Store)
	return lifecycle.New(e.store.Store, e.fake, e.sealer, cfg)
}

// product registers a product with a real platform key and returns it and
// its key hash.
func (e *env) product(t testing.TB, policyJSON string) (bap.Product, string) {
	t.Helper()
	p, _ := e.Product(t, registrytest.WithPolicy(t, policyJSON))
	return p, p.APIKeyHash
}

// engineRow inserts an engine row in state st with a real sealed key (no
// backend instance) and returns it with its plaintext key.
func (e *env) engineRow(t testing.TB, p bap.Product, userID string, st bap.State) (bap.Engine, string) {
	t.Helper()
	k, err := secret.NewEngineKey()
	require.NoError(t, err)
	tok, err := e.sealer.Seal(k)
	require.NoError(t, err)
	en := registrytest.NewEngine(t, e.store, p.ID, userID, registrytest.WithStatus(st), func(en *bap.Engine) {
		en.KeyHash = secret.Hash(k)
		en.KeyEnc = tok
	})
	return en, k
}

// provisioned provisions a real (fake-backend) engine for userID.
func (e *env) provisioned(t testing.TB, p bap.Product, userID string) lifecycle.Result {
	t.Helper()
	res, err := e.lm.Provision(t.Context(), p, bap.UserID(userID), "", p.Slug)
	require.NoError(t, err)
	return res
}

// audits lists the audit rows of a product with the given action.
func (e *env) audits(t testing.TB, productID string, action audit.Action) []audit.Entry {
	t.Helper()
	rows, _, err := e.store.ListAudit(t.Context(), registry.AuditFilter{ProductID: productID, Actions: []audit.Action{action}})
	require.NoError(t, err)
	return rows
}

// hookStore is the real store with two seams for fault and race
// injection: a hook run once right after the next AdmitLookup, and errors
// for TouchActive.
type hookStore struct {
	registry.Store
	mu          sync.Mutex
	afterLookup func(bap.Product, *bap.Engine)
	touchErr    error
	touchCalls  atomic.Int64
	lookups     atomic.Int64
}

func (h *hookStore) onNextLookup(fn func(bap.Product, *bap.Engine)) {
	h.mu.Lock()
	h.afterLookup = fn
	h.mu.Unlock()
}

func (h *hookStore) AdmitLookup(ctx context.Context, keyHash, userID string, now time.Time) (bap.Product, *bap.Engine, error) {
	h.lookups.Add(1)
	p, e, err := h.Store.AdmitLookup(ctx, keyHash, userID, now)
	h.mu.Lock()
	fn := h.afterLookup
	h.afterLookup = nil
	h.mu.Unlock()
	if fn != nil {
		fn(p, e)
	}
	return p, e, err
}

func (h *hookStore) TouchActive(ctx context.Context, ids []string, at time.Time) error {
	h.touchCalls.Add(1)
	h.mu.Lock()
	err := h.touchErr
	h.touchErr = nil
	h.mu.Unlock()
	if err != nil {
		return fmt.Errorf("touch: %w", err)
	}
	return h.Store.TouchActive(ctx, ids, at)
}

// requireCode asserts err is a *bap.Error with code.
func requireCode(t testing.TB, err error, code string) *bap.Error {
	t.Helper()
	require.Error(t, err)
	be, ok := bap.AsError(err)
	require.True(t, ok, "not a *bap.Error: %v", err)
	require.Equal(t, code, be.Code, "error: %v", err)
	return be
}

// requireAdmitted asserts d admits a running engine whose key is real: the
// engine (served by the fake backend) accepts it.
func requireAdmitted(t testing.TB, d discovery.Decision, serving bool) {
	t.Helper()
	require.True(t, d.Admitted, "denied: %s", d.Reason)
	require.Empty(t, d.Reason)
	require.NotNil(t, d.Engine)
	require.Equal(t, bap.StateRunning, d.Engine.Status)
	require.Equal(t, d.Engine.KeyHash, secret.Hash(d.APIKey), "the key must match the engine's hash")
	if serving {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, d.Engine.URL+"/brain", nil)
		require.NoError(t, err)
		req.Header.Set("X-Engine-Key", d.APIKey)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, "the engine must accept the admitted key")
	}
}

func TestAdmitUnknownKey(t *testing.T) {
	eachStore(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		e := newEnv(t, open, envOptions{})
		p, _ := e.product(t, `{}`)
		e.engineRow(t, p, "u1", bap.StateRunning)
		for _, h := range []string{"", registrytest.RandomKeyHash()} {
			got, d, err := e.svc.Admit(t.Context(), h, "u1", discovery.Options{AutoProvision: true})
			requireCode(t, err, bap.CodeInvalidPlatformKey)
			require.Empty(t, got.ID)
			require.False(t, d.Admitted)
		}
	})
}

func TestAdmitBranches(t *testing.T) {
	none := bap.State("")
	tests := []struct {
		name   string
		state  bap.State // none: no engine
		opt    discovery.Options
		reason string // "" means admitted
	}{
		{"none", none, discovery.Options{}, discovery.ReasonEngineNotFound},
		{"none auto_wake only", none, discovery.Options{AutoWake: true}, discovery.ReasonEngineNotFound},
		{"sleeping", bap.StateSleeping, discovery.Options{AutoProvision: true}, discovery.ReasonEngineSleeping},
		{"stopped", bap.StateStopped, discovery.Options{AutoProvision: true}, discovery.ReasonEngineStopped},
		{"failed", bap.StateFailed, discovery.Options{AutoProvision: true, AutoWake: true}, discovery.ReasonEngineUnhealthy},
		{"destroying", bap.StateDestroying, discovery.Options{AutoProvision: true, AutoWake: true}, discovery.ReasonEngineBusy},
		{"running", bap.StateRunning, discovery.Options{}, ""},
	}
	eachStore(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		e := newEnv(t, open, envOptions{})
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				p, h := e.product(t, `{}`)
				var en bap.Engine
				var key string
				if tc.state != none {
					en, key = e.engineRow(t, p, "user-1", tc.state)
				}
				gotP, d, err := e.svc.Admit(t.Context(), h, "user-1", tc.opt)
				require.NoError(t, err)
				require.Equal(t, p.ID, gotP.ID)
				denials := e.audits(t, p.ID, audit.AdmitDenied)
				if tc.reason == "" {
					requireAdmitted(t, d, false)
					require.Equal(t, en.ID, d.Engine.ID)
					require.Equal(t, key, d.APIKey)
					require.Empty(t, denials)
					return
				}
				require.False(t, d.Admitted)
				require.Nil(t, d.Engine)
				require.Empty(t, d.APIKey)
				require.Equal(t, tc.reason, d.Reason)
				require.Len(t, denials, 1)
				row := denials[0]
				require.Equal(t, map[string]any{"reason": tc.reason}, row.Metadata)
				require.Equal(t, p.Slug, row.Actor)
				require.Equal(t, "user-1", row.UserID)
				require.Equal(t, en.ID, row.EngineID, "engine id ('' when none)")
				if tc.state != none {
					cur, err := e.store.GetEngine(t.Context(), en.ID)
					require.NoError(t, err)
					require.Equal(t, tc.state, cur.Status, "a denial changes nothing")
				}
			})
		}
	})
}

// lookupOnly is a Store that can do nothing but AdmitLookup: any other
// call hits the nil embedded interface and panics.
type lookupOnly struct {
	registry.Store // nil
	inner          registry.Store
	calls          atomic.Int64
}

func (l *lookupOnly) AdmitLookup(ctx context.Context, keyHash, userID string, now time.Time) (bap.Product, *bap.Engine, error) {
	l.calls.Add(1)
	return l.inner.AdmitLookup(ctx, keyHash, userID, now)
}

// GetEngineByUser is the one query of an admit whose product is cached.
func (l *lookupOnly) GetEngineByUser(ctx context.Context, productID, userID string) (bap.Engine, error) {
	l.calls.Add(1)
	return l.inner.GetEngineByUser(ctx, productID, userID)
}

func TestAdmitRunningIsOneQuery(t *testing.T) {
	eachStore(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		e := newEnv(t, open, envOptions{})
		p, h := e.product(t, `{"rate_limit_rpm": 100}`)
		en, key := e.engineRow(t, p, "u", bap.StateRunning)
		// Fresh last_active_at, as after a flush: nothing else to write.
		require.NoError(t, e.store.TouchActive(t.Context(), []string{en.ID}, bap.Timestamp(e.clock.Now())))
		lo := &lookupOnly{inner: e.store.Store}
		svc := discovery.New(lo, e.lm, e.lim, discovery.Config{Now: e.clock.Now})
		for i := range 3 {
			_, d, err := svc.Admit(t.Context(), h, "u", discovery.Options{AutoProvision: true, AutoWake: true})
			require.NoError(t, err)
			requireAdmitted(t, d, false)
			require.Equal(t, key, d.APIKey)
			require.EqualValues(t, i+1, lo.calls.Load(), "one store call per admit")
		}
		st, err := svc.Flush(t.Context())
		require.NoError(t, err)
		require.Zero(t, st.Engines)
	})
}

func TestAdmitAutoProvision(t *testing.T) {
	eachStore(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		e := newEnv(t, open, envOptions{})
		p, h := e.product(t, `{}`)
		_, d, err := e.svc.Admit(t.Context(), h, "new-user", discovery.Options{AutoProvision: true})
		require.NoError(t, err)
		requireAdmitted(t, d, true)
		require.Equal(t, "new-user", d.Engine.UserID)
		require.Len(t, e.audits(t, p.ID, audit.Provision), 1)

		// The next admit finds it running and decrypts the same key.
		_, d2, err := e.svc.Admit(t.Context(), h, "new-user", discovery.Options{})
		require.NoError(t, err)
		requireAdmitted(t, d2, true)
		require.Equal(t, d.Engine.ID, d2.Engine.ID)
		require.Equal(t, d.APIKey, d2.APIKey)
		require.Equal(t, 1, e.fake.Calls(backendtest.MethodCreate))
	})
}

func TestAdmitAutoWake(t *testing.T) {
	eachStore(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		e := newEnv(t, open, envOptions{})
		p, h := e.product(t, `{}`)

		asleep := e.provisioned(t, p, "sleeper")
		slept, err := e.lm.Sleep(t.Context(), asleep.Engine.ID, time.Time{})
		require.NoError(t, err)
		require.True(t, slept)
		stopped := e.provisioned(t, p, "stopper")
		_, err = e.lm.Stop(t.Context(), stopped.Engine.ID, "test")
		require.NoError(t, err)

		for _, tc := range []struct {
			user string
			res  lifecycle.Result
		}{{"sleeper", asleep}, {"stopper", stopped}} {
			_, d, err := e.svc.Admit(t.Context(), h, bap.UserID(tc.user), discovery.Options{AutoWake: true})
			require.NoError(t, err, tc.user)
			requireAdmitted(t, d, true)
			require.Equal(t, tc.res.Engine.ID, d.Engine.ID)
			require.Equal(t, tc.res.APIKey, d.APIKey)
		}
		require.Len(t, e.audits(t, p.ID, audit.Wake), 2)
		require.Empty(t, e.audits(t, p.ID, audit.AdmitDenied))
	})
}

func TestAdmitAwaitsProvisioning(t *testing.T) {
	tests := []struct {
		name   string
		then   func(t *testing.T, e *env, en bap.Engine)
		opt    discovery.Options
		reason string // "" means admitted
	}{
		{
			name: "becomes running",
			then: func(t *testing.T, e *env, en bap.Engine) {
				en.Status = bap.StateRunning
				require.NoError(t, e.store.UpdateEngine(context.Background(), en))
			},
		},
		{
			name: "fails",
			then: func(t *testing.T, e *env, en bap.Engine) {
				en.Status = bap.StateFailed
				require.NoError(t, e.store.UpdateEngine(context.Background(), en))
			},
			reason: discovery.ReasonEngineUnhealthy,
		},
		{
			name: "is destroyed",
			then: func(t *testing.T, e *env, en bap.Engine) {
				require.NoError(t, e.store.DeleteEngine(context.Background(), en.ID))
			},
			reason: discovery.ReasonEngineNotFound,
		},
	}
	eachStore(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				e := newEnv(t, open, envOptions{})
				p, h := e.product(t, `{}`)
				en, key := e.engineRow(t, p, "u", bap.StateProvisioning)
				seen := make(chan *bap.Engine, 1)
				e.store.onNextLookup(func(_ bap.Product, got *bap.Engine) { seen <- got })
				type out struct {
					d   discovery.Decision
					err error
				}
				done := make(chan out, 1)
				go func() {
					_, d, err := e.svc.Admit(context.Background(), h, "u", tc.opt)
					done <- out{d, err}
				}()
				got := <-seen
				require.NotNil(t, got)
				require.Equal(t, bap.StateProvisioning, got.Status, "the admit saw the engine provisioning")
				tc.then(t, e, en)
				r := <-done
				require.NoError(t, r.err)
				if tc.reason == "" {
					requireAdmitted(t, r.d, false)
					require.Equal(t, key, r.d.APIKey)
					return
				}
				require.Equal(t, tc.reason, r.d.Reason)
			})
		}
	})
}

func TestAdmitLostProvisionRace(t *testing.T) {
	eachStore(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		e := newEnv(t, open, envOptions{})
		// A second orchestrator process on the same database.
		other := e.otherProcess(t)
		p, h := e.product(t, `{}`)
		var made lifecycle.Result
		e.store.onNextLookup(func(p bap.Product, got *bap.Engine) {
			require.Nil(t, got)
			var err error
			made, err = other.Provision(context.Background(), p, "racer", "", p.Slug)
			require.NoError(t, err)
		})
		_, d, err := e.svc.Admit(t.Context(), h, "racer", discovery.Options{AutoProvision: true})
		require.NoError(t, err)
		requireAdmitted(t, d, true)
		require.Equal(t, made.Engine.ID, d.Engine.ID, "the admit continues with the winner's engine")
		require.Equal(t, made.APIKey, d.APIKey)
		require.Len(t, e.audits(t, p.ID, audit.Provision), 1)
		require.Equal(t, 1, e.fake.Calls(backendtest.MethodCreate))
	})
}

func TestAdmitConcurrentAutoProvision(t *testing.T) {
	eachStore(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		e := newEnv(t, open, envOptions{})
		p, h := e.product(t, `{"rate_limit_rpm": 1000}`)
		// Half the callers come through a second process's manager and
		// service (same database, same limiter budget is per process).
		other := e.otherProcess(t)
		svc2 := discovery.New(e.store, other, policy.NewLimiter(e.clock.Now), discovery.Config{Now: e.clock.Now})

		const n = 100
		decisions, errs := registrytest.Concurrently(n, func(i int) (discovery.Decision, error) {
			svc := e.svc
			if i%2 == 1 {
				svc = svc2
			}
			_, d, err := svc.Admit(context.Background(), h, "crowd", discovery.Options{AutoProvision: true})
			return d, err
		})
		for i := range n {
			require.NoError(t, errs[i], "admit %d", i)
			requireAdmitted(t, decisions[i], false)
			require.Equal(t, decisions[0].Engine.ID, decisions[i].Engine.ID, "admit %d got another engine", i)
			require.Equal(t, decisions[0].APIKey, decisions[i].APIKey)
		}
		requireAdmitted(t, decisions[0], true)
		counts, err := e.store.CountByStatus(t.Context(), p.ID)
		require.NoError(t, err)
		require.Equal(t, map[bap.State]int{bap.StateRunning: 1}, counts)
		require.Len(t, e.audits(t, p.ID, audit.Provision), 1)
		require.Empty(t, e.audits(t, p.ID, audit.ProvisionFailed))
		require.Equal(t, 1, e.fake.Calls(backendtest.MethodCreate))
	})
}

func TestAdmitRateLimit(t *testing.T) {
	eachStore(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		e := newEnv(t, open, envOptions{})
		p, h := e.product(t, `{"rate_limit_rpm": 5}`)
		e.engineRow(t, p, "u", bap.StateRunning)

		const n = 8
		decisions := make([]discovery.Decision, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				_, decisions[i], errs[i] = e.svc.Admit(context.Background(), h, "u", discovery.Options{})
			})
		}
		wg.Wait()
		admitted := 0
		for i := range n {
			if errs[i] == nil {
				require.True(t, decisions[i].Admitted)
				admitted++
				continue
			}
			be := requireCode(t, errs[i], bap.CodeRateLimited)
			require.Equal(t, 60*time.Second, be.RetryAfter)
			require.Equal(t, "Rate limit exceeded. Retry in 60 seconds.", be.Message)
		}
		require.Equal(t, 5, admitted, "exactly rate_limit_rpm admits in a burst")

		e.clock.Advance(59*time.Second + 500*time.Millisecond)
		gotP, _, err := e.svc.Admit(t.Context(), h, "u", discovery.Options{})
		be := requireCode(t, err, bap.CodeRateLimited)
		require.Equal(t, 500*time.Millisecond, be.RetryAfter)
		require.Equal(t, "Rate limit exceeded. Retry in 1 seconds.", be.Message)
		require.Equal(t, p.ID, gotP.ID, "a rate-limited admit still names its product")

		e.clock.Advance(500 * time.Millisecond)
		_, d, err := e.svc.Admit(t.Context(), h, "u", discovery.Options{})
		require.NoError(t, err)
		require.True(t, d.Admitted, "the window slid")
		require.Empty(t, e.audits(t, p.ID, audit.AdmitDenied), "rate limiting is an error, not an admit denial")
	})
}

func TestAdmitDenialsAndErrorsDoNotConsume(t *testing.T) {
	eachStore(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		e := newEnv(t, open, envOptions{})
		p, h := e.product(t, `{"rate_limit_rpm": 2, "max_engines": 1}`)
		e.engineRow(t, p, "u", bap.StateRunning)
		e.engineRow(t, p, "sleepy", bap.StateSleeping)

		for range 5 {
			_, d, err := e.svc.Admit(t.Context(), h, "nobody", discovery.Options{})
			require.NoError(t, err)
			require.Equal(t, discovery.ReasonEngineNotFound, d.Reason)
			_, d, err = e.svc.Admit(t.Context(), h, "sleepy", discovery.Options{})
			require.NoError(t, err)
			require.Equal(t, discovery.ReasonEngineSleeping, d.Reason)
			// max_engines is reached: the auto-provision fails.
			_, _, err = e.svc.Admit(t.Context(), h, "nobody", discovery.Options{AutoProvision: true})
			requireCode(t, err, bap.CodeQuotaExceeded)
		}
		for range 2 {
			_, d, err := e.svc.Admit(t.Context(), h, "u", discovery.Options{})
			require.NoError(t, err)
			require.True(t, d.Admitted)
		}
		_, _, err := e.svc.Admit(t.Context(), h, "u", discovery.Options{})
		requireCode(t, err, bap.CodeRateLimited)

		// A policy change applies on the next admit.
		pol, err := bap.ParsePolicy([]byte(`{"rate_limit_rpm": 3}`))
		require.NoError(t, err)
		_, err = e.store.UpdatePolicy(t.Context(), p.ID, pol, audit.Entry{ProductID: p.ID, Action: audit.PolicyUpdate, Actor: audit.ActorAdmin})
		require.NoError(t, err)
		e.svc.ForgetProduct(p.ID) // as the API does after a policy change
		_, d, err := e.svc.Admit(t.Context(), h, "u", discovery.Options{})
		require.NoError(t, err)
		require.True(t, d.Admitted)
		_, _, err = e.svc.Admit(t.Context(), h, "u", discovery.Options{})
		requireCode(t, err, bap.CodeRateLimited)
	})
}

func TestAdmitErrors(t *testing.T) {
	eachStore(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		t.Run("boot timeout, then unhealthy", func(t *testing.T) {
			e := newEnv(t, open, envOptions{bootTimeout: 300 * time.Millisecond})
			p, h := e.product(t, `{}`)
			e.fake.SetBootDelay(time.Hour)
			_, _, err := e.svc.Admit(t.Context(), h, "slow", discovery.Options{AutoProvision: true})
			requireCode(t, err, bap.CodeBootTimeout)
			_, d, err := e.svc.Admit(t.Context(), h, "slow", discovery.Options{AutoProvision: true, AutoWake: true})
			require.NoError(t, err)
			require.Equal(t, discovery.ReasonEngineUnhealthy, d.Reason)
			require.Len(t, e.audits(t, p.ID, audit.ProvisionFailed), 1)
		})
		t.Run("backend unavailable", func(t *testing.T) {
			e := newEnv(t, open, envOptions{})
			_, h := e.product(t, `{}`)
			e.fake.SetCreateError(fmt.Errorf("daemon: %w", backend.ErrUnavailable))
			_, _, err := e.svc.Admit(t.Context(), h, "x", discovery.Options{AutoProvision: true})
			requireCode(t, err, bap.CodeBackendUnavailable)
		})
		t.Run("wake fails", func(t *testing.T) {
			e := newEnv(t, open, envOptions{})
			p, h := e.product(t, `{"rate_limit_rpm": 1}`)
			res := e.provisioned(t, p, "w")
			_, err := e.lm.Stop(t.Context(), res.Engine.ID, "test")
			require.NoError(t, err)
			e.fake.FailNext(backendtest.MethodStart, fmt.Errorf("daemon: %w", backend.ErrUnavailable))
			_, _, err = e.svc.Admit(t.Context(), h, "w", discovery.Options{AutoWake: true})
			requireCode(t, err, bap.CodeBackendUnavailable)
			// The failed admit gave its slot back.
			_, d, err := e.svc.Admit(t.Context(), h, "w", discovery.Options{AutoWake: true})
			require.NoError(t, err)
			requireAdmitted(t, d, true)
		})
	})
}

func TestAdmitAfterRotateKeyGivesTheNewKey(t *testing.T) {
	eachStore(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		e := newEnv(t, open, envOptions{})
		p, h := e.product(t, `{}`)
		res := e.provisioned(t, p, "r")
		_, d, err := e.svc.Admit(t.Context(), h, "r", discovery.Options{})
		require.NoError(t, err)
		require.Equal(t, res.APIKey, d.APIKey)
		rot, err := e.lm.RotateKey(t.Context(), res.Engine.ID, "test")
		require.NoError(t, err)
		_, d, err = e.svc.Admit(t.Context(), h, "r", discovery.Options{})
		require.NoError(t, err)
		require.NotEqual(t, res.APIKey, rot.APIKey)
		require.Equal(t, rot.APIKey, d.APIKey, "a cached old key must never be served")
		requireAdmitted(t, d, true)
	})
}

func TestTouchCoalescing(t *testing.T) {
	eachStore(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		e := newEnv(t, open, envOptions{})
		p, h := e.product(t, `{}`)
		a, _ := e.engineRow(t, p, "a", bap.StateRunning)
		b, _ := e.engineRow(t, p, "b", bap.StateRunning)
		c, _ := e.engineRow(t, p, "c", bap.StateRunning)
		admit := func(user string, times int) {
			for range times {
				_, d, err := e.svc.Admit(t.Context(), h, bap.UserID(user), discovery.Options{})
				require.NoError(t, err)
				require.True(t, d.Admitted)
			}
		}
		lastActive := func(id string) *time.Time {
			en, err := e.store.GetEngine(t.Context(), id)
			require.NoError(t, err)
			return en.LastActiveAt
		}
		requireActive := func(want time.Time, id string) {
			t.Helper()
			got := lastActive(id)
			require.NotNil(t, got)
			require.True(t, bap.Timestamp(want).Equal(*got), "last_active_at %v, want %v", got, bap.Timestamp(want))
		}
		// 0.1 s into a second, so the grouping below is deterministic.
		e.clock.Set(e.clock.Now().Truncate(time.Second).Add(100 * time.Millisecond))
		t0 := e.clock.Now()

		admit("a", 30)
		require.Zero(t, e.store.touchCalls.Load(), "admits never write on the hot path")
		require.Nil(t, lastActive(a.ID))
		st, err := e.svc.Flush(t.Context())
		require.NoError(t, err)
		require.Equal(t, discovery.FlushStats{Engines: 1, Writes: 1}, st)
		requireActive(t0, a.ID)

		// Within the interval the stored time is fresh: nothing to write.
		e.clock.Advance(4 * time.Second)
		admit("a", 30)
		st, err = e.svc.Flush(t.Context())
		require.NoError(t, err)
		require.Zero(t, st.Engines)
		requireActive(t0, a.ID)

		// Past it, the next admit is written, with the latest admit time;
		// engines admitted in the same second share one write.
		e.clock.Advance(time.Second) // t0+5.0 s
		tb := e.clock.Now()
		admit("a", 3)
		admit("b", 2)
		e.clock.Advance(1500 * time.Millisecond) // t0+6.5 s
		admit("c", 1)
		e.clock.Advance(200 * time.Millisecond) // t0+6.7 s, same second
		admit("a", 1)
		t1 := e.clock.Now()
		st, err = e.svc.Flush(t.Context())
		require.NoError(t, err)
		require.Equal(t, discovery.FlushStats{Engines: 3, Writes: 2}, st)
		requireActive(t1, a.ID)
		requireActive(t1, c.ID)
		requireActive(tb, b.ID)

		// A failed flush keeps its entries for the next one.
		e.clock.Advance(10 * time.Second)
		admit("b", 1)
		t2 := e.clock.Now()
		e.store.mu.Lock()
		e.store.touchErr = registry.ErrUnavailable
		e.store.mu.Unlock()
		_, err = e.svc.Flush(t.Context())
		requireCode(t, err, bap.CodeDatabaseUnavailable)
		st, err = e.svc.Flush(t.Context())
		require.NoError(t, err)
		require.Equal(t, discovery.FlushStats{Engines: 1, Writes: 1}, st)
		requireActive(t2, b.ID)
	})
}

func TestRunFlushesOnShutdown(t *testing.T) {
	eachStore(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		e := newEnv(t, open, envOptions{})
		p, h := e.product(t, `{}`)
		en, _ := e.engineRow(t, p, "u", bap.StateRunning)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- e.svc.Run(ctx) }()
		_, d, err := e.svc.Admit(t.Context(), h, "u", discovery.Options{})
		require.NoError(t, err)
		require.True(t, d.Admitted)
		cancel()
		require.NoError(t, <-done)
		got, err := e.store.GetEngine(t.Context(), en.ID)
		require.NoError(t, err)
		require.NotNil(t, got.LastActiveAt, "the final flush wrote the admit")
		require.True(t, bap.Timestamp(e.clock.Now()).Equal(*got.LastActiveAt))
	})
}

func TestDenialAuditSampling(t *testing.T) {
	eachStore(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		e := newEnv(t, open, envOptions{})
		p, h := e.product(t, `{}`)
		sl, _ := e.engineRow(t, p, "sleepy", bap.StateSleeping)
		deny := func(user, reason string, times int) {
			for range times {
				_, d, err := e.svc.Admit(t.Context(), h, bap.UserID(user), discovery.Options{})
				require.NoError(t, err)
				require.Equal(t, reason, d.Reason)
			}
		}
		rows := func(f registry.AuditFilter) []audit.Entry {
			f.ProductID = p.ID
			f.Actions = []audit.Action{audit.AdmitDenied}
			r, _, err := e.store.ListAudit(t.Context(), f)
			require.NoError(t, err)
			return r
		}

		deny("sleepy", discovery.ReasonEngineSleeping, 20)
		require.Len(t, rows(registry.AuditFilter{EngineID: sl.ID}), 1)
		e.clock.Advance(59 * time.Second)
		deny("sleepy", discovery.ReasonEngineSleeping, 5)
		require.Len(t, rows(registry.AuditFilter{EngineID: sl.ID}), 1)
		e.clock.Advance(time.Second)
		deny("sleepy", discovery.ReasonEngineSleeping, 5)
		require.Len(t, rows(registry.AuditFilter{EngineID: sl.ID}), 2, "one per engine per minute")

		// Without an engine, per product and user.
		deny("ghost-1", discovery.ReasonEngineNotFound, 10)
		deny("ghost-2", discovery.ReasonEngineNotFound, 10)
		require.Len(t, rows(registry.AuditFilter{UserID: "ghost-1"}), 1)
		require.Len(t, rows(registry.AuditFilter{UserID: "ghost-2"}), 1)
		r := rows(registry.AuditFilter{UserID: "ghost-1"})[0]
		require.Empty(t, r.EngineID)
		require.Equal(t, map[string]any{"reason": discovery.ReasonEngineNotFound}, r.Metadata)
	})
}

func TestNewDefaults(t *testing.T) {
	t.Parallel()
	e := newEnv(t, storetest.SQLite, envOptions{})
	svc := discovery.New(e.store, e.lm, e.lim, discovery.Config{})
	cfg := svc.Config()
	require.Equal(t, 5*time.Second, cfg.TouchInterval)
	require.Equal(t, time.Minute, cfg.DenySampleInterval)
	require.NotNil(t, cfg.Now)
	require.Panics(t, func() { discovery.New(nil, e.lm, e.lim, discovery.Config{}) })
	require.Panics(t, func() { discovery.New(e.store, e.lm, e.lim, discovery.Config{TouchInterval: -time.Second}) })
}

// BenchmarkAdmitRunning measures the hot path: an admit of a running engine
// on SQLite (one query plus the key, decrypted once and then cached).
func BenchmarkAdmitRunning(b *testing.B) {
	for _, mode := range []string{"serial", "parallel"} {
		b.Run(mode, func(b *testing.B) {
			e := newEnv(b, storetest.SQLite, envOptions{})
			p, h := e.product(b, `{}`)
			users := make([]string, 16)
			for i := range users {
				users[i] = fmt.Sprintf("user-%d", i)
				e.engineRow(b, p, users[i], bap.StateRunning)
			}
			// The plain store, without the tests' hook wrapper.
			svc := discovery.New(e.store.Store, e.lm, e.lim, discovery.Config{Now: e.clock.Now})
			ctx := context.Background()
			var failed atomic.Value
			admit := func(i int) {
				_, d, err := svc.Admit(ctx, h, bap.UserID(users[i%len(users)]), discovery.Options{})
				if err == nil && !d.Admitted {
					err = errors.New("denied: " + d.Reason)
				}
				if err != nil {
					failed.Store(err)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			if mode == "serial" {
				for i := range b.N {
					admit(i)
				}
			} else {
				var next atomic.Int64
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						admit(int(next.Add(1)))
					}
				})
			}
			b.StopTimer()
			if err, _ := failed.Load().(error); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// TestCachedProductExpires: a policy changed by another process (no
// ForgetProduct here) applies once the cached product's TTL has passed.
func TestCachedProductExpires(t *testing.T) {
	eachStore(t, func(t *testing.T, open func(testing.TB) registry.Store) {
		e := newEnv(t, open, envOptions{})
		p, h := e.product(t, `{"rate_limit_rpm": 1}`)
		e.engineRow(t, p, "u", bap.StateRunning)
		_, d, err := e.svc.Admit(t.Context(), h, "u", discovery.Options{})
		require.NoError(t, err)
		require.True(t, d.Admitted)
		pol, err := bap.ParsePolicy([]byte(`{"rate_limit_rpm": 5}`))
		require.NoError(t, err)
		_, err = e.store.UpdatePolicy(t.Context(), p.ID, pol, audit.Entry{ProductID: p.ID, Action: audit.PolicyUpdate, Actor: audit.ActorAdmin})
		require.NoError(t, err)
		_, _, err = e.svc.Admit(t.Context(), h, "u", discovery.Options{})
		requireCode(t, err, bap.CodeRateLimited)
		e.clock.Advance(e.svc.Config().ProductTTL)
		_, d, err = e.svc.Admit(t.Context(), h, "u", discovery.Options{})
		require.NoError(t, err)
		require.True(t, d.Admitted, "the new policy applies after the cache TTL")
	})
}
