package kubetest

import (
	"context"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// pvcProtection is the finalizer the API server's admission puts on PVCs
// and the controller-manager removes once no Pod uses them; the test node
// plays that controller for its namespace.
const pvcProtection = "kubernetes.io/pvc-protection"

// NodeConfig configures a test node.
type NodeConfig struct {
	// Namespace is the namespace whose Pods the node schedules and runs.
	Namespace string
	// Command starts one engine (argv); the Pod's image only names it.
	// Required.
	Command []string
	// Env is added to every engine's environment.
	Env []string
	// DataRoot holds one directory per PVC; empty: a t.TempDir.
	DataRoot string
	// MemoryMB and CPUs are the node's capacity; 0 is unlimited. A Pod whose
	// limits do not fit is reported unschedulable, as the scheduler would.
	MemoryMB int
	CPUs     float64
	// FreshIPs gives every Pod a new address, as a cluster does. By default
	// a Pod gets the address its name had before, so engine URLs stay put
	// across stop and start (what the suites written for Docker expect).
	FreshIPs bool
	// TerminationLimit caps the grace period honoured on deletion (tests
	// need not wait 30 s for an engine that ignores SIGTERM); 0: none.
	TerminationLimit time.Duration
	// NoProcesses reports Pods running (with an address) without starting
	// anything, and deletes them at once: for measuring the API side of a
	// thousand engines without a thousand processes. Fail ends such a Pod.
	NoProcesses bool
}

// Node is a test kubelet (and scheduler, and PVC protection controller) for
// one namespace of the test API server: no real kubelet can run here, so it
// plays the node. It binds pending Pods to itself; runs each Pod's engine as
// a local process (Command) on an address of its own, 127.x.y.z port 8000,
// which it reports as the Pod IP; maps each PVC to a directory, substituting
// the mount paths in the Pod's environment (so SQLITE_DB_PATH=/data/... lands
// in the PVC's directory, and a brain survives Pod deletion); reports the
// Pod Running and Ready, and Failed or Succeeded when the process exits; and
// honours deletion with SIGTERM, the grace period, SIGKILL and the final
// delete. An image marked with SetUnpullable leaves its Pods waiting with
// ErrImagePull. It leaves no process behind (Close, run by t.Cleanup).
type Node struct {
	Name string

	cfg   NodeConfig
	cs    kubernetes.Interface
	pods  corelisters.PodLister
	pvcs  corelisters.PersistentVolumeClaimLister
	queue workqueue.TypedRateLimitingInterface[string]
	stop  chan struct{}
	wg    sync.WaitGroup

	srv *httptest.Server // the kubelet API the API server reads logs from

	mu         sync.Mutex
	procs      map[types.UID]*podProc
	unpullable map[string]bool
	closed     bool
}

// podProc is one Pod's engine process.
type podProc struct {
	uid       types.UID
	name      string
	ip        string
	pid       int
	started   time.Time
	done      chan struct{}
	exitCode  int
	finished  time.Time
	deleting  bool // a deletion is being honoured
	finalized bool
	logPath   string
}

// StartNode starts a test node for cfg.Namespace on the API server rc
// points at; t.Cleanup stops it and kills its engines.
func StartNode(t testing.TB, rc *rest.Config, cfg NodeConfig) *Node {
	t.Helper()
	if len(cfg.Command) == 0 {
		t.Fatal("kubetest: NodeConfig.Command is required")
	}
	if cfg.DataRoot == "" {
		cfg.DataRoot = t.TempDir()
	}
	rc = rest.CopyConfig(rc)
	rc.QPS, rc.Burst = 200, 400
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatalf("kubetest: node client: %v", err)
	}
	n := &Node{
		Name:       "kubetest-node-" + strconv.Itoa(rand.IntN(1_000_000)),
		cfg:        cfg,
		cs:         cs,
		queue:      workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[string](5*time.Millisecond, time.Second)),
		stop:       make(chan struct{}),
		procs:      map[types.UID]*podProc{},
		unpullable: map[string]bool{},
	}
	f := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(cfg.Namespace))
	podInf := f.Core().V1().Pods()
	pvcInf := f.Core().V1().PersistentVolumeClaims()
	n.pods = podInf.Lister()
	n.pvcs = pvcInf.Lister()
	enqueue := func(prefix string) func(obj any) {
		return func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if m, ok := obj.(metav1.Object); ok {
				n.queue.Add(prefix + m.GetName())
			}
		}
	}
	for _, h := range []struct {
		inf    cache.SharedIndexInformer
		prefix string
	}{{podInf.Informer(), "pod/"}, {pvcInf.Informer(), "pvc/"}} {
		add := enqueue(h.prefix)
		if _, err := h.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    add,
			UpdateFunc: func(_, obj any) { add(obj) },
			DeleteFunc: add,
		}); err != nil {
			t.Fatalf("kubetest: node informer: %v", err)
		}
	}
	f.Start(n.stop)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if !cache.WaitForCacheSync(ctx.Done(), podInf.Informer().HasSynced, pvcInf.Informer().HasSynced) {
		close(n.stop)
		f.Shutdown()
		t.Fatal("kubetest: node informers did not sync")
	}
	if err := n.register(ctx); err != nil {
		close(n.stop)
		f.Shutdown()
		t.Fatalf("kubetest: register node: %v", err)
	}
	for range 4 {
		n.wg.Go(n.work)
	}
	t.Cleanup(func() {
		n.Close()
		f.Shutdown()
		ctx, cancel := ctxCall()
		defer cancel()
		_ = n.cs.CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{})
	})
	return n
}

// register serves the kubelet API's container logs over TLS and creates the
// Node object whose address and kubelet port the API server dials for
// pods/log (without --kubelet-certificate-authority it does not verify the
// certificate).
func (n *Node) register(ctx context.Context) error {
	n.srv = httptest.NewUnstartedServer(http.HandlerFunc(n.serveLogs))
	n.srv.StartTLS()
	port := n.srv.Listener.Addr().(*net.TCPAddr).Port
	node, err := n.cs.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{"bap-engine.test/kubetest": "true"}},
	}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	node.Status = corev1.NodeStatus{
		Addresses:       []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(port)}},
		Conditions:      []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}},
	}
	_, err = n.cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	return err
}
