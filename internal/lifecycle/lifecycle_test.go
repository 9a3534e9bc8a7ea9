package lifecycle_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/backend/subprocess"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/kubetest"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/registrytest"
	"github.com/september/bap-engine/internal/registry/sqlite"
	"github.com/september/bap-engine/internal/secret"
	"github.com/september/bap-engine/internal/testengine"
	"github.com/september/bap-engine/internal/testmain"
)

func TestMain(m *testing.M) {
	os.Exit(testmain.Run(m, testmain.After(kubetest.Stop)))
}

// env is one test's world: a registry, a backend, a manager and a product.
type env struct {
	store   registry.Store
	backend *countingBackend
	lm      *lifecycle.Manager
	cfg     lifecycle.Config
	sealer  *secret.Sealer
	product bap.Product
	dataDir string // subprocess data root ("" for docker)
}

type envOptions struct {
	sleepMode   string
	bootTimeout time.Duration
	policy      string
	wrap        func(backend.Backend) backend.Backend
	restart     lifecycle.RestartPolicy
	orphanGrace time.Duration
}

// manager returns another Manager over the env's store and backend, with
// its configuration changed by mod.
func (en *env) manager(mod func(*lifecycle.Config)) *lifecycle.Manager {
	cfg := en.cfg
	mod(&cfg)
	return lifecycle.New(en.store, en.backend, en.sealer, cfg)
}

func newSubprocessBackend(t testing.TB, dataRoot string) backend.Backend {
	t.Helper()
	b, err := subprocess.New(subprocess.Config{
		Command:     []string{testengine.Path(t)},
		DataRoot:    dataRoot,
		Passthrough: []string{"ENGINE_REFUSE_VERSIONS"},
		Deployment:  "lifecycle-test-" + uuid.NewString()[:8],
		Getenv: func(k string) string {
			if k == "ENGINE_REFUSE_VERSIONS" {
				return subprocessRefused
			}
			return os.Getenv(k)
		},
	})
	require.NoError(t, err)
	return b
}

func newEnv(t testing.TB, be backend.Backend, o envOptions) *env {
	t.Helper()
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "registry.db"))
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	key, err := secret.NewFernetKey()
	require.NoError(t, err)
	sealer, err := secret.NewSealer(key)
	require.NoError(t, err)
	if o.wrap != nil {
		be = o.wrap(be)
	}
	cb := &countingBackend{Backend: be}
	portMin, portMax := backendtest.PortRange(t, 50)
	cfg := lifecycle.Config{
		PortMin:      portMin,
		PortMax:      portMax,
		BootTimeout:  cmpDur(o.bootTimeout, 20*time.Second),
		StopGrace:    5 * time.Second,
		DefaultImage: testImage,
		SleepMode:    o.sleepMode,
		Restart:      o.restart,
		OrphanGrace:  o.orphanGrace,
	}
	lm := lifecycle.New(store, cb, sealer, cfg)
	pol, err := bap.ParsePolicy([]byte(o.policy))
	require.NoError(t, err)
	p := bap.Product{ID: uuid.NewString(), Slug: "p-" + uuid.NewString()[:8], DisplayName: "Test",
		APIKeyHash: secret.Hash(uuid.NewString()), Policy: pol, CreatedAt: bap.Now()}
	require.NoError(t, store.CreateProduct(ctx, p, audit.Entry{ProductID: p.ID, Action: audit.PolicyRegister, Actor: audit.ActorAdmin}))
	e := &env{store: store, backend: cb, lm: lm, cfg: cfg, sealer: sealer, product: p}
	t.Cleanup(func() {
		// Leave no engine running behind the test.
		engines, _ := store.EnginesByStatus(context.Background(), bap.States...)
		for _, en := range engines {
			_ = cb.Backend.Destroy(context.Background(), en.ID)
		}
	})
	return e
}

var testImage = "september-engine:latest"

// upgradeImage is a version engines come up on, refusedImage one they
// refuse (the subprocess engines are told so by ENGINE_REFUSE_VERSIONS; the
// docker test builds an image that refuses itself).
var (
	upgradeImage = "september-engine:next"
	refusedImage = subprocessRefused
)

const subprocessRefused = "september-engine:refused"

func cmpDur(a, b time.Duration) time.Duration {
	if a != 0 {
		return a
	}
	return b
}

// countingBackend counts backend calls, to prove joins run one operation.
type countingBackend struct {
	backend.Backend
	creates, starts, stops, pauses, unpauses, destroys, removes atomic.Int64
	mu                                                          sync.Mutex
	lastCreateStart                                             time.Duration
	startReturned                                               time.Time
	inspectTime                                                 time.Duration
}

func (c *countingBackend) Create(ctx context.Context, s backend.Spec) (backend.Instance, error) {
	c.creates.Add(1)
	began := time.Now()
	inst, err := c.Backend.Create(ctx, s)
	c.mu.Lock()
	c.lastCreateStart = time.Since(began)
	c.mu.Unlock()
	return inst, err
}

func (c *countingBackend) Start(ctx context.Context, id string) error {
	c.starts.Add(1)
	began := time.Now()
	err := c.Backend.Start(ctx, id)
	c.mu.Lock()
	c.lastCreateStart += time.Since(began)
	c.startReturned = time.Now()
	c.mu.Unlock()
	return err
}

func (c *countingBackend) Stop(ctx context.Context, id string, grace time.Duration) error {
	c.stops.Add(1)
	return c.Backend.Stop(ctx, id, grace)
}

func (c *countingBackend) Pause(ctx context.Context, id string) error {
	c.pauses.Add(1)
	return c.Backend.Pause(ctx, id)
}

func (c *countingBackend) Unpause(ctx context.Context, id string) error {
	c.unpauses.Add(1)
	began := time.Now()
	err := c.Backend.Unpause(ctx, id)
	c.mu.Lock()
	c.lastCreateStart = time.Since(began)
	c.startReturned = time.Now()
	c.mu.Unlock()
	return err
}

func (c *countingBackend) Inspect(ctx context.Context, id string) (backend.Instance, error) {
	began := time.Now()
	inst, err := c.Backend.Inspect(ctx, id)
	c.mu.Lock()
	c.inspectTime += time.Since(began)
	c.mu.Unlock()
	return inst, err
}

func (c *countingBackend) Remove(ctx context.Context, id string) error {
	c.removes.Add(1)
	return c.Backend.Remove(ctx, id)
}

func (c *countingBackend) Destroy(ctx context.Context, id string) error {
	c.destroys.Add(1)
	return c.Backend.Destroy(ctx, id)
}

// engineCall sends an authenticated request to an engine.
func engineCall(t testing.TB, method, url, key string, body any) (int, map[string]any) {
	t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, err := http.NewRequest(method, url, rd)
	require.NoError(t, err)
	req.Header.Set("X-Engine-Key", key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// execute bumps the engine's brain counter and returns it.
func execute(t testing.TB, e bap.Engine, key, input string) int {
	t.Helper()
	code, out := engineCall(t, http.MethodPost, e.URL+"/execute", key, map[string]any{"input": input})
	require.Equal(t, http.StatusOK, code, "execute on %s", e.URL)
	return int(out["counter"].(float64))
}

// brainCounter reads the engine's brain counter.
func brainCounter(t testing.TB, e bap.Engine, key string) int {
	t.Helper()
	code, out := engineCall(t, http.MethodGet, e.URL+"/brain", key, nil)
	require.Equal(t, http.StatusOK, code)
	return int(out["counter"].(float64))
}

func answers(url string) bool {
	c := http.Client{Timeout: 500 * time.Millisecond}
	resp, err := c.Get(url + "/health")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func auditActions(t *testing.T, s registry.Store, engineID string) []audit.Action {
	t.Helper()
	entries, _, err := s.ListAudit(context.Background(), registry.AuditFilter{EngineID: engineID})
	require.NoError(t, err)
	out := make([]audit.Action, 0, len(entries))
	for i := len(entries) - 1; i >= 0; i-- { // oldest first
		out = append(out, entries[i].Action)
	}
	return out
}

func errCode(err error) string { return bap.ErrorCode(err) }

// lifecycleSuite runs every transition against one backend.
func lifecycleSuite(t *testing.T, newBackend func(t testing.TB) backend.Backend, instanceGone func(t *testing.T, engineID string) bool) {
	ctx := context.Background()

	t.Run("UpgradeKeepsBrainAndRollsBack", func(t *testing.T) {
		en := newEnv(t, newBackend(t), envOptions{bootTimeout: 3 * time.Second})
		res, err := en.lm.Provision(ctx, en.product, "alice", "", "test")
		require.NoError(t, err)
		e := res.Engine
		execute(t, e, res.APIKey, "one")
		require.Equal(t, 2, execute(t, e, res.APIKey, "two"))

		up, err := en.lm.Upgrade(ctx, e.ID, upgradeImage, "test")
		require.NoError(t, err)
		require.Equal(t, upgradeImage, up.Engine.Image)
		require.Equal(t, bap.StateRunning, up.Engine.Status)
		require.Equal(t, e.URL, up.Engine.URL)
		require.Equal(t, e.KeyHash, up.Engine.KeyHash)
		require.False(t, up.Engine.Claim.Held())
		require.Equal(t, 2, brainCounter(t, e, res.APIKey), "the brain survived, under the same key")
		require.Equal(t, 3, execute(t, e, res.APIKey, "three"))

		_, err = en.lm.Upgrade(ctx, e.ID, refusedImage, "test")
		require.Equal(t, bap.CodeUpgradeFailed, errCode(err), "%v", err)
		cur, err := en.store.GetEngine(ctx, e.ID)
		require.NoError(t, err)
		require.Equal(t, bap.StateRunning, cur.Status)
		require.Equal(t, upgradeImage, cur.Image, "rolled back to the old version")
		require.False(t, cur.Claim.Held())
		require.Equal(t, 3, brainCounter(t, e, res.APIKey), "the brain is intact after the rollback")
		actions := auditActions(t, en.store, e.ID)
		require.Equal(t, []audit.Action{audit.Provision, audit.Upgrade, audit.UpgradeRolledBack}, actions)

		// A stopped engine is upgraded and stays stopped.
		_, err = en.lm.Stop(ctx, e.ID, "test")
		require.NoError(t, err)
		up, err = en.lm.Upgrade(ctx, e.ID, testImage, "test")
		require.NoError(t, err)
		require.Equal(t, bap.StateStopped, up.Engine.Status)
		require.False(t, answers(e.URL))
		_, err = en.lm.Start(ctx, e.ID, "test")
		require.NoError(t, err)
		require.Equal(t, 3, brainCounter(t, e, res.APIKey))

		// Bad input changes nothing.
		_, err = en.lm.Upgrade(ctx, e.ID, "not an image", "test")
		require.Equal(t, bap.CodeValidation, errCode(err))
		_, err = en.lm.Destroy(ctx, e.ID, "test")
		require.NoError(t, err)
		require.Eventually(t, func() bool { return instanceGone(t, e.ID) }, 10*time.Second, 50*time.Millisecond)
	})

	t.Run("ProvisionStopStartRotateDestroy", func(t *testing.T) {
		en := newEnv(t, newBackend(t), envOptions{})
		res, err := en.lm.Provision(ctx, en.product, "alice", "", "test")
		require.NoError(t, err)
		e := res.Engine
		require.Equal(t, bap.StateRunning, e.Status)
		require.NotNil(t, e.BootDurationMS)
		require.Regexp(t, `^sk-sept-[A-Za-z0-9_-]{43}$`, res.APIKey)
		require.Equal(t, secret.Hash(res.APIKey), e.KeyHash)
		got, err := en.lm.APIKey(e)
		require.NoError(t, err)
		require.Equal(t, res.APIKey, got)

		// The engine answers with its key, and only with it.
		require.Equal(t, 1, execute(t, e, res.APIKey, "hello"))
		code, _ := engineCall(t, http.MethodGet, e.URL+"/brain", "sk-sept-wrong", nil)
		require.Equal(t, http.StatusUnauthorized, code)

		// A second provision for the same user is a conflict.
		_, err = en.lm.Provision(ctx, en.product, "alice", "", "test")
		require.Equal(t, bap.CodeEngineAlreadyExists, errCode(err))

		// stop → not answering, state stopped; a second stop is 409.
		_, err = en.lm.Stop(ctx, e.ID, "test")
		require.NoError(t, err)
		require.False(t, answers(e.URL))
		cur, err := en.store.GetEngine(ctx, e.ID)
		require.NoError(t, err)
		require.Equal(t, bap.StateStopped, cur.Status)
		_, err = en.lm.Stop(ctx, e.ID, "test")
		require.Equal(t, bap.CodeEngineNotRunning, errCode(err))

		// start → same brain.
		_, err = en.lm.Start(ctx, e.ID, "test")
		require.NoError(t, err)
		require.Equal(t, 1, brainCounter(t, e, res.APIKey))
		_, err = en.lm.Start(ctx, e.ID, "test")
		require.Equal(t, bap.CodeEngineAlreadyRunning, errCode(err))

		// rotate-key → old key 401, new key 200, same data, same port.
		rot, err := en.lm.RotateKey(ctx, e.ID, "test")
		require.NoError(t, err)
		require.NotEqual(t, res.APIKey, rot.APIKey)
		require.Equal(t, e.Port, rot.Engine.Port)
		code, _ = engineCall(t, http.MethodGet, e.URL+"/brain", res.APIKey, nil)
		require.Equal(t, http.StatusUnauthorized, code)
		require.Equal(t, 2, execute(t, e, rot.APIKey, "again"))
		stored, err := en.lm.APIKey(rot.Engine)
		require.NoError(t, err)
		require.Equal(t, rot.APIKey, stored)

		// destroy → instance, data and port gone, row gone.
		_, err = en.lm.Destroy(ctx, e.ID, "test")
		require.NoError(t, err)
		require.False(t, answers(e.URL))
		_, err = en.store.GetEngine(ctx, e.ID)
		require.ErrorIs(t, err, registry.ErrNotFound)
		ports, err := en.store.ListPortAllocations(ctx)
		require.NoError(t, err)
		require.Empty(t, ports)
		require.True(t, instanceGone(t, e.ID), "instance and data removed")
		_, err = en.lm.Destroy(ctx, e.ID, "test")
		require.Equal(t, bap.CodeEngineNotFound, errCode(err))

		require.Equal(t, []audit.Action{audit.Provision, audit.Stop, audit.Start, audit.RotateKey, audit.Destroy},
			auditActions(t, en.store, e.ID))
		// No plaintext key anywhere in the audit log.
		entries, _, err := en.store.ListAudit(ctx, registry.AuditFilter{})
		require.NoError(t, err)
		raw, _ := json.Marshal(entries)
		require.NotContains(t, string(raw), res.APIKey)
		require.NotContains(t, string(raw), rot.APIKey)
	})

	for _, mode := range []string{lifecycle.SleepMark, lifecycle.SleepPause, lifecycle.SleepStop} {
		t.Run("SleepWake/"+mode, func(t *testing.T) {
			en := newEnv(t, newBackend(t), envOptions{sleepMode: mode})
			res, err := en.lm.Provision(ctx, en.product, "bob", "", "test")
			require.NoError(t, err)
			e := res.Engine
			require.Equal(t, 1, execute(t, e, res.APIKey, "before sleep"))

			slept, err := en.lm.Sleep(ctx, e.ID, time.Time{})
			require.NoError(t, err)
			require.True(t, slept)
			cur, _ := en.store.GetEngine(ctx, e.ID)
			require.Equal(t, bap.StateSleeping, cur.Status)
			inst, err := en.backend.Inspect(ctx, e.ID)
			switch mode {
			case lifecycle.SleepMark:
				require.NoError(t, err)
				require.Equal(t, backend.StatusRunning, inst.Status)
				require.True(t, answers(e.URL))
			case lifecycle.SleepPause:
				require.NoError(t, err)
				require.Equal(t, backend.StatusPaused, inst.Status)
				require.False(t, answers(e.URL))
			case lifecycle.SleepStop:
				require.False(t, answers(e.URL))
			}

			// 100 concurrent wakes run one backend operation and all succeed.
			startsBefore, unpausesBefore, createsBefore := en.backend.starts.Load(), en.backend.unpauses.Load(), en.backend.creates.Load()
			var wg sync.WaitGroup
			errs := make(chan error, 100)
			for range 100 {
				wg.Go(func() {
					r, err := en.lm.Wake(ctx, e.ID, "test")
					if err == nil && r.Engine.Status != bap.StateRunning {
						err = errors.New("woken engine not running: " + string(r.Engine.Status))
					}
					errs <- err
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err)
			}
			ops := (en.backend.starts.Load() - startsBefore) + (en.backend.unpauses.Load() - unpausesBefore) + (en.backend.creates.Load() - createsBefore)
			if mode == lifecycle.SleepMark {
				require.Zero(t, ops)
			} else {
				require.EqualValues(t, 1, ops)
			}
			require.Equal(t, 1, brainCounter(t, e, res.APIKey))
			require.Equal(t, []audit.Action{audit.Provision, audit.Sleep, audit.Wake}, auditActions(t, en.store, e.ID))

			// A sleep that raced with activity leaves the engine awake.
			slept, err = en.lm.Sleep(ctx, e.ID, time.Now().Add(-time.Hour))
			require.NoError(t, err)
			require.False(t, slept, "engine active after idleSince must not sleep")
		})
	}

	t.Run("ConcurrentProvisionsJoin", func(t *testing.T) {
		en := newEnv(t, newBackend(t), envOptions{})
		var wg sync.WaitGroup
		results := make(chan lifecycle.Result, 100)
		errs := make(chan error, 100)
		for range 100 {
			wg.Go(func() {
				r, err := en.lm.Provision(ctx, en.product, "carol", "", "test")
				if err != nil {
					errs <- err
					return
				}
				results <- r
			})
		}
		wg.Wait()
		close(results)
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		var id, key string
		n := 0
		for r := range results {
			n++
			if id == "" {
				id, key = r.Engine.ID, r.APIKey
			}
			require.Equal(t, id, r.Engine.ID)
			require.Equal(t, key, r.APIKey)
		}
		require.Equal(t, 100, n)
		require.EqualValues(t, 1, en.backend.creates.Load())
		require.EqualValues(t, 1, en.backend.starts.Load())
		require.Equal(t, []audit.Action{audit.Provision}, auditActions(t, en.store, id))
	})

	t.Run("FailedStartLeavesNothingBehind", func(t *testing.T) {
		en := newEnv(t, newBackend(t), envOptions{wrap: func(b backend.Backend) backend.Backend {
			return &faultyBackend{Backend: b, failStart: errors.New("injected start failure")}
		}})
		_, err := en.lm.Provision(ctx, en.product, "dave", "", "test")
		require.Equal(t, bap.CodeBackendError, errCode(err))
		e, err := en.store.GetEngineByUser(ctx, en.product.ID, "dave")
		require.NoError(t, err)
		require.Equal(t, bap.StateFailed, e.Status)
		require.Contains(t, e.FailureReason, "injected start failure")
		require.True(t, instanceGone(t, e.ID), "no instance or data left by a failed provision")
		ports, err := en.store.ListPortAllocations(ctx)
		require.NoError(t, err)
		require.Len(t, ports, 1, "the failed engine keeps its port until destroyed")
		require.Equal(t, []audit.Action{audit.ProvisionFailed}, auditActions(t, en.store, e.ID))
		_, err = en.lm.Destroy(ctx, e.ID, "test")
		require.NoError(t, err)
		ports, err = en.store.ListPortAllocations(ctx)
		require.NoError(t, err)
		require.Empty(t, ports)
	})

	t.Run("StartAfterFailedProvision", func(t *testing.T) {
		// A provision that failed before its running commit recorded an
		// address; starting the engine later must find it at its port and
		// record the address with the running state.
		fb := &faultyBackend{failStart: errors.New("injected start failure")}
		en := newEnv(t, newBackend(t), envOptions{wrap: func(b backend.Backend) backend.Backend {
			fb.Backend = b
			return fb
		}})
		_, err := en.lm.Provision(ctx, en.product, "fay", "", "test")
		require.Equal(t, bap.CodeBackendError, errCode(err))
		e, err := en.store.GetEngineByUser(ctx, en.product.ID, "fay")
		require.NoError(t, err)
		require.Equal(t, bap.StateFailed, e.Status)
		fb.failStart = nil
		res, err := en.lm.Start(ctx, e.ID, "test")
		require.NoError(t, err)
		require.Equal(t, bap.StateRunning, res.Engine.Status)
		require.Equal(t, en.backend.URL(e.ID, e.Port), res.Engine.URL)
		require.True(t, answers(res.Engine.URL))
	})

	t.Run("BootTimeout", func(t *testing.T) {
		en := newEnv(t, newBackend(t), envOptions{bootTimeout: 300 * time.Millisecond, wrap: func(b backend.Backend) backend.Backend {
			return &faultyBackend{Backend: b, hideStart: true}
		}})
		_, err := en.lm.Provision(ctx, en.product, "erin", "", "test")
		require.Equal(t, bap.CodeBootTimeout, errCode(err))
		e, err := en.store.GetEngineByUser(ctx, en.product.ID, "erin")
		require.NoError(t, err)
		require.Equal(t, bap.StateFailed, e.Status)
		require.Equal(t, "boot_timeout", e.FailureReason)
		require.True(t, instanceGone(t, e.ID))
	})

	t.Run("Reconcile", func(t *testing.T) {
		be := newBackend(t)
		en := newEnv(t, be, envOptions{orphanGrace: time.Hour, restart: lifecycle.RestartPolicy{BackoffBase: time.Hour}})
		healthy, err := en.lm.Provision(ctx, en.product, "healthy", "", "test")
		require.NoError(t, err)
		lost, err := en.lm.Provision(ctx, en.product, "lost", "", "test")
		require.NoError(t, err)
		before, err := be.Inspect(ctx, healthy.Engine.ID)
		require.NoError(t, err)

		// Instances whose row is gone: one made by a replica that is dead
		// (its label names no live replica), one older than replicas (no
		// label); a port allocation with no engine, and a running row whose
		// instance vanished.
		orphan := func(replica string, port int) string {
			id := uuid.NewString()
			_, err := be.Create(ctx, backend.Spec{EngineID: id, ProductID: en.product.ID, Replica: replica,
				Image: testImage, Port: port, KeyHash: secret.Hash("orphan")})
			require.NoError(t, err)
			require.NoError(t, be.Start(ctx, id))
			return id
		}
		deadsID := orphan(uuid.NewString(), healthy.Engine.Port+20)
		unlabelledID := orphan("", healthy.Engine.Port+21)
		_, err = registrytest.StepsOf(en.store).AllocatePort(ctx, uuid.NewString(), healthy.Engine.Port+30, healthy.Engine.Port+30)
		require.NoError(t, err)
		require.NoError(t, be.Destroy(ctx, lost.Engine.ID))

		// The dead replica's orphan goes at once; the unlabelled one is kept
		// within the grace period, and removed after it.
		st, err := en.lm.Reconcile(ctx)
		require.NoError(t, err)
		require.Equal(t, 1, st.OrphansRemoved)
		require.Equal(t, 1, st.RunningLost)
		require.Equal(t, 1, st.PortsFreed)
		_, err = be.Inspect(ctx, deadsID)
		require.ErrorIs(t, err, backend.ErrNotFound)
		_, err = be.Inspect(ctx, unlabelledID)
		require.NoError(t, err, "an instance of unknown origin keeps its grace")
		st, err = en.manager(func(c *lifecycle.Config) { c.OrphanGrace = time.Nanosecond }).Reconcile(ctx)
		require.NoError(t, err)
		require.Equal(t, 1, st.OrphansRemoved)
		require.Zero(t, st.RunningLost, "already failed")
		require.Zero(t, st.Errors)

		for _, id := range []string{deadsID, unlabelledID} {
			_, err = be.Inspect(ctx, id)
			require.ErrorIs(t, err, backend.ErrNotFound)
			entries, _, err := en.store.ListAudit(ctx, registry.AuditFilter{EngineID: id})
			require.NoError(t, err)
			require.Len(t, entries, 1)
			require.Equal(t, audit.OrphanRemoved, entries[0].Action)
		}
		got, err := en.store.GetEngine(ctx, lost.Engine.ID)
		require.NoError(t, err)
		require.Equal(t, bap.StateFailed, got.Status)
		require.NotNil(t, got.NextRestartAt, "lost engine is on the restart path")
		require.Equal(t, []audit.Action{audit.Provision, audit.ReconcileFailed}, auditActions(t, en.store, lost.Engine.ID))

		// The healthy engine was neither stopped nor recreated.
		after, err := be.Inspect(ctx, healthy.Engine.ID)
		require.NoError(t, err)
		require.Equal(t, before.ID, after.ID)
		require.Equal(t, before.Pid, after.Pid)
		require.Equal(t, backend.StatusRunning, after.Status)
		require.Equal(t, []audit.Action{audit.Provision}, auditActions(t, en.store, healthy.Engine.ID))
		require.True(t, answers(healthy.Engine.URL))
	})

	t.Run("QuotaAndValidation", func(t *testing.T) {
		en := newEnv(t, newBackend(t), envOptions{policy: `{"max_engines": 1}`})
		// user_id is a bap.UserID, parsed at the API's edge.
		_, err := en.lm.Provision(ctx, en.product, "ok-user", "bad image!", "test")
		require.Equal(t, bap.CodeValidation, errCode(err))
		_, err = en.lm.Provision(ctx, en.product, "frank", "", "test")
		require.NoError(t, err)
		_, err = en.lm.Provision(ctx, en.product, "grace", "", "test")
		require.Equal(t, bap.CodeQuotaExceeded, errCode(err))
		// Rejected requests leave no row, port or audit entry.
		total, err := en.store.CountByStatus(ctx, en.product.ID)
		require.NoError(t, err)
		require.Equal(t, map[bap.State]int{bap.StateRunning: 1}, total)
		ports, _ := en.store.ListPortAllocations(ctx)
		require.Len(t, ports, 1)
		require.EqualValues(t, 1, en.backend.creates.Load())
	})
}

// faultyBackend injects failures into a real backend.
type faultyBackend struct {
	backend.Backend
	failStart error
	hideStart bool // Start "succeeds" without starting: the engine never answers
}

func (f *faultyBackend) Start(ctx context.Context, id string) error {
	if f.failStart != nil {
		// Start it for real first so the failure path must clean it up.
		_ = f.Backend.Start(ctx, id)
		return f.failStart
	}
	if f.hideStart {
		return nil
	}
	return f.Backend.Start(ctx, id)
}

func TestLifecycleSubprocess(t *testing.T) {
	var roots sync.Map
	lifecycleSuite(t, func(t testing.TB) backend.Backend {
		root := t.TempDir()
		roots.Store(t.Name(), root)
		return newSubprocessBackend(t, root)
	}, func(t *testing.T, engineID string) bool {
		root, _ := roots.Load(t.Name())
		_, err := os.Stat(filepath.Join(root.(string), engineID))
		return errors.Is(err, os.ErrNotExist)
	})
}
