package kubernetes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/september/bap-engine/internal/backend"
)

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
