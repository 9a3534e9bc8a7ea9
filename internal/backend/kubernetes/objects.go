package kubernetes

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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
	return getObject(ctx, b, "persistentvolumeclaim", ClaimName(engineID), b.cs.CoreV1().PersistentVolumeClaims(b.cfg.Namespace).Get)
}

// getPod reads the engine's Pod; nil without error when it is missing.
func (b *Backend) getPod(ctx context.Context, engineID string) (*corev1.Pod, error) {
	return getObject(ctx, b, "pod", PodName(engineID), b.cs.CoreV1().Pods(b.cfg.Namespace).Get)
}

// getObject reads the object of kind named name with get, under the call
// timeout; nil without error when it is missing.
func getObject[T any](ctx context.Context, b *Backend, kind, name string, get func(context.Context, string, metav1.GetOptions) (*T, error)) (*T, error) {
	cctx, cancel := b.call(ctx)
	defer cancel()
	obj, err := get(cctx, name, metav1.GetOptions{})
	switch {
	case errors.Is(classify(err), backend.ErrNotFound):
		return nil, nil
	case err != nil:
		return nil, wrap(err, "get %s %s", kind, name)
	}
	return obj, nil
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
