package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/september/bap-engine/internal/backend"
)

// Start runs the engine's Pod, creating it from the instance on its PVC,
// and returns once it runs with an address. A running (or starting) Pod of
// the instance is success; a terminated one is replaced. ErrNotFound when
// there is no instance (the caller recreates); ErrImageNotFound when the
// image cannot be pulled; the scheduler's message when the Pod cannot be
// placed.
func (b *Backend) Start(ctx context.Context, engineID string) error {
	pvc, s, err := b.engineClaim(ctx, "start", engineID)
	if err != nil {
		return err
	}
	return b.run(ctx, engineID, pvc, s)
}

// engineClaim reads the engine's PVC and the spec it records, for op:
// ErrNotFound when there is none of this deployment's or it is going.
func (b *Backend) engineClaim(ctx context.Context, op, engineID string) (*corev1.PersistentVolumeClaim, specAnno, error) {
	pvc, err := b.getClaim(ctx, engineID)
	if err != nil {
		return nil, specAnno{}, err
	}
	s, ok := claimSpec(pvc)
	if !ok || !b.ours(pvc.Labels, engineID) {
		return nil, specAnno{}, fmt.Errorf("%s engine %s: %w", op, engineID, backend.ErrNotFound)
	}
	return pvc, s, nil
}

// run makes the instance of pvc run: an existing live Pod of it is waited
// for, anything else is replaced by a new Pod.
func (b *Backend) run(ctx context.Context, engineID string, pvc *corev1.PersistentVolumeClaim, s specAnno) error {
	instance := pvc.Annotations[annoInstance]
	if pvc.Annotations[annoState] != stateStarted {
		if err := b.setState(ctx, engineID, ptr(stateStarted)); err != nil {
			return err
		}
	}
	for range rounds {
		pod, err := b.getPod(ctx, engineID)
		if err != nil {
			return err
		}
		if pod != nil && pod.DeletionTimestamp == nil && !terminated(pod) && pod.Annotations[annoInstance] == instance {
			return b.waitRunning(ctx, pod)
		}
		if pod != nil {
			if err := b.deletePod(ctx, engineID, 0, true); err != nil {
				return err
			}
		}
		cctx, cancel := b.call(ctx)
		made, err := b.cs.CoreV1().Pods(b.cfg.Namespace).Create(cctx, b.podFor(engineID, pvc, s), metav1.CreateOptions{})
		cancel()
		if errors.Is(classify(err), backend.ErrConflict) {
			continue // a Pod of that name appeared meanwhile: look again
		}
		if err != nil {
			return wrap(err, "create pod %s", PodName(engineID))
		}
		return b.waitRunning(ctx, made)
	}
	return fmt.Errorf("start engine %s: %w: its pod keeps changing", engineID, backend.ErrConflict)
}

// waitRunning waits for pod to run with an address, failing fast with
// Kubernetes' reason when it cannot start; such a Pod is deleted so nothing
// keeps retrying it.
func (b *Backend) waitRunning(ctx context.Context, pod *corev1.Pod) error {
	engineID := pod.Labels[backend.LabelEngineID]
	uid := string(pod.UID)
	wctx, cancel := context.WithTimeout(ctx, b.cfg.StartTimeout)
	defer cancel()
	var last *corev1.Pod
	err := b.waitPod(wctx, engineID, func(p *corev1.Pod, fromAPI bool) (bool, error) {
		if p == nil || string(p.UID) != uid {
			if !fromAPI && !b.seenGone(uid) {
				return false, nil // the cache has not seen it yet
			}
			return false, fmt.Errorf("pod %s was deleted while it started", pod.Name)
		}
		last = p
		if p.DeletionTimestamp != nil {
			return false, fmt.Errorf("pod %s is being deleted", pod.Name)
		}
		if err := startFailure(p); err != nil {
			return false, err
		}
		return p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "", nil
	}, true)
	if err == nil {
		b.setIP(engineID, uid, last.Status.PodIP)
		return nil
	}
	if ctx.Err() == nil && wctx.Err() != nil {
		reason := "not scheduled yet"
		if last != nil {
			reason = pendingReason(last)
		}
		err = fmt.Errorf("pod %s did not run within %s: %s", pod.Name, b.cfg.StartTimeout, reason)
	}
	if ctx.Err() == nil {
		// Leave nothing retrying; the instance (PVC) stays, exited. A Pod
		// whose engine never ran goes at once; one that may run gets its
		// grace period.
		grace := int64(0)
		if last != nil && !everRan(last) {
			grace = -1
		}
		if derr := b.deletePod(context.WithoutCancel(ctx), engineID, grace, false); derr != nil {
			b.cfg.Logger.Warn("delete pod that could not start", "pod", pod.Name, "err", derr)
		}
	}
	return err
}

// Stop deletes the engine's Pod with grace as its termination grace period
// (SIGTERM, then SIGKILL after grace) and returns when it is gone. The PVC
// stays: the instance is exited. Stopped or missing is success.
func (b *Backend) Stop(ctx context.Context, engineID string, grace time.Duration) error {
	secs := int64(max(1, math.Ceil(grace.Seconds())))
	pod, err := b.getPod(ctx, engineID)
	if err != nil {
		return err
	}
	if pod != nil {
		return b.deletePodObj(ctx, pod, secs, true, grace+b.cfg.CallTimeout)
	}
	// No Pod: a paused instance becomes a stopped one.
	pvc, err := b.getClaim(ctx, engineID)
	if err != nil || pvc == nil || pvc.Annotations[annoState] != statePaused {
		return err
	}
	return b.setState(ctx, engineID, ptr(stateStarted))
}

// deletePod deletes the engine's Pod, if any, with grace seconds (0: the
// Pod's own period, or at once when it already terminated; -1: at once, for
// a Pod whose engine never ran), and waits for it to be gone when wait is
// set.
func (b *Backend) deletePod(ctx context.Context, engineID string, grace int64, wait bool) error {
	pod, err := b.getPod(ctx, engineID)
	if err != nil || pod == nil {
		return err
	}
	timeout := time.Duration(podGrace)*time.Second + b.cfg.CallTimeout
	if grace > 0 {
		timeout = time.Duration(grace)*time.Second + b.cfg.CallTimeout
	}
	return b.deletePodObj(ctx, pod, grace, wait, timeout)
}

// deletePodObj deletes pod (by UID) and waits up to timeout for it to be
// gone when wait is set. A terminated Pod is deleted at once; a live one
// gets grace seconds (0: its own period) and is never force-deleted, so
// its replacement cannot run beside it on the same volume.
func (b *Backend) deletePodObj(ctx context.Context, pod *corev1.Pod, grace int64, wait bool, timeout time.Duration) error {
	engineID := pod.Labels[backend.LabelEngineID]
	uid := string(pod.UID)
	b.mu.Lock()
	b.own[uid] = true
	b.mu.Unlock()
	if pod.DeletionTimestamp == nil {
		b.keepLog(ctx, pod)
		opts := metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &pod.UID}}
		switch {
		case terminated(pod) || pod.Spec.NodeName == "" || grace < 0:
			opts.GracePeriodSeconds = ptr(int64(0)) // nothing runs
		case grace > 0:
			opts.GracePeriodSeconds = &grace
		}
		cctx, cancel := b.call(ctx)
		err := b.cs.CoreV1().Pods(b.cfg.Namespace).Delete(cctx, pod.Name, opts)
		cancel()
		switch classify(err) {
		case backend.ErrNotFound:
			return nil
		case backend.ErrConflict:
			// The UID precondition failed: another Pod now has the name;
			// it is not the one asked about, which is gone.
			return nil
		}
		if err != nil {
			return wrap(err, "delete pod %s", pod.Name)
		}
	}
	if !wait {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := b.waitPod(wctx, engineID, func(p *corev1.Pod, fromAPI bool) (bool, error) {
		if fromAPI {
			return p == nil || string(p.UID) != uid, nil
		}
		return b.seenGone(uid), nil
	}, false)
	if err != nil {
		return fmt.Errorf("wait for pod %s to be deleted: %w: %w", pod.Name, backend.ErrUnavailable, err)
	}
	return nil
}

// Pause deletes the engine's Pod and marks the instance paused (a cold
// pause: Kubernetes cannot freeze a Pod). Paused is success; ErrConflict
// when it is not running, ErrNotFound when there is no instance.
func (b *Backend) Pause(ctx context.Context, engineID string) error {
	pvc, _, err := b.engineClaim(ctx, "pause", engineID)
	if err != nil {
		return err
	}
	pod, err := b.getPod(ctx, engineID)
	if err != nil {
		return err
	}
	if pod == nil || pod.DeletionTimestamp != nil || terminated(pod) {
		if pvc.Annotations[annoState] == statePaused && pod == nil {
			return nil
		}
		return fmt.Errorf("pause engine %s: %w: it is not running", engineID, backend.ErrConflict)
	}
	if err := b.setState(ctx, engineID, ptr(statePaused)); err != nil {
		return err
	}
	return b.deletePodObj(ctx, pod, 0, true, time.Duration(podGrace)*time.Second+b.cfg.CallTimeout)
}

// Unpause recreates the Pod of a paused engine and waits for it to run;
// running is success. ErrNotFound when there is no instance, ErrConflict
// when it is neither paused nor running.
func (b *Backend) Unpause(ctx context.Context, engineID string) error {
	pvc, s, err := b.engineClaim(ctx, "unpause", engineID)
	if err != nil {
		return err
	}
	pod, err := b.getPod(ctx, engineID)
	if err != nil {
		return err
	}
	if pod != nil && pod.DeletionTimestamp == nil && !terminated(pod) {
		return b.waitRunning(ctx, pod)
	}
	if pvc.Annotations[annoState] != statePaused {
		return fmt.Errorf("unpause engine %s: %w: it is not paused", engineID, backend.ErrConflict)
	}
	return b.run(ctx, engineID, pvc, s)
}
