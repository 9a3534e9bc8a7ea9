package kubernetes_test

import (
	"context"
	"hash/fnv"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/rest"

	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/backend/kubernetes"
	"github.com/september/bap-engine/internal/kubetest"
)

// counter counts the API requests of one client by verb.
type counter struct {
	mu  sync.Mutex
	n   map[string]int
	all atomic.Int64
}

func (c *counter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		c.all.Add(1)
		c.mu.Lock()
		if c.n == nil {
			c.n = map[string]int{}
		}
		verb := r.Method
		if r.URL.Query().Get("watch") == "true" {
			verb = "WATCH"
		}
		c.n[verb]++
		c.mu.Unlock()
		return rt.RoundTrip(r)
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// counted is a REST config whose requests c counts.
func counted(rc *rest.Config, c *counter) *rest.Config {
	rc = rest.CopyConfig(rc)
	rc.WrapTransport = c.wrap
	return rc
}

func shardOf(id string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return int(h.Sum32() % 64)
}

// heapAfterGC is the live heap.
func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkTwoReplicas1000Engines drives BAP_BENCH_ENGINES (default 1000)
// engines through two backends of one deployment, as two replicas would
// (each owning half the shards), against the test API server, with a test
// node that reports Pods running without starting processes. It reports
// the API requests per engine operation, each replica's informer memory per
// engine, and checks that each replica hears only of its own shards'
// deaths. Run with -benchtime=1x.
func BenchmarkTwoReplicas1000Engines(b *testing.B) {
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("BAP_BENCH_ENGINES")); err == nil && v > 0 {
		n = v
	}
	rc := kubetest.Config(b)
	ns := kubetest.Namespace(b, rc)
	node := kubetest.StartNode(b, rc, kubetest.NodeConfig{Namespace: ns, Command: []string{"/bin/false"}, NoProcesses: true})
	dep := "bench-" + uuid.NewString()[:8]
	var counts [2]counter
	var reps [2]*kubernetes.Backend
	for i := range reps {
		cfg := kubernetes.Config{
			REST: counted(rc, &counts[i]), Namespace: ns, Deployment: dep, DefaultImage: testImage,
			Shard: shardOf, Owns: func(id string) bool { return shardOf(id)%2 == i },
			StartTimeout: time.Minute, CallTimeout: 30 * time.Second,
		}
		be, err := kubernetes.New(context.Background(), cfg)
		require.NoError(b, err)
		b.Cleanup(func() { be.Close() })
		reps[i] = be
	}
	ctx := context.Background()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = uuid.NewString()
	}
	total := func() int64 { return counts[0].all.Load() + counts[1].all.Load() }
	// run does op on every engine, 16 at a time, alternating replicas
	// (requests reach either), and reports its latency and API requests.
	run := func(name string, op func(be backend.Backend, id string) error) {
		began, calls := time.Now(), total()
		var (
			g   errgroup.Group
			sum atomic.Int64
		)
		g.SetLimit(16)
		for i, id := range ids {
			g.Go(func() error {
				t0 := time.Now()
				err := op(reps[i%2], id)
				sum.Add(int64(time.Since(t0)))
				return err
			})
		}
		require.NoError(b, g.Wait(), name)
		d := time.Since(began)
		b.ReportMetric(float64(total()-calls)/float64(n), "api-calls/"+name)
		b.ReportMetric(float64(sum.Load())/1e6/float64(n), "ms/"+name)
		b.ReportMetric(float64(n)/d.Seconds(), name+"/s")
		b.Logf("%s: %d engines in %s, %.1f API requests each", name, n, d.Round(time.Millisecond), float64(total()-calls)/float64(n))
	}
	for b.Loop() {
		_, hash := backendtest.NewKey()
		run("create", func(be backend.Backend, id string) error {
			_, err := be.Create(ctx, backend.Spec{EngineID: id, ProductID: "p", Port: 9000, KeyHash: hash})
			return err
		})
		run("start", func(be backend.Backend, id string) error { return be.Start(ctx, id) })
		run("inspect", func(be backend.Backend, id string) error { _, err := be.Inspect(ctx, id); return err })
		// A fresh backend's informer lists every Pod: its heap is what a
		// replica pays to watch the fleet.
		before := heapAfterGC()
		probe, err := kubernetes.New(ctx, kubernetes.Config{REST: rc, Namespace: ns, Deployment: dep})
		require.NoError(b, err)
		for _, id := range ids {
			require.NotEmpty(b, probe.URL(id, 0))
		}
		after := heapAfterGC()
		probe.Close()
		b.ReportMetric(float64(after-before)/float64(n), "informer-bytes/engine")

		// Deaths: each replica hears of its own shards' only.
		var heard [2]atomic.Int64
		ectx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		for i, be := range reps {
			events := be.Events(ectx)
			wg.Go(func() {
				for ev := range events {
					require.Equal(b, i, shardOf(ev.EngineID)%2, "replica %d heard of another's engine", i)
					heard[i].Add(1)
				}
			})
		}
		var g errgroup.Group
		g.SetLimit(32)
		for _, id := range ids {
			g.Go(func() error { return node.Fail(kubernetes.PodName(id)) })
		}
		require.NoError(b, g.Wait())
		require.Eventually(b, func() bool { return heard[0].Load()+heard[1].Load() >= int64(n) }, time.Minute, 50*time.Millisecond)
		cancel()
		wg.Wait()
		b.ReportMetric(float64(heard[0].Load()), "deaths-heard-by-replica-0")
		b.ReportMetric(float64(heard[1].Load()), "deaths-heard-by-replica-1")

		run("start-after-crash", func(be backend.Backend, id string) error { return be.Start(ctx, id) })
		run("stop", func(be backend.Backend, id string) error { return be.Stop(ctx, id, time.Second) })
		run("start-again", func(be backend.Backend, id string) error { return be.Start(ctx, id) })
		run("destroy", func(be backend.Backend, id string) error { return be.Destroy(ctx, id) })
	}
	for i := range counts {
		b.Logf("replica %d API requests by verb: %v", i, counts[i].n)
	}
}
