package kubetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
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
	// Env is added to every engine's environment (e.g. a variable telling a
	// test binary to run as the engine).
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

// serveLogs answers GET /containerLogs/<namespace>/<pod>/<container> with
// tailLines, limitBytes and follow, as a kubelet does.
func (n *Node) serveLogs(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/containerLogs/"), "/")
	if len(parts) != 3 || parts[0] != n.cfg.Namespace {
		http.NotFound(w, r)
		return
	}
	n.mu.Lock()
	var p *podProc
	for _, q := range n.procs {
		if q.name == parts[1] && (p == nil || q.started.After(p.started)) {
			p = q
		}
	}
	n.mu.Unlock()
	if p == nil {
		http.Error(w, "container not found", http.StatusNotFound)
		return
	}
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	off := int64(len(data))
	if v := r.URL.Query().Get("tailLines"); v != "" {
		if k, err := strconv.Atoi(v); err == nil && k >= 0 {
			lines := strings.SplitAfter(string(data), "\n")
			if lines[len(lines)-1] == "" {
				lines = lines[:len(lines)-1]
			}
			if len(lines) > k {
				lines = lines[len(lines)-k:]
			}
			data = []byte(strings.Join(lines, ""))
		}
	}
	if v := r.URL.Query().Get("limitBytes"); v != "" {
		if k, err := strconv.Atoi(v); err == nil && k >= 0 && len(data) > k {
			data = data[:k]
		}
	}
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write(data)
	if r.URL.Query().Get("follow") != "true" {
		return
	}
	fl, _ := w.(http.Flusher)
	for {
		if fl != nil {
			fl.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case <-n.stop:
			return
		case <-time.After(50 * time.Millisecond):
		}
		f, err := os.Open(p.logPath)
		if err != nil {
			return
		}
		st, _ := f.Stat()
		if st != nil && st.Size() > off {
			buf := make([]byte, st.Size()-off)
			k, _ := f.ReadAt(buf, off)
			off += int64(k)
			_, _ = w.Write(buf[:k])
		}
		f.Close()
		if isDone(p.done) && (st == nil || st.Size() <= off) {
			return
		}
	}
}

// SetUnpullable makes Pods of image wait with ErrImagePull, as a kubelet
// does when the registry has no such image.
func (n *Node) SetUnpullable(image string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.unpullable[image] = true
}

// Kill sends SIGKILL to the engine of the named Pod, from outside, as a
// crash or the OOM killer would; the node then reports the Pod Failed.
func (n *Node) Kill(podName string) error {
	n.mu.Lock()
	var pid int
	for _, p := range n.procs {
		if p.name == podName && !isDone(p.done) {
			pid = p.pid
		}
	}
	n.mu.Unlock()
	if pid == 0 {
		return fmt.Errorf("kubetest: no running engine for pod %s", podName)
	}
	return syscall.Kill(-pid, syscall.SIGKILL)
}

// Running is how many engine processes the node runs now.
func (n *Node) Running() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := 0
	for _, p := range n.procs {
		if !isDone(p.done) {
			c++
		}
	}
	return c
}

// Close stops the node and kills every engine it runs (SIGKILL), waiting
// for them to be gone. Pods keep their last status on the API server.
func (n *Node) Close() {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	n.closed = true
	procs := make([]*podProc, 0, len(n.procs))
	for _, p := range n.procs {
		procs = append(procs, p)
	}
	n.mu.Unlock()
	close(n.stop)
	n.queue.ShutDown()
	if n.srv != nil {
		n.srv.Close()
	}
	// No process starts once closed is set; kill those that run, then wait
	// for the workers and reapers.
	for _, p := range procs {
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	}
	for _, p := range procs {
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
		}
	}
	n.wg.Wait()
}

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// work processes queued Pods and PVCs until the queue shuts down.
func (n *Node) work() {
	for {
		key, quit := n.queue.Get()
		if quit {
			return
		}
		var err error
		if name, ok := strings.CutPrefix(key, "pod/"); ok {
			err = n.syncPod(name)
		} else if name, ok := strings.CutPrefix(key, "pvc/"); ok {
			err = n.syncClaim(name)
		}
		if err != nil && !n.isClosed() {
			n.queue.AddRateLimited(key)
		} else {
			n.queue.Forget(key)
		}
		n.queue.Done(key)
	}
}

func (n *Node) isClosed() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.closed
}

func ctxCall() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

// syncPod brings one Pod's reality in line with the API server.
func (n *Node) syncPod(name string) error {
	pod, err := n.pods.Pods(n.cfg.Namespace).Get(name)
	if apierrors.IsNotFound(err) {
		// Gone (force-deleted): nothing of it may keep running.
		n.mu.Lock()
		for uid, p := range n.procs {
			switch {
			case p.name != name:
			case isDone(p.done):
				delete(n.procs, uid)
			case !p.deleting:
				_ = syscall.Kill(-p.pid, syscall.SIGKILL)
			}
		}
		n.mu.Unlock()
		return nil
	}
	if err != nil {
		return err
	}
	if pod.Spec.NodeName == "" {
		if pod.DeletionTimestamp != nil {
			return nil
		}
		return n.schedule(pod)
	}
	if pod.Spec.NodeName != n.Name {
		return nil
	}
	n.mu.Lock()
	p := n.procs[pod.UID]
	n.mu.Unlock()
	if pod.DeletionTimestamp != nil {
		if p != nil && !isDone(p.done) {
			n.terminate(p, pod)
			return nil
		}
		return n.finalDelete(pod)
	}
	if p != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed ||
		(n.cfg.NoProcesses && pod.Status.Phase == corev1.PodRunning) {
		return nil
	}
	return n.start(pod)
}

// requests are a Pod's limits (requests default to them).
func requests(pod *corev1.Pod) (memMB int64, milliCPU int64) {
	for _, c := range pod.Spec.Containers {
		if q, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
			memMB += q.Value() / (1024 * 1024)
		}
		if q, ok := c.Resources.Limits[corev1.ResourceCPU]; ok {
			milliCPU += q.MilliValue()
		}
	}
	return memMB, milliCPU
}

// schedule binds the Pod to this node, or marks it unschedulable when its
// limits do not fit beside the Pods already bound.
func (n *Node) schedule(pod *corev1.Pod) error {
	mem, cpu := requests(pod)
	var usedMem, usedCPU int64
	all, err := n.pods.Pods(n.cfg.Namespace).List(labels.Everything())
	if err != nil {
		return err
	}
	for _, o := range all {
		if o.Spec.NodeName == n.Name && o.Status.Phase != corev1.PodSucceeded && o.Status.Phase != corev1.PodFailed {
			m, c := requests(o)
			usedMem += m
			usedCPU += c
		}
	}
	var short []string
	if n.cfg.MemoryMB > 0 && usedMem+mem > int64(n.cfg.MemoryMB) {
		short = append(short, "1 Insufficient memory")
	}
	if n.cfg.CPUs > 0 && usedCPU+cpu > int64(n.cfg.CPUs*1000) {
		short = append(short, "1 Insufficient cpu")
	}
	ctx, cancel := ctxCall()
	defer cancel()
	if len(short) > 0 {
		msg := "0/1 nodes are available: " + strings.Join(short, ", ") + ". preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
		return n.updateStatus(pod.UID, pod.Name, func(s *corev1.PodStatus) {
			s.Phase = corev1.PodPending
			setCondition(s, corev1.PodScheduled, corev1.ConditionFalse, corev1.PodReasonUnschedulable, msg)
		})
	}
	err = n.cs.CoreV1().Pods(n.cfg.Namespace).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID},
		Target:     corev1.ObjectReference{Kind: "Node", Name: n.Name},
	}, metav1.CreateOptions{})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil // deleted, or bound meanwhile
	}
	return err
}

func setCondition(s *corev1.PodStatus, t corev1.PodConditionType, st corev1.ConditionStatus, reason, msg string) {
	now := metav1.Now()
	for i := range s.Conditions {
		if s.Conditions[i].Type == t {
			if s.Conditions[i].Status != st {
				s.Conditions[i].LastTransitionTime = now
			}
			s.Conditions[i].Status, s.Conditions[i].Reason, s.Conditions[i].Message = st, reason, msg
			return
		}
	}
	s.Conditions = append(s.Conditions, corev1.PodCondition{Type: t, Status: st, Reason: reason, Message: msg, LastTransitionTime: now})
}

// updateStatus applies mutate to the latest status of the Pod uid (nothing
// when the name now belongs to another Pod).
func (n *Node) updateStatus(uid types.UID, name string, mutate func(*corev1.PodStatus)) error {
	return retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		ctx, cancel := ctxCall()
		defer cancel()
		cur, err := n.cs.CoreV1().Pods(n.cfg.Namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if cur.UID != uid {
			return nil
		}
		mutate(&cur.Status)
		_, err = n.cs.CoreV1().Pods(n.cfg.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
}

// start runs the Pod's engine, or reports why it cannot.
func (n *Node) start(pod *corev1.Pod) error {
	if len(pod.Spec.Containers) != 1 {
		return n.failStart(pod, "CreateContainerConfigError", "kubetest runs pods of exactly one container")
	}
	c := pod.Spec.Containers[0]
	n.mu.Lock()
	unpullable := n.unpullable[c.Image]
	n.mu.Unlock()
	if unpullable {
		return n.updateStatus(pod.UID, pod.Name, func(s *corev1.PodStatus) {
			s.Phase = corev1.PodPending
			s.ContainerStatuses = []corev1.ContainerStatus{{
				Name: c.Name, Image: c.Image,
				State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{
					Reason:  "ErrImagePull",
					Message: fmt.Sprintf("failed to pull and unpack image %q: not found", c.Image),
				}},
			}}
		})
	}
	// Volumes: each PVC is a directory of its own (by UID: a PVC made again
	// under the same name is empty).
	mounts := map[string]string{} // mount path → directory
	for _, vm := range c.VolumeMounts {
		for _, v := range pod.Spec.Volumes {
			if v.Name != vm.Name || v.PersistentVolumeClaim == nil {
				continue
			}
			pvc, err := n.pvcs.PersistentVolumeClaims(n.cfg.Namespace).Get(v.PersistentVolumeClaim.ClaimName)
			if err != nil || pvc.DeletionTimestamp != nil {
				return fmt.Errorf("pod %s: persistentvolumeclaim %s not usable yet: %v", pod.Name, v.PersistentVolumeClaim.ClaimName, err)
			}
			dir := n.claimDir(pvc)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			mounts[vm.MountPath] = dir
		}
	}
	ip, err := n.allocIP(pod)
	if err != nil {
		return err
	}
	if n.cfg.NoProcesses {
		return n.updateStatus(pod.UID, pod.Name, func(s *corev1.PodStatus) { running(s, c, ip, 0, metav1.Now()) })
	}
	port := 8000
	if len(c.Ports) > 0 {
		port = int(c.Ports[0].ContainerPort)
	}
	env := []string{
		"PORT=" + strconv.Itoa(port),
		"ENGINE_LISTEN_HOST=" + ip,
		"TMPDIR=" + os.Getenv("TMPDIR"),
	}
	for _, e := range c.Env {
		env = append(env, e.Name+"="+mapPath(e.Value, mounts))
	}
	env = append(env, n.cfg.Env...)
	logDir := filepath.Join(n.cfg.DataRoot, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return err
	}
	logPath := filepath.Join(logDir, pod.Name+"-"+string(pod.UID)+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	argv := n.cfg.Command
	if len(c.Command) > 0 {
		// A helper (the orchestrator's own image): this binary runs its
		// arguments, mount paths mapped.
		argv = []string{n.cfg.Command[0]}
		for _, a := range append(slices.Clone(c.Command[1:]), c.Args...) {
			argv = append(argv, mapPath(a, mounts))
		}
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		logf.Close()
		return nil
	}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		n.mu.Unlock()
		return n.failStart(pod, "RunContainerError", err.Error())
	}
	p := &podProc{uid: pod.UID, name: pod.Name, ip: ip, pid: cmd.Process.Pid, started: time.Now(), done: make(chan struct{}), logPath: logPath}
	n.procs[pod.UID] = p
	n.mu.Unlock()
	n.wg.Go(func() { n.reap(cmd, p) })
	started := metav1.NewTime(p.started)
	return n.updateStatus(pod.UID, pod.Name, func(s *corev1.PodStatus) { running(s, c, ip, p.pid, started) })
}

// running sets a Pod's status to running container c at ip.
func running(s *corev1.PodStatus, c corev1.Container, ip string, pid int, started metav1.Time) {
	s.Phase = corev1.PodRunning
	s.HostIP = "127.0.0.1"
	s.HostIPs = []corev1.HostIP{{IP: "127.0.0.1"}}
	s.PodIP = ip
	s.PodIPs = []corev1.PodIP{{IP: ip}}
	s.StartTime = &started
	for _, t := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		setCondition(s, t, corev1.ConditionTrue, "", "")
	}
	s.ContainerStatuses = []corev1.ContainerStatus{{
		Name: c.Name, Image: c.Image, ImageID: "kubetest://" + c.Image,
		ContainerID: "kubetest://" + strconv.Itoa(pid),
		Ready:       true, Started: ptrTo(true),
		State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: started}},
	}}
}

// Fail ends a Pod's engine with exit code 1 in NoProcesses mode, as a
// crash would.
func (n *Node) Fail(podName string) error {
	ctx, cancel := ctxCall()
	defer cancel()
	pod, err := n.cs.CoreV1().Pods(n.cfg.Namespace).Get(ctx, podName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	now := metav1.Now()
	return n.updateStatus(pod.UID, podName, func(s *corev1.PodStatus) {
		s.Phase = corev1.PodFailed
		for i := range s.ContainerStatuses {
			s.ContainerStatuses[i].Ready = false
			s.ContainerStatuses[i].State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: 1, Reason: "Error", FinishedAt: now}}
		}
	})
}

func ptrTo[T any](v T) *T { return &v }

// failStart leaves the Pod waiting with reason.
func (n *Node) failStart(pod *corev1.Pod, reason, msg string) error {
	c := pod.Spec.Containers[0]
	return n.updateStatus(pod.UID, pod.Name, func(s *corev1.PodStatus) {
		s.Phase = corev1.PodPending
		s.ContainerStatuses = []corev1.ContainerStatus{{Name: c.Name, Image: c.Image,
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}}}
	})
}

// mapPath rewrites a value naming a path under a mount to the directory
// behind it.
func mapPath(v string, mounts map[string]string) string {
	for mp, dir := range mounts {
		if v == mp {
			return dir
		}
		if rest, ok := strings.CutPrefix(v, strings.TrimSuffix(mp, "/")+"/"); ok {
			return filepath.Join(dir, rest)
		}
	}
	return v
}

// claimDir is the directory behind a PVC.
func (n *Node) claimDir(pvc *corev1.PersistentVolumeClaim) string {
	return filepath.Join(n.cfg.DataRoot, "pvc", pvc.Name+"-"+string(pvc.UID))
}

// reap waits for an engine and reports how it ended.
func (n *Node) reap(cmd *exec.Cmd, p *podProc) {
	_ = cmd.Wait()
	code := -1
	if st := cmd.ProcessState; st != nil {
		if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		} else {
			code = st.ExitCode()
		}
	}
	n.mu.Lock()
	p.exitCode, p.finished = code, time.Now()
	deleting := p.deleting
	n.mu.Unlock()
	close(p.done)
	if deleting {
		return // terminate reports and deletes
	}
	if n.isClosed() {
		return
	}
	_ = n.reportExit(p)
}

// reportExit records the engine's end on its Pod.
func (n *Node) reportExit(p *podProc) error {
	n.mu.Lock()
	code, started, finished := p.exitCode, p.started, p.finished
	n.mu.Unlock()
	return n.updateStatus(p.uid, p.name, func(s *corev1.PodStatus) {
		reason := "Error"
		s.Phase = corev1.PodFailed
		if code == 0 {
			reason = "Completed"
			s.Phase = corev1.PodSucceeded
		}
		for _, t := range []corev1.PodConditionType{corev1.ContainersReady, corev1.PodReady} {
			setCondition(s, t, corev1.ConditionFalse, "PodCompleted", "")
		}
		for i := range s.ContainerStatuses {
			cs := &s.ContainerStatuses[i]
			cs.Ready = false
			cs.Started = ptrTo(false)
			cs.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: int32(code), Reason: reason,
				StartedAt: metav1.NewTime(started), FinishedAt: metav1.NewTime(finished),
				ContainerID: cs.ContainerID,
			}}
		}
	})
}

// terminate honours the deletion of a running Pod: SIGTERM, the grace
// period, SIGKILL, then the final status and delete (in the background).
func (n *Node) terminate(p *podProc, pod *corev1.Pod) {
	n.mu.Lock()
	if p.deleting {
		n.mu.Unlock()
		return
	}
	p.deleting = true
	n.mu.Unlock()
	grace := 30 * time.Second
	if pod.DeletionGracePeriodSeconds != nil {
		grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	}
	if n.cfg.TerminationLimit > 0 {
		grace = min(grace, n.cfg.TerminationLimit)
	}
	n.wg.Go(func() {
		_ = syscall.Kill(-p.pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = syscall.Kill(-p.pid, syscall.SIGKILL)
			<-p.done
		case <-n.stop:
			return
		}
		_ = n.reportExit(p)
		_ = n.finalDelete(pod)
	})
}

// finalDelete removes a Pod whose containers are gone, as the kubelet does
// once a deletion is honoured.
func (n *Node) finalDelete(pod *corev1.Pod) error {
	ctx, cancel := ctxCall()
	defer cancel()
	err := n.cs.CoreV1().Pods(n.cfg.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: ptrTo(int64(0)),
		Preconditions:      &metav1.Preconditions{UID: &pod.UID},
	})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		err = nil
	}
	if err == nil {
		n.mu.Lock()
		if p := n.procs[pod.UID]; p != nil && isDone(p.done) {
			delete(n.procs, pod.UID)
		}
		n.mu.Unlock()
	}
	return err
}

// syncClaim plays the PVC protection controller: a PVC being deleted loses
// its finalizer once no live Pod uses it, and its directory goes with it.
func (n *Node) syncClaim(name string) error {
	pvc, err := n.pvcs.PersistentVolumeClaims(n.cfg.Namespace).Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil || pvc.DeletionTimestamp == nil {
		return err
	}
	pods, err := n.pods.Pods(n.cfg.Namespace).List(labels.Everything())
	if err != nil {
		return err
	}
	for _, p := range pods {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		for _, v := range p.Spec.Volumes {
			if v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == name {
				return errors.New("in use") // retried with backoff; Pod events requeue nothing here
			}
		}
	}
	if err := os.RemoveAll(n.claimDir(pvc)); err != nil {
		return err
	}
	if !hasFinalizer(pvc, pvcProtection) {
		return nil
	}
	return retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		ctx, cancel := ctxCall()
		defer cancel()
		cur, err := n.cs.CoreV1().PersistentVolumeClaims(n.cfg.Namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if cur.UID != pvc.UID {
			return nil
		}
		var kept []string
		for _, f := range cur.Finalizers {
			if f != pvcProtection {
				kept = append(kept, f)
			}
		}
		cur.Finalizers = kept
		_, err = n.cs.CoreV1().PersistentVolumeClaims(n.cfg.Namespace).Update(ctx, cur, metav1.UpdateOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
}

func hasFinalizer(pvc *corev1.PersistentVolumeClaim, f string) bool {
	for _, x := range pvc.Finalizers {
		if x == f {
			return true
		}
	}
	return false
}

// Pod addresses: 127.<a>.<b>.<c>, <a> fixed per process (so concurrent
// test binaries rarely meet), names keep their address unless FreshIPs.
var ips = struct {
	sync.Mutex
	base   int
	next   int
	byName map[string]string
	inUse  map[string]types.UID
}{byName: map[string]string{}, inUse: map[string]types.UID{}}

// allocIP gives the Pod an address whose port 8000 is free.
func (n *Node) allocIP(pod *corev1.Pod) (string, error) {
	ips.Lock()
	defer ips.Unlock()
	if ips.base == 0 {
		ips.base = 16 + (os.Getpid() % 200)
	}
	key := pod.Namespace + "/" + pod.Name
	if ip, ok := ips.byName[key]; ok && !n.cfg.FreshIPs && free(ip) {
		ips.inUse[ip] = pod.UID
		return ip, nil
	}
	for range 1 << 16 {
		ips.next++
		ip := fmt.Sprintf("127.%d.%d.%d", ips.base, (ips.next>>8)&0xff, ips.next&0xff)
		if ips.next&0xff == 0 || ips.next&0xff == 255 {
			continue
		}
		if _, taken := ips.inUse[ip]; taken {
			continue
		}
		if !free(ip) {
			continue
		}
		ips.byName[key] = ip
		ips.inUse[ip] = pod.UID
		return ip, nil
	}
	return "", errors.New("kubetest: no free loopback address")
}

// free reports whether ip:8000 can be listened on.
func free(ip string) bool {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "8000"))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// Client is the node's API client (for tests' assertions).
func (n *Node) Client() kubernetes.Interface { return n.cs }
