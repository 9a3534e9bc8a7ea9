package kubernetes

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/september/bap-engine/internal/backend"
)

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
