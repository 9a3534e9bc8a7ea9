package kubetest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

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
		// An image's version is baked into it; the one binary run here for
		// every image learns it this way (as subprocess engines do).
		"ENGINE_VERSION=" + c.Image,
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
