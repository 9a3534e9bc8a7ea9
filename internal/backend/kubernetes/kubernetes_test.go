package kubernetes_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/backend/kubernetes"
	"github.com/september/bap-engine/internal/kubetest"
	"github.com/september/bap-engine/internal/testengine"
	"github.com/september/bap-engine/internal/testmain"
)

func TestMain(m *testing.M) {
	os.Exit(testmain.Run(m, testmain.After(kubetest.Stop)))
}

// testImage names the engine in Pods; the test node runs this binary
// whatever the image says, except for images marked unpullable.
const testImage = "september-engine:k8s-test"

// cluster is a namespace of the test API server with a test node in it.
type cluster struct {
	rc   *rest.Config
	ns   string
	node *kubetest.Node
}

func newCluster(t *testing.T, nc kubetest.NodeConfig) *cluster {
	t.Helper()
	rc := kubetest.Config(t)
	ns := kubetest.Namespace(t, rc)
	nc.Namespace = ns
	nc.Command = []string{testengine.Path(t)}
	nc.TerminationLimit = cmpDur(nc.TerminationLimit, 10*time.Second)
	return &cluster{rc: rc, ns: ns, node: kubetest.StartNode(t, rc, nc)}
}

func cmpDur(a, b time.Duration) time.Duration {
	if a != 0 {
		return a
	}
	return b
}

// backend returns a backend for a fresh deployment in the cluster's
// namespace, closed when the test ends.
func (c *cluster) backend(t testing.TB, mod func(*kubernetes.Config)) *kubernetes.Backend {
	t.Helper()
	cfg := kubernetes.Config{
		REST:         c.rc,
		Namespace:    c.ns,
		Deployment:   "k8s-" + uuid.NewString()[:8],
		DefaultImage: testImage,
		StartTimeout: 30 * time.Second,
		Resync:       2 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	b, err := kubernetes.New(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { b.Close() })
	return b
}

func TestConformance(t *testing.T) {
	c := newCluster(t, kubetest.NodeConfig{})
	backendtest.Run(t, func(t *testing.T) backend.Backend { return c.backend(t, nil) }, testImage, backendtest.Options{
		Kill: func(t *testing.T, _ backend.Backend, engineID string) {
			require.NoError(t, c.node.Kill(kubernetes.PodName(engineID)))
		},
	})
}

// spec is a fresh engine's spec, destroyed at the end of the test.
func spec(t *testing.T, b backend.Backend) backend.Spec {
	t.Helper()
	_, hash := backendtest.NewKey()
	s := backend.Spec{EngineID: uuid.NewString(), ProductID: uuid.NewString(), Replica: uuid.NewString(),
		Port: 9000, KeyHash: hash}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		require.NoError(t, b.Destroy(ctx, s.EngineID))
	})
	return s
}

func TestPodAndClaimShape(t *testing.T) {
	c := newCluster(t, kubetest.NodeConfig{})
	getenv := map[string]string{"LLM_API_KEY": "sk-llm", "ENGINE_KEY_HASH": "evil"}
	b := c.backend(t, func(cfg *kubernetes.Config) {
		cfg.StorageClass = "fast-rwo"
		cfg.VolumeSize = "2Gi"
		cfg.CatalogPVC = "catalog"
		cfg.Passthrough = []string{"LLM_API_KEY", "UNSET_ONE", "ENGINE_KEY_HASH"}
		cfg.Getenv = func(k string) string { return getenv[k] }
		cfg.Shard = func(string) int { return 17 }
	})
	ctx := t.Context()
	cs := b.Client()
	_, err := cs.CoreV1().PersistentVolumeClaims(c.ns).Create(ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "catalog"},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	s := spec(t, b)
	s.MemoryMB, s.CPUs = 256, 0.5
	_, err = b.Create(ctx, s)
	require.NoError(t, err)
	pvc, err := cs.CoreV1().PersistentVolumeClaims(c.ns).Get(ctx, "engine-data-"+s.EngineID[:12], metav1.GetOptions{})
	require.NoError(t, err)
	require.Equal(t, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, pvc.Spec.AccessModes)
	require.Equal(t, "fast-rwo", *pvc.Spec.StorageClassName)
	require.Equal(t, "2Gi", pvc.Spec.Resources.Requests.Storage().String())

	require.NoError(t, b.Start(ctx, s.EngineID))
	pod, err := cs.CoreV1().Pods(c.ns).Get(ctx, "engine-"+s.EngineID, metav1.GetOptions{})
	require.NoError(t, err)
	want := map[string]string{
		backend.LabelManaged: "true", backend.LabelEngineID: s.EngineID, backend.LabelProductID: s.ProductID,
		backend.LabelReplica: s.Replica, kubernetes.LabelShard: "17",
	}
	for k, v := range want {
		require.Equal(t, v, pod.Labels[k], k)
		require.Equal(t, v, pvc.Labels[k], k)
	}
	require.Equal(t, corev1.RestartPolicyNever, pod.Spec.RestartPolicy)
	require.False(t, *pod.Spec.AutomountServiceAccountToken)
	require.False(t, *pod.Spec.EnableServiceLinks)
	ctr := pod.Spec.Containers[0]
	require.Equal(t, testImage, ctr.Image)
	require.Equal(t, []corev1.EnvVar{
		{Name: "ENGINE_KEY_HASH", Value: s.KeyHash},
		{Name: "SQLITE_DB_PATH", Value: "/data/brain.sqlite"},
		{Name: "CATALOG_DIR", Value: "/catalog"},
		{Name: "LLM_API_KEY", Value: "sk-llm"},
	}, ctr.Env, "the contract's variables and the set passthrough ones, nothing else")
	require.Equal(t, "256Mi", ctr.Resources.Limits.Memory().String())
	require.Equal(t, "500m", ctr.Resources.Limits.Cpu().String())
	require.Equal(t, int32(8000), ctr.Ports[0].ContainerPort)
	require.Len(t, pod.Spec.Volumes, 2)
	require.Equal(t, pvc.Name, pod.Spec.Volumes[0].PersistentVolumeClaim.ClaimName)
	require.Equal(t, "catalog", pod.Spec.Volumes[1].PersistentVolumeClaim.ClaimName)
	require.True(t, pod.Spec.Volumes[1].PersistentVolumeClaim.ReadOnly)
	require.Equal(t, "http://"+pod.Status.PodIP+":8000", b.URL(s.EngineID, s.Port))
	require.Empty(t, pod.Spec.Containers[0].Ports[0].HostPort, "no host ports")
}

func TestImagePullFailureFailsFast(t *testing.T) {
	c := newCluster(t, kubetest.NodeConfig{})
	b := c.backend(t, func(cfg *kubernetes.Config) { cfg.StartTimeout = time.Minute })
	c.node.SetUnpullable("registry.example/missing:1")
	s := spec(t, b)
	s.Image = "registry.example/missing:1"
	ctx := t.Context()
	_, err := b.Create(ctx, s)
	require.NoError(t, err)
	began := time.Now()
	err = b.Start(ctx, s.EngineID)
	require.ErrorIs(t, err, backend.ErrImageNotFound)
	require.Contains(t, err.Error(), "ErrImagePull")
	require.Less(t, time.Since(began), 10*time.Second, "not the whole start timeout")
	// Nothing keeps pulling; the instance (its data) stays, exited.
	inst, err := b.Inspect(ctx, s.EngineID)
	require.NoError(t, err)
	require.Equal(t, backend.StatusExited, inst.Status)
	_, err = b.Client().CoreV1().Pods(c.ns).Get(ctx, kubernetes.PodName(s.EngineID), metav1.GetOptions{})
	require.True(t, apierrors.IsNotFound(err), "the pod that could not start is deleted: %v", err)
}

func TestUnschedulableFailsWithTheSchedulersMessage(t *testing.T) {
	c := newCluster(t, kubetest.NodeConfig{MemoryMB: 512})
	b := c.backend(t, func(cfg *kubernetes.Config) { cfg.StartTimeout = time.Minute })
	s := spec(t, b)
	s.MemoryMB = 4096
	ctx := t.Context()
	_, err := b.Create(ctx, s)
	require.NoError(t, err)
	began := time.Now()
	err = b.Start(ctx, s.EngineID)
	require.Error(t, err)
	require.NotErrorIs(t, err, backend.ErrUnavailable, "the engine's fault, not the cluster's reachability")
	require.Contains(t, err.Error(), "Insufficient memory")
	require.Less(t, time.Since(began), 10*time.Second)
}

func TestEventsOnlyForOwnedEnginesAndOutsideDeletions(t *testing.T) {
	c := newCluster(t, kubetest.NodeConfig{})
	var mu sync.Mutex
	owned := map[string]bool{}
	b := c.backend(t, func(cfg *kubernetes.Config) {
		cfg.Owns = func(id string) bool { mu.Lock(); defer mu.Unlock(); return owned[id] }
	})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	events := b.Events(ctx)
	mine, theirs, deleted := spec(t, b), spec(t, b), spec(t, b)
	mu.Lock()
	owned[mine.EngineID], owned[deleted.EngineID] = true, true
	mu.Unlock()
	for _, s := range []backend.Spec{mine, theirs, deleted} {
		_, err := b.Create(ctx, s)
		require.NoError(t, err)
		require.NoError(t, b.Start(ctx, s.EngineID))
	}
	require.NoError(t, c.node.Kill(kubernetes.PodName(theirs.EngineID)))
	require.NoError(t, c.node.Kill(kubernetes.PodName(mine.EngineID)))
	// Deleted by someone else (a drain, kubectl): the engine is gone too.
	require.NoError(t, b.Client().CoreV1().Pods(c.ns).Delete(ctx, kubernetes.PodName(deleted.EngineID), metav1.DeleteOptions{}))

	got := map[string]backend.Event{}
	timeout := time.After(15 * time.Second)
	for len(got) < 2 {
		select {
		case ev := <-events:
			require.NotEqual(t, theirs.EngineID, ev.EngineID, "another replica's engine")
			got[ev.EngineID] = ev
		case <-timeout:
			t.Fatalf("events: got %v", got)
		}
	}
	require.Equal(t, 137, got[mine.EngineID].ExitCode, "SIGKILL")
	require.Contains(t, got, deleted.EngineID)
}

func TestNewBackendAdoptsRunningPods(t *testing.T) {
	c := newCluster(t, kubetest.NodeConfig{})
	dep := "k8s-" + uuid.NewString()[:8]
	first := c.backend(t, func(cfg *kubernetes.Config) { cfg.Deployment = dep })
	s := spec(t, first) // destroyed by the closed backend: it polls then
	ctx := t.Context()
	_, err := first.Create(ctx, s)
	require.NoError(t, err)
	require.NoError(t, first.Start(ctx, s.EngineID))
	url := first.URL(s.EngineID, s.Port)
	before, err := first.Inspect(ctx, s.EngineID)
	require.NoError(t, err)
	first.Close()

	// An orchestrator restart: the new backend knows the address at once
	// (from its informer's listing) and sees the same instance running.
	second := c.backend(t, func(cfg *kubernetes.Config) { cfg.Deployment = dep })
	require.Equal(t, url, second.URL(s.EngineID, s.Port))
	after, err := second.Inspect(ctx, s.EngineID)
	require.NoError(t, err)
	require.Equal(t, before.ID, after.ID)
	require.Equal(t, backend.StatusRunning, after.Status)
	require.NoError(t, backendtest.WaitHealthy(ctx, url))
}

func TestFreshPodAddressesAreFollowed(t *testing.T) {
	c := newCluster(t, kubetest.NodeConfig{FreshIPs: true})
	b := c.backend(t, nil)
	s := spec(t, b)
	ctx := t.Context()
	_, err := b.Create(ctx, s)
	require.NoError(t, err)
	require.NoError(t, b.Start(ctx, s.EngineID))
	first := b.URL(s.EngineID, s.Port)
	require.NoError(t, b.Stop(ctx, s.EngineID, time.Second))
	require.NoError(t, b.Start(ctx, s.EngineID))
	second := b.URL(s.EngineID, s.Port)
	require.NotEqual(t, first, second, "a new Pod, a new IP")
	require.NoError(t, backendtest.WaitHealthy(ctx, second))
}

func TestClaimOfAnotherEngineIsAConflict(t *testing.T) {
	c := newCluster(t, kubetest.NodeConfig{})
	b := c.backend(t, nil)
	a := spec(t, b)
	other := a
	other.EngineID = a.EngineID[:12] + "-other-" + strconv.Itoa(os.Getpid())
	ctx := t.Context()
	_, err := b.Create(ctx, a)
	require.NoError(t, err)
	_, err = b.Create(ctx, other)
	require.ErrorIs(t, err, backend.ErrConflict, "two engines must never share a brain")
	require.NoError(t, b.Destroy(ctx, other.EngineID), "and destroying the other keeps this one's data")
	_, err = b.Inspect(ctx, a.EngineID)
	require.NoError(t, err)
}

func TestBadConfiguration(t *testing.T) {
	_, err := kubernetes.New(context.Background(), kubernetes.Config{REST: &rest.Config{Host: "https://127.0.0.1:1"}, VolumeSize: "lots"})
	require.ErrorContains(t, err, "volume size")
	_, err = kubernetes.New(context.Background(), kubernetes.Config{REST: &rest.Config{Host: "https://127.0.0.1:1"}, CallTimeout: time.Second})
	require.ErrorIs(t, err, backend.ErrUnavailable)
}

func TestSnapshotRestorePrune(t *testing.T) {
	c := newCluster(t, kubetest.NodeConfig{})
	b := c.backend(t, nil)
	ctx := t.Context()
	key, hash := backendtest.NewKey()
	s := spec(t, b)
	s.KeyHash = hash
	_, err := b.Create(ctx, s)
	require.NoError(t, err)
	counter := func(input string) int {
		require.NoError(t, b.Start(ctx, s.EngineID))
		url := b.URL(s.EngineID, s.Port)
		require.NoError(t, backendtest.WaitHealthy(ctx, url))
		n := executeN(t, url, key, input)
		require.NoError(t, b.Stop(ctx, s.EngineID, time.Second))
		return n
	}
	require.Equal(t, 1, counter("one"))
	_, err = b.Snapshot(ctx, s.EngineID)
	require.NoError(t, err)
	require.NoError(t, b.Start(ctx, s.EngineID))
	_, err = b.Snapshot(ctx, s.EngineID)
	require.ErrorIs(t, err, backend.ErrConflict, "never while it runs")
	require.NoError(t, b.Stop(ctx, s.EngineID, time.Second))
	require.Equal(t, 2, counter("two"))
	second, err := b.Snapshot(ctx, s.EngineID)
	require.NoError(t, err)
	require.Equal(t, "snap-2", second)
	require.Equal(t, 3, counter("three"))

	require.NoError(t, b.Restore(ctx, s.EngineID, "snap-1"))
	require.Equal(t, 2, counter("after restore"), "the brain is snapshot 1's again")
	require.ErrorIs(t, b.Restore(ctx, s.EngineID, "snap-9"), backend.ErrNotFound)

	kept, err := b.PruneSnapshots(ctx, s.EngineID, 1)
	require.NoError(t, err)
	require.Equal(t, []string{"snap-2"}, kept)
	require.NoError(t, b.Destroy(ctx, s.EngineID))
	list, err := b.Client().CoreV1().PersistentVolumeClaims(c.ns).List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	for _, pvc := range list.Items {
		require.NotNil(t, pvc.DeletionTimestamp, "destroy deletes the data and its snapshots: %s", pvc.Name)
	}
}

// executeN runs one /execute and returns the engine's counter.
func executeN(t *testing.T, url, key, input string) int {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"input": input})
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url+"/execute", bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("X-Engine-Key", key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var out struct {
		Counter int `json:"counter"`
	}
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	return out.Counter
}
