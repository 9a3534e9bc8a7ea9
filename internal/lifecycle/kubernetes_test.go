package lifecycle_test

import (
	"context"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/backend/kubernetes"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/kubetest"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/testengine"
)

// kubeCluster is a namespace of the test API server with a test node that
// runs this binary as the engine.
type kubeCluster struct {
	rc   *rest.Config
	ns   string
	node *kubetest.Node
}

func newKubeCluster(t testing.TB, freshIPs bool) *kubeCluster {
	t.Helper()
	rc := kubetest.Config(t)
	ns := kubetest.Namespace(t, rc)
	node := kubetest.StartNode(t, rc, kubetest.NodeConfig{
		Namespace: ns, Command: []string{testengine.Path(t)}, Env: []string{"ENGINE_REFUSE_VERSIONS=" + subprocessRefused},
		FreshIPs: freshIPs, TerminationLimit: 10 * time.Second,
	})
	return &kubeCluster{rc: rc, ns: ns, node: node}
}

// backend is a kubernetes backend of a fresh deployment (or of dep).
func (c *kubeCluster) backend(t testing.TB, dep string, mod func(*kubernetes.Config)) *kubernetes.Backend {
	t.Helper()
	if dep == "" {
		dep = "lc-" + uuid.NewString()[:8]
	}
	cfg := kubernetes.Config{REST: c.rc, Namespace: c.ns, Deployment: dep, StartTimeout: 20 * time.Second, Resync: 2 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	b, err := kubernetes.New(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { b.Close() })
	return b
}

// gone reports whether an engine's Pod and PVC are both gone.
func (c *kubeCluster) gone(t *testing.T, engineID string) bool {
	cs := c.node.Client()
	ctx := context.Background()
	_, err := cs.CoreV1().Pods(c.ns).Get(ctx, kubernetes.PodName(engineID), metav1.GetOptions{})
	if !apierrors.IsNotFound(err) {
		return false
	}
	pvc, err := cs.CoreV1().PersistentVolumeClaims(c.ns).Get(ctx, kubernetes.ClaimName(engineID), metav1.GetOptions{})
	return apierrors.IsNotFound(err) || (err == nil && pvc.DeletionTimestamp != nil)
}

func TestLifecycleKubernetes(t *testing.T) {
	c := newKubeCluster(t, false)
	lifecycleSuite(t, func(t testing.TB) backend.Backend { return c.backend(t, "", nil) }, c.gone)
}

// TestKubernetesAddressFollowsThePod: a new Pod has a new IP; the engine's
// recorded URL is the current Pod's after each start, stop-mode wake and
// key rotation, and the brain is the same behind it.
func TestKubernetesAddressFollowsThePod(t *testing.T) {
	c := newKubeCluster(t, true)
	ctx := t.Context()
	en := newEnv(t, c.backend(t, "", nil), envOptions{sleepMode: lifecycle.SleepStop})
	res, err := en.lm.Provision(ctx, en.product, "ada", "", "test")
	require.NoError(t, err)
	e := res.Engine
	require.Equal(t, 1, execute(t, e, res.APIKey, "remember"))
	urls := map[string]bool{e.URL: true}
	check := func(key string, counter int) bap.Engine {
		cur, err := en.store.GetEngine(ctx, e.ID)
		require.NoError(t, err)
		require.Equal(t, bap.StateRunning, cur.Status)
		require.False(t, urls[cur.URL], "a new Pod, a new address: %s", cur.URL)
		urls[cur.URL] = true
		require.Equal(t, counter, brainCounter(t, cur, key), "same brain behind the new address")
		return cur
	}
	_, err = en.lm.Stop(ctx, e.ID, "test")
	require.NoError(t, err)
	_, err = en.lm.Start(ctx, e.ID, "test")
	require.NoError(t, err)
	check(res.APIKey, 1)

	slept, err := en.lm.Sleep(ctx, e.ID, time.Time{})
	require.NoError(t, err)
	require.True(t, slept)
	_, err = en.lm.Wake(ctx, e.ID, "test")
	require.NoError(t, err)
	check(res.APIKey, 1)

	rot, err := en.lm.RotateKey(ctx, e.ID, "test")
	require.NoError(t, err)
	check(rot.APIKey, 1)
}

// TestKubernetesCrashIsRestarted: an engine killed on its node is reported
// by the informer, marked failed (engine_died) and restarted on its brain.
func TestKubernetesCrashIsRestarted(t *testing.T) {
	c := newKubeCluster(t, false)
	ctx := t.Context()
	en := newEnv(t, c.backend(t, "", nil), envOptions{restart: lifecycle.RestartPolicy{BackoffBase: 50 * time.Millisecond, BackoffMax: 50 * time.Millisecond, MaxAttempts: 3}})
	res, err := en.lm.Provision(ctx, en.product, "bea", "", "test")
	require.NoError(t, err)
	e := res.Engine
	require.Equal(t, 1, execute(t, e, res.APIKey, "remember"))

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	crashed := make(chan string, 1)
	go en.lm.WatchCrashes(wctx, func(id string) { crashed <- id })
	killed := time.Now()
	require.NoError(t, c.node.Kill(kubernetes.PodName(e.ID)))
	select {
	case id := <-crashed:
		require.Equal(t, e.ID, id)
	case <-time.After(10 * time.Second):
		t.Fatal("the crash was not reported")
	}
	t.Logf("crash to failed: %s", time.Since(killed))
	require.Less(t, time.Since(killed), 5*time.Second, "within a second or so, not a probe interval")
	cur, err := en.store.GetEngine(ctx, e.ID)
	require.NoError(t, err)
	require.Equal(t, bap.StateFailed, cur.Status)

	time.Sleep(60 * time.Millisecond) // the first restart's backoff
	out, err := en.lm.AutoRestart(ctx, e.ID)
	require.NoError(t, err)
	require.Equal(t, lifecycle.RestartSucceeded, out)
	cur, err = en.store.GetEngine(ctx, e.ID)
	require.NoError(t, err)
	require.Equal(t, bap.StateRunning, cur.Status)
	require.Equal(t, 1, brainCounter(t, cur, res.APIKey), "restarted on its brain")
	require.Equal(t, []audit.Action{audit.Provision, audit.EngineDied, audit.AutoRestartStart, audit.AutoRestartSuccess},
		auditActions(t, en.store, e.ID))
}

// TestKubernetesOrchestratorRestartAdoptsEverything: a new backend and
// manager on the same deployment find every engine as it was — running
// ones running at the same address, stopped ones stopped — and change
// nothing.
func TestKubernetesOrchestratorRestartAdoptsEverything(t *testing.T) {
	c := newKubeCluster(t, false)
	ctx := t.Context()
	dep := "lc-" + uuid.NewString()[:8]
	first := c.backend(t, dep, nil)
	en := newEnv(t, first, envOptions{orphanGrace: time.Nanosecond})
	var running []lifecycle.Result
	for _, u := range []bap.UserID{"u1", "u2", "u3"} {
		r, err := en.lm.Provision(ctx, en.product, u, "", "test")
		require.NoError(t, err)
		running = append(running, r)
	}
	_, err := en.lm.Stop(ctx, running[2].Engine.ID, "test")
	require.NoError(t, err)
	before := map[string]backend.Instance{}
	for _, r := range running {
		inst, err := first.Inspect(ctx, r.Engine.ID)
		require.NoError(t, err)
		before[r.Engine.ID] = inst
	}
	first.Close()

	second := c.backend(t, dep, nil)
	lm := lifecycle.New(en.store, second, en.sealer, en.cfg)
	st, err := lm.Reconcile(ctx)
	require.NoError(t, err)
	require.Zero(t, st.RunningLost)
	require.Zero(t, st.OrphansRemoved)
	require.Zero(t, st.TakenOver)
	for _, r := range running[:2] {
		inst, err := second.Inspect(ctx, r.Engine.ID)
		require.NoError(t, err)
		require.Equal(t, before[r.Engine.ID].ID, inst.ID)
		require.Equal(t, backend.StatusRunning, inst.Status)
		require.Equal(t, r.Engine.URL, second.URL(r.Engine.ID, r.Engine.Port), "the informer's listing knows the address")
		require.True(t, answers(r.Engine.URL))
		require.Equal(t, []audit.Action{audit.Provision}, auditActions(t, en.store, r.Engine.ID))
	}
	inst, err := second.Inspect(ctx, running[2].Engine.ID)
	require.NoError(t, err)
	require.Equal(t, backend.StatusExited, inst.Status)
	_, err = lm.Start(ctx, running[2].Engine.ID, "test")
	require.NoError(t, err, "a stopped engine starts from the new orchestrator")
}

// TestKubernetesImagePullFailsFast: a provision whose image cannot be pulled
// fails with IMAGE_NOT_FOUND as soon as the node says so, not at the boot
// timeout, and leaves nothing behind.
func TestKubernetesImagePullFailsFast(t *testing.T) {
	c := newKubeCluster(t, false)
	ctx := t.Context()
	c.node.SetUnpullable("registry.example/engine:missing")
	en := newEnv(t, c.backend(t, "", nil), envOptions{bootTimeout: time.Minute})
	began := time.Now()
	_, err := en.lm.Provision(ctx, en.product, "cid", "registry.example/engine:missing", "test")
	require.Equal(t, bap.CodeImageNotFound, errCode(err))
	require.Less(t, time.Since(began), 15*time.Second)
	e, err := en.store.GetEngineByUser(ctx, en.product.ID, "cid")
	require.NoError(t, err)
	require.Equal(t, bap.StateFailed, e.Status)
	require.Contains(t, e.FailureReason, "ErrImagePull")
	require.True(t, c.gone(t, e.ID), "no Pod or PVC left by the failed provision")
}

// timedBackend adds up the time spent in backend calls (API requests and
// the waits for the node).
type timedBackend struct {
	backend.Backend
	spent atomic.Int64
}

func (tb *timedBackend) since(t0 time.Time) { tb.spent.Add(int64(time.Since(t0))) }

func (tb *timedBackend) Create(ctx context.Context, s backend.Spec) (backend.Instance, error) {
	defer tb.since(time.Now())
	return tb.Backend.Create(ctx, s)
}
func (tb *timedBackend) Start(ctx context.Context, id string) error {
	defer tb.since(time.Now())
	return tb.Backend.Start(ctx, id)
}
func (tb *timedBackend) Stop(ctx context.Context, id string, g time.Duration) error {
	defer tb.since(time.Now())
	return tb.Backend.Stop(ctx, id, g)
}
func (tb *timedBackend) Remove(ctx context.Context, id string) error {
	defer tb.since(time.Now())
	return tb.Backend.Remove(ctx, id)
}
func (tb *timedBackend) Destroy(ctx context.Context, id string) error {
	defer tb.since(time.Now())
	return tb.Backend.Destroy(ctx, id)
}
func (tb *timedBackend) Inspect(ctx context.Context, id string) (backend.Instance, error) {
	defer tb.since(time.Now())
	return tb.Backend.Inspect(ctx, id)
}

// requestCounter counts API requests.
type requestCounter struct{ n atomic.Int64 }

func (c *requestCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return rtFunc(func(r *http.Request) (*http.Response, error) { c.n.Add(1); return rt.RoundTrip(r) })
}

type rtFunc func(*http.Request) (*http.Response, error)

func (f rtFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// BenchmarkKubernetesLifecycle: provision, stop, start and destroy of one
// engine at a time on the kubernetes backend against the test API server
// and node (real engine processes). Per operation: its latency, the part
// spent in backend calls (API requests and waiting for the node to run or
// remove the Pod), the rest (the orchestrator's database work, and for
// provision and start the engine's boot until /health answers), and the
// API requests it made.
func BenchmarkKubernetesLifecycle(b *testing.B) {
	c := newKubeCluster(b, false)
	var reqs requestCounter
	be := c.backend(b, "", func(cfg *kubernetes.Config) {
		cfg.REST = rest.CopyConfig(c.rc)
		cfg.REST.WrapTransport = reqs.wrap
	})
	tb := &timedBackend{Backend: be}
	en := newEnv(b, tb, envOptions{})
	ctx := context.Background()
	type acc struct{ total, inBackend, calls int64 }
	stats := map[string]*acc{}
	measure := func(op string, f func() error) {
		a := stats[op]
		if a == nil {
			a = &acc{}
			stats[op] = a
		}
		t0, spent0, calls0 := time.Now(), tb.spent.Load(), reqs.n.Load()
		require.NoError(b, f())
		a.total += int64(time.Since(t0))
		a.inBackend += tb.spent.Load() - spent0
		a.calls += reqs.n.Load() - calls0
	}
	i := 0
	for b.Loop() {
		i++
		var e bap.Engine
		measure("provision", func() error {
			r, err := en.lm.Provision(ctx, en.product, bap.UserID("bench-"+strconv.Itoa(i)), "", "bench")
			e = r.Engine
			return err
		})
		measure("stop", func() error { _, err := en.lm.Stop(ctx, e.ID, "bench"); return err })
		measure("start", func() error { _, err := en.lm.Start(ctx, e.ID, "bench"); return err })
		measure("destroy", func() error { _, err := en.lm.Destroy(ctx, e.ID, "bench"); return err })
	}
	n := float64(b.N)
	for op, a := range stats {
		b.ReportMetric(float64(a.total)/1e6/n, "ms/"+op)
		b.ReportMetric(float64(a.inBackend)/1e6/n, "backend-ms/"+op)
		b.ReportMetric(float64(a.total-a.inBackend)/1e6/n, "rest-ms/"+op)
		b.ReportMetric(float64(a.calls)/n, "api-calls/"+op)
	}
}
