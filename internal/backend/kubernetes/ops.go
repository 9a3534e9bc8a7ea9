package kubernetes

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/september/bap-engine/internal/backend"
)

// rounds bounds the create/adopt retries of one operation that races
// another writer (a conflict on update, an object being deleted).
const rounds = 20

// newInstanceID names one Create of a spec.
func newInstanceID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// getClaim reads the engine's PVC; nil without error when it is missing.
func (b *Backend) getClaim(ctx context.Context, engineID string) (*corev1.PersistentVolumeClaim, error) {
	cctx, cancel := b.call(ctx)
	defer cancel()
	pvc, err := b.cs.CoreV1().PersistentVolumeClaims(b.cfg.Namespace).Get(cctx, ClaimName(engineID), metav1.GetOptions{})
	switch {
	case errors.Is(classify(err), backend.ErrNotFound):
		return nil, nil
	case err != nil:
		return nil, wrap(err, "get persistentvolumeclaim %s", ClaimName(engineID))
	}
	return pvc, nil
}

// getPod reads the engine's Pod; nil without error when it is missing.
func (b *Backend) getPod(ctx context.Context, engineID string) (*corev1.Pod, error) {
	cctx, cancel := b.call(ctx)
	defer cancel()
	pod, err := b.cs.CoreV1().Pods(b.cfg.Namespace).Get(cctx, PodName(engineID), metav1.GetOptions{})
	switch {
	case errors.Is(classify(err), backend.ErrNotFound):
		return nil, nil
	case err != nil:
		return nil, wrap(err, "get pod %s", PodName(engineID))
	}
	return pod, nil
}

// ours reports whether an object's labels say it is this deployment's copy
// of the engine.
func (b *Backend) ours(l map[string]string, engineID string) bool {
	return l[backend.LabelManaged] == "true" && l[backend.LabelDeployment] == b.cfg.Deployment &&
		l[backend.LabelEngineID] == engineID
}

// claimSpec decodes the PVC's spec annotation; ok is false when there is
// none (no instance: never created, or removed).
func claimSpec(pvc *corev1.PersistentVolumeClaim) (specAnno, bool) {
	if pvc == nil || pvc.DeletionTimestamp != nil {
		return specAnno{}, false
	}
	raw, ok := pvc.Annotations[annoSpec]
	if !ok {
		return specAnno{}, false
	}
	var s specAnno
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		return specAnno{}, false
	}
	return s, true
}

// Create makes the engine's PVC (if missing) and records spec on it as the
// engine's instance, without starting a Pod. An instance with the same spec
// is adopted, Pod and all; a different one is replaced (its Pod deleted) on
// the same data. A PVC of that name that another engine or deployment owns
// is never touched (ErrConflict).
func (b *Backend) Create(ctx context.Context, spec backend.Spec) (backend.Instance, error) {
	if err := validateSpec(spec); err != nil {
		return backend.Instance{}, err
	}
	want := specAnno{
		Image: spec.Image, KeyHash: spec.KeyHash, Port: spec.Port,
		MemoryMB: spec.MemoryMB, CPUs: spec.CPUs, Created: time.Now().UTC().Truncate(time.Second),
	}
	if want.Image == "" {
		want.Image = b.cfg.DefaultImage
	}
	name := ClaimName(spec.EngineID)
	for range rounds {
		pvc, err := b.getClaim(ctx, spec.EngineID)
		if err != nil {
			return backend.Instance{}, err
		}
		switch {
		case pvc == nil:
			made, err := b.createClaim(ctx, spec, want)
			if errors.Is(err, backend.ErrConflict) {
				continue // created concurrently: look again
			}
			if err != nil {
				return backend.Instance{}, err
			}
			return b.instance(made, nil), nil
		case pvc.DeletionTimestamp != nil:
			// A destroyed engine's data is still going: wait, then make anew.
			if err := b.waitClaimGone(ctx, pvc); err != nil {
				return backend.Instance{}, err
			}
			continue
		case pvc.Labels[backend.LabelEngineID] != spec.EngineID:
			return backend.Instance{}, fmt.Errorf("persistentvolumeclaim %s for engine %s: %w: it belongs to engine %s",
				name, spec.EngineID, backend.ErrConflict, pvc.Labels[backend.LabelEngineID])
		case !b.ours(pvc.Labels, spec.EngineID):
			return backend.Instance{}, fmt.Errorf("persistentvolumeclaim %s: %w: it exists and is not managed by deployment %q",
				name, backend.ErrConflict, b.cfg.Deployment)
		}
		if have, ok := claimSpec(pvc); ok && have.same(want) {
			pod, err := b.getPod(ctx, spec.EngineID)
			if err != nil {
				return backend.Instance{}, err
			}
			return b.instance(pvc, pod), nil
		}
		// Replace: the old instance's Pod goes, the data stays.
		if err := b.deletePod(ctx, spec.EngineID, 0, true); err != nil {
			return backend.Instance{}, fmt.Errorf("replace instance of engine %s: %w", spec.EngineID, err)
		}
		updated, err := b.writeSpec(ctx, pvc, spec, want)
		if errors.Is(err, backend.ErrConflict) {
			continue
		}
		if err != nil {
			return backend.Instance{}, err
		}
		return b.instance(updated, nil), nil
	}
	return backend.Instance{}, fmt.Errorf("create instance of engine %s: %w: its persistentvolumeclaim keeps changing", spec.EngineID, backend.ErrConflict)
}

// createClaim makes the engine's PVC carrying want.
func (b *Backend) createClaim(ctx context.Context, spec backend.Spec, want specAnno) (*corev1.PersistentVolumeClaim, error) {
	raw, err := json.Marshal(want)
	if err != nil {
		return nil, err
	}
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{
			Name:      ClaimName(spec.EngineID),
			Namespace: b.cfg.Namespace,
			Labels:    b.labels(spec),
			Annotations: map[string]string{
				annoSpec:     string(raw),
				annoState:    stateCreated,
				annoInstance: newInstanceID(),
			},
		},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceStorage: b.size},
			},
		},
	}
	if b.cfg.StorageClass != "" {
		pvc.Spec.StorageClassName = ptr(b.cfg.StorageClass)
	}
	cctx, cancel := b.call(ctx)
	defer cancel()
	made, err := b.cs.CoreV1().PersistentVolumeClaims(b.cfg.Namespace).Create(cctx, pvc, metav1.CreateOptions{})
	if err != nil {
		return nil, wrap(err, "create persistentvolumeclaim %s", pvc.Name)
	}
	return made, nil
}

// writeSpec records want as a new instance on an existing PVC (optimistic:
// ErrConflict when the PVC changed since it was read).
func (b *Backend) writeSpec(ctx context.Context, pvc *corev1.PersistentVolumeClaim, spec backend.Spec, want specAnno) (*corev1.PersistentVolumeClaim, error) {
	raw, err := json.Marshal(want)
	if err != nil {
		return nil, err
	}
	pvc = pvc.DeepCopy()
	if pvc.Annotations == nil {
		pvc.Annotations = map[string]string{}
	}
	pvc.Annotations[annoSpec] = string(raw)
	pvc.Annotations[annoState] = stateCreated
	pvc.Annotations[annoInstance] = newInstanceID()
	for k, v := range b.labels(spec) {
		pvc.Labels[k] = v
	}
	if spec.Replica == "" {
		delete(pvc.Labels, backend.LabelReplica)
	}
	cctx, cancel := b.call(ctx)
	defer cancel()
	updated, err := b.cs.CoreV1().PersistentVolumeClaims(b.cfg.Namespace).Update(cctx, pvc, metav1.UpdateOptions{})
	if err != nil {
		return nil, wrap(err, "update persistentvolumeclaim %s", pvc.Name)
	}
	return updated, nil
}

// setState patches the PVC's state annotation (nil value: removes the spec,
// state and instance annotations: Remove).
func (b *Backend) setState(ctx context.Context, engineID string, state *string) error {
	annos := map[string]any{annoState: state}
	if state == nil {
		annos[annoSpec] = nil
		annos[annoInstance] = nil
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": annos}})
	if err != nil {
		return err
	}
	cctx, cancel := b.call(ctx)
	defer cancel()
	_, err = b.cs.CoreV1().PersistentVolumeClaims(b.cfg.Namespace).Patch(cctx, ClaimName(engineID),
		types.MergePatchType, patch, metav1.PatchOptions{})
	return wrap(err, "update persistentvolumeclaim %s", ClaimName(engineID))
}

// Start runs the engine's Pod, creating it from the instance on its PVC,
// and returns once it runs with an address. A running (or starting) Pod of
// the instance is success; a terminated one is replaced. ErrNotFound when
// there is no instance (the caller recreates); ErrImageNotFound when the
// image cannot be pulled; the scheduler's message when the Pod cannot be
// placed.
func (b *Backend) Start(ctx context.Context, engineID string) error {
	pvc, err := b.getClaim(ctx, engineID)
	if err != nil {
		return err
	}
	s, ok := claimSpec(pvc)
	if !ok || !b.ours(pvc.Labels, engineID) {
		return fmt.Errorf("start engine %s: %w", engineID, backend.ErrNotFound)
	}
	return b.run(ctx, engineID, pvc, s)
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
	pvc, err := b.getClaim(ctx, engineID)
	if err != nil {
		return err
	}
	if _, ok := claimSpec(pvc); !ok || !b.ours(pvc.Labels, engineID) {
		return fmt.Errorf("pause engine %s: %w", engineID, backend.ErrNotFound)
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
	pvc, err := b.getClaim(ctx, engineID)
	if err != nil {
		return err
	}
	s, ok := claimSpec(pvc)
	if !ok || !b.ours(pvc.Labels, engineID) {
		return fmt.Errorf("unpause engine %s: %w", engineID, backend.ErrNotFound)
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

// Remove deletes the engine's Pod and forgets its instance, keeping the PVC
// and its data: used to recreate with a new spec. Missing is success.
func (b *Backend) Remove(ctx context.Context, engineID string) error {
	if err := b.deletePod(ctx, engineID, 0, true); err != nil {
		return err
	}
	pvc, err := b.getClaim(ctx, engineID)
	if err != nil || pvc == nil || !b.ours(pvc.Labels, engineID) {
		return err
	}
	if _, ok := pvc.Annotations[annoSpec]; !ok {
		return nil
	}
	err = b.setState(ctx, engineID, nil)
	if errors.Is(err, backend.ErrNotFound) {
		return nil
	}
	return err
}

// Destroy deletes the engine's Pod and its PVC with the data. Idempotent. A
// PVC labelled for another engine is left alone: it is not this engine's
// data. It waits (up to the call timeout) for the PVC to be gone; one still
// held by Kubernetes' in-use protection then is left to it.
func (b *Backend) Destroy(ctx context.Context, engineID string) error {
	if err := b.deletePod(ctx, engineID, 0, true); err != nil {
		return err
	}
	pvc, err := b.getClaim(ctx, engineID)
	if err != nil {
		return err
	}
	if pvc == nil {
		return b.deleteSnapshots(ctx, engineID)
	}
	if owner := pvc.Labels[backend.LabelEngineID]; owner != "" && owner != engineID {
		return nil
	}
	if pvc.DeletionTimestamp == nil {
		cctx, cancel := b.call(ctx)
		err = b.cs.CoreV1().PersistentVolumeClaims(b.cfg.Namespace).Delete(cctx, pvc.Name,
			metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &pvc.UID}})
		cancel()
		if c := classify(err); c == backend.ErrNotFound || c == backend.ErrConflict {
			return nil
		}
		if err != nil {
			return wrap(err, "delete persistentvolumeclaim %s", pvc.Name)
		}
	}
	if err := b.waitClaimGone(ctx, pvc); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return b.deleteSnapshots(ctx, engineID)
}

// waitClaimGone polls until the PVC (by UID) is gone or the call timeout
// passes (context.DeadlineExceeded).
func (b *Backend) waitClaimGone(ctx context.Context, pvc *corev1.PersistentVolumeClaim) error {
	wctx, cancel := b.call(ctx)
	defer cancel()
	delay := 10 * time.Millisecond
	for {
		cur, err := b.cs.CoreV1().PersistentVolumeClaims(b.cfg.Namespace).Get(wctx, pvc.Name, metav1.GetOptions{})
		switch {
		case errors.Is(classify(err), backend.ErrNotFound):
			return nil
		case err == nil && cur.UID != pvc.UID:
			return nil
		case err != nil && wctx.Err() == nil:
			return wrap(err, "get persistentvolumeclaim %s", pvc.Name)
		}
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return context.DeadlineExceeded
		case <-time.After(delay):
		}
		delay = min(2*delay, 250*time.Millisecond)
	}
}

// Inspect describes the engine's instance. ErrNotFound when there is none.
func (b *Backend) Inspect(ctx context.Context, engineID string) (backend.Instance, error) {
	pvc, err := b.getClaim(ctx, engineID)
	if err != nil {
		return backend.Instance{}, err
	}
	pod, err := b.getPod(ctx, engineID)
	if err != nil {
		return backend.Instance{}, err
	}
	_, hasSpec := claimSpec(pvc)
	if hasSpec && !b.ours(pvc.Labels, engineID) {
		hasSpec = false
	}
	if pod != nil && !b.ours(pod.Labels, engineID) {
		pod = nil
	}
	if !hasSpec {
		pvc = nil
		if pod == nil {
			return backend.Instance{}, fmt.Errorf("inspect engine %s: %w", engineID, backend.ErrNotFound)
		}
	}
	return b.instance(pvc, pod), nil
}

// List returns every instance labelled as managed by this deployment: each
// PVC carrying an instance, and each Pod without one (an orphan).
func (b *Backend) List(ctx context.Context) ([]backend.Instance, error) {
	cctx, cancel := b.call(ctx)
	defer cancel()
	opts := metav1.ListOptions{LabelSelector: b.selector}
	claims, err := b.cs.CoreV1().PersistentVolumeClaims(b.cfg.Namespace).List(cctx, opts)
	if err != nil {
		return nil, wrap(err, "list persistentvolumeclaims of deployment %s", b.cfg.Deployment)
	}
	pods, err := b.cs.CoreV1().Pods(b.cfg.Namespace).List(cctx, opts)
	if err != nil {
		return nil, wrap(err, "list pods of deployment %s", b.cfg.Deployment)
	}
	podOf := make(map[string]*corev1.Pod, len(pods.Items))
	for i := range pods.Items {
		p := &pods.Items[i]
		if id := p.Labels[backend.LabelEngineID]; id != "" && p.Name == PodName(id) {
			podOf[id] = p
		}
	}
	out := make([]backend.Instance, 0, len(claims.Items))
	for i := range claims.Items {
		pvc := &claims.Items[i]
		id := pvc.Labels[backend.LabelEngineID]
		if _, ok := claimSpec(pvc); !ok || id == "" || pvc.Name != ClaimName(id) {
			continue
		}
		out = append(out, b.instance(pvc, podOf[id]))
		delete(podOf, id)
	}
	for _, p := range podOf {
		out = append(out, b.instance(nil, p))
	}
	return out, nil
}

// instance describes an engine from its PVC (nil: none with an instance)
// and Pod (nil: none).
func (b *Backend) instance(pvc *corev1.PersistentVolumeClaim, pod *corev1.Pod) backend.Instance {
	var inst backend.Instance
	lbl := map[string]string{}
	switch {
	case pvc != nil:
		lbl = pvc.Labels
		inst.ID = pvc.Annotations[annoInstance]
		s, _ := claimSpec(pvc)
		inst.CreatedAt = s.Created
		if inst.CreatedAt.IsZero() {
			inst.CreatedAt = pvc.CreationTimestamp.UTC()
		}
		switch pvc.Annotations[annoState] {
		case stateCreated:
			inst.Status = backend.StatusCreated
		case statePaused:
			inst.Status = backend.StatusPaused
		default:
			inst.Status = backend.StatusExited
		}
	case pod != nil:
		lbl = pod.Labels
		inst.ID = pod.Annotations[annoInstance]
		if inst.ID == "" {
			inst.ID = string(pod.UID)
		}
		inst.CreatedAt = pod.CreationTimestamp.UTC()
	}
	inst.EngineID = lbl[backend.LabelEngineID]
	inst.ProductID = lbl[backend.LabelProductID]
	inst.Replica = lbl[backend.LabelReplica]
	inst.Name = PodName(inst.EngineID)
	if pod != nil {
		inst.Status, inst.ExitCode = podStatus(pod)
	}
	return inst
}

// podStatus maps a Pod onto a backend status: running once its container
// runs, created while it waits to, exited when it ended or is being
// deleted.
func podStatus(p *corev1.Pod) (backend.Status, int) {
	code := exitCode(p)
	switch {
	case p.DeletionTimestamp != nil, terminated(p):
		return backend.StatusExited, code
	case p.Status.Phase == corev1.PodRunning:
		return backend.StatusRunning, 0
	}
	return backend.StatusCreated, 0
}

// terminated reports whether the Pod's engine has ended (with restartPolicy
// Never, for good).
func terminated(p *corev1.Pod) bool {
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return true
	}
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Name == containerName && cs.State.Terminated != nil {
			return true
		}
	}
	return false
}

// exitCode is the engine container's exit code, when it has one.
func exitCode(p *corev1.Pod) int {
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Name == containerName && cs.State.Terminated != nil {
			return int(cs.State.Terminated.ExitCode)
		}
	}
	return 0
}
