package kubernetes

import (
	"context"
	"errors"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/september/bap-engine/internal/backend"
)

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
