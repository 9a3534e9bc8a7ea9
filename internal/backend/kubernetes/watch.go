package kubernetes

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/september/bap-engine/internal/backend"
)

// Watch tuning.
const (
	// recheck is how often a wait confirms with the API server what the
	// informer has not told it yet: the watch is trusted to be quick, not
	// to be complete.
	recheck = time.Second
	// goneKeep is how long a deleted Pod's UID is remembered.
	goneKeep = 10 * time.Minute
)

// startInformer starts the shared informer on this deployment's engine Pods
// and waits for its first listing.
func (b *Backend) startInformer(ctx context.Context) error {
	f := informers.NewSharedInformerFactoryWithOptions(b.cs, b.cfg.Resync,
		informers.WithNamespace(b.cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = b.selector }),
		informers.WithTransform(trimPod))
	pods := f.Core().V1().Pods()
	inf := pods.Informer()
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if p, ok := obj.(*corev1.Pod); ok {
				b.onPod(p, false, false)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, _ := oldObj.(*corev1.Pod)
			p, ok := newObj.(*corev1.Pod)
			if ok {
				b.onPod(p, false, o != nil && o.ResourceVersion == p.ResourceVersion)
			}
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				b.onPod(p, true, false)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("engine pod informer: %w", err)
	}
	b.pods = pods.Lister()
	b.informer = inf
	b.stopInf = make(chan struct{})
	f.Start(b.stopInf)
	sctx, cancel := context.WithTimeout(ctx, b.cfg.CallTimeout)
	defer cancel()
	if !cache.WaitForCacheSync(sctx.Done(), inf.HasSynced) {
		return fmt.Errorf("engine pod informer: %w: no listing of namespace %s within %s",
			backend.ErrUnavailable, b.cfg.Namespace, b.cfg.CallTimeout)
	}
	return nil
}

// trimPod drops what the backend never reads from cached Pods (the spec,
// with the engine's environment, and the managed fields), so the informer
// holds a few hundred bytes per engine.
func trimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	p.ManagedFields = nil
	nodeName := p.Spec.NodeName
	p.Spec = corev1.PodSpec{NodeName: nodeName}
	p.Status.Conditions = slicesFilter(p.Status.Conditions, func(c corev1.PodCondition) bool {
		return c.Type == corev1.PodScheduled
	})
	return p, nil
}

func slicesFilter[T any](s []T, keep func(T) bool) []T {
	out := s[:0]
	for _, v := range s {
		if keep(v) {
			out = append(out, v)
		}
	}
	return out
}

// onPod handles one informer notification: it wakes the engine's waiters,
// keeps its address, and reports an engine that ended on its own. resync
// marks the informer's periodic replay, which reports again a terminated
// Pod nobody cleaned up (the first report may have found no listener).
func (b *Backend) onPod(p *corev1.Pod, deleted, resync bool) {
	engineID := p.Labels[backend.LabelEngineID]
	if engineID == "" || p.Name != PodName(engineID) {
		return
	}
	uid := string(p.UID)
	var report *backend.Event
	b.mu.Lock()
	if ch, ok := b.waiters[engineID]; ok {
		close(ch)
		delete(b.waiters, engineID)
	}
	switch {
	case deleted:
		if cur, ok := b.ips[engineID]; ok && cur.uid == uid {
			delete(b.ips, engineID)
		}
		b.gone[uid] = time.Now()
		if _, seen := b.reported[uid]; !b.own[uid] && !seen {
			// Deleted by someone else (a drain, an eviction, kubectl): the
			// engine is gone as surely as if it had crashed.
			report = &backend.Event{EngineID: engineID, ExitCode: -1, At: time.Now().UTC()}
			if terminated(p) {
				report.ExitCode = exitCode(p)
			}
		}
		delete(b.own, uid)
		delete(b.reported, uid)
		b.gcLocked()
	default:
		if p.Status.PodIP != "" && p.DeletionTimestamp == nil {
			if cur, ok := b.ips[engineID]; !ok || cur.uid == uid || !terminated(p) {
				b.ips[engineID] = podIP{uid: uid, ip: p.Status.PodIP}
			}
		}
		if terminated(p) && p.DeletionTimestamp == nil && !b.own[uid] {
			// At is when this process learnt of the end: the Pod's own
			// times have whole seconds only, and would date a crash in
			// the second of a start before that start.
			at, seen := b.reported[uid]
			if !seen {
				at = time.Now().UTC()
				b.reported[uid] = at
			}
			if !seen || resync {
				report = &backend.Event{EngineID: engineID, ExitCode: exitCode(p), At: at}
			}
		}
	}
	b.mu.Unlock()
	if report != nil && (b.cfg.Owns == nil || b.cfg.Owns(engineID)) {
		b.hub.Publish(*report)
	}
}

// gcLocked forgets deleted Pods long gone.
func (b *Backend) gcLocked() {
	horizon := time.Now().Add(-goneKeep)
	for uid, at := range b.gone {
		if at.Before(horizon) {
			delete(b.gone, uid)
		}
	}
}

// setIP records the address of the engine's Pod uid.
func (b *Backend) setIP(engineID, uid, ip string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ips[engineID] = podIP{uid: uid, ip: ip}
}

// seenGone reports whether the informer saw the Pod uid deleted.
func (b *Backend) seenGone(uid string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.gone[uid]
	return ok
}

// wake returns a channel closed at the engine's next Pod notification.
func (b *Backend) wake(engineID string) <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	ch, ok := b.waiters[engineID]
	if !ok {
		ch = make(chan struct{})
		b.waiters[engineID] = ch
	}
	return ch
}

// waitPod waits until done holds for the engine's Pod (nil when there is
// none) or returns done's error. It reads the informer's cache at each of
// the engine's notifications (none once the backend is closed: then it
// polls) and the API server every recheck (fromAPI
// tells done which it sees: the cache may lag behind); fresh makes it ask
// the API server first.
func (b *Backend) waitPod(ctx context.Context, engineID string, done func(p *corev1.Pod, fromAPI bool) (bool, error), fresh bool) error {
	tick := time.NewTicker(recheck)
	defer tick.Stop()
	useAPI := fresh
	for {
		ch := b.wake(engineID)
		var pod *corev1.Pod
		if useAPI {
			p, err := b.getPod(ctx, engineID)
			if err != nil {
				// Asked again at the next recheck; the wait's own deadline
				// bounds a server that keeps failing.
				b.cfg.Logger.Debug("wait for pod: get", "engine_id", engineID, "err", err)
				useAPI = false
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-tick.C:
					useAPI = true
				}
				continue
			}
			pod = p
		} else if p, err := b.pods.Pods(b.cfg.Namespace).Get(PodName(engineID)); err == nil {
			pod = p
		}
		ok, err := done(pod, useAPI)
		switch {
		case err != nil:
			return err
		case ok:
			return nil
		}
		useAPI = false
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		case <-tick.C:
			useAPI = true
		}
	}
}

// Waiting reasons of a container that will not start without a change
// (SPEC §10: fail at once rather than at the boot timeout).
var (
	pullFailures   = []string{"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
	configFailures = []string{"CreateContainerConfigError", "CreateContainerError", "RunContainerError", "CrashLoopBackOff"}
)

// startFailure says why a Pod will not start, or nil while it may.
func startFailure(p *corev1.Pod) error {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
			return fmt.Errorf("pod %s cannot be scheduled: %s", p.Name, c.Message)
		}
	}
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil {
			switch {
			case contains(pullFailures, w.Reason):
				return fmt.Errorf("pod %s: %w: %s: %s", p.Name, backend.ErrImageNotFound, w.Reason, w.Message)
			case contains(configFailures, w.Reason):
				return fmt.Errorf("pod %s cannot start its engine: %s: %s", p.Name, w.Reason, w.Message)
			}
		}
		if t := cs.State.Terminated; t != nil {
			return fmt.Errorf("pod %s: engine exited with code %d before it was up (%s) %s",
				p.Name, t.ExitCode, t.Reason, strings.TrimSpace(t.Message))
		}
	}
	if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
		return fmt.Errorf("pod %s ended (%s): %s %s", p.Name, p.Status.Phase, p.Status.Reason, p.Status.Message)
	}
	return nil
}

// pendingReason describes what a Pod that is not running waits for.
func pendingReason(p *corev1.Pod) string {
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil && w.Reason != "" {
			return w.Reason + ": " + w.Message
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Status == corev1.ConditionFalse && c.Message != "" {
			return string(c.Type) + ": " + c.Message
		}
	}
	if p.Spec.NodeName == "" {
		return "not scheduled yet"
	}
	return "phase " + string(p.Status.Phase)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// Events delivers engines whose Pod ended without the orchestrator asking
// (it terminated, or someone else deleted it), for the engines this replica
// owns, until ctx ends or the backend is closed.
func (b *Backend) Events(ctx context.Context) <-chan backend.Event {
	return b.hub.Stream(ctx, b.closed)
}
