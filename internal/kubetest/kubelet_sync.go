package kubetest

import (
	"context"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
)

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
	pods := n.cs.CoreV1().Pods(n.cfg.Namespace)
	return updateLatest(name, uid, pods.Get, pods.UpdateStatus, func(cur *corev1.Pod) { mutate(&cur.Status) })
}

// updateLatest applies change to the latest copy of the object named name
// and writes it back with update, again on a conflict; nothing when it is
// gone or the name now belongs to another object than uid.
func updateLatest[T metav1.Object](name string, uid types.UID,
	get func(context.Context, string, metav1.GetOptions) (T, error),
	update func(context.Context, T, metav1.UpdateOptions) (T, error),
	change func(T),
) error {
	return retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		ctx, cancel := ctxCall()
		defer cancel()
		cur, err := get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if cur.GetUID() != uid {
			return nil
		}
		change(cur)
		_, err = update(ctx, cur, metav1.UpdateOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
}
