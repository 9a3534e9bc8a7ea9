package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/september/bap-engine/internal/backend"
)

// Brain snapshots (SPEC §16) are PVCs beside the engine's,
// engine-data-<id12>-snap-<n>, labelled with the engine and the number. A
// short-lived helper Pod of the orchestrator's own image (Config.HelperImage)
// mounts both and copies one onto the other with `bap-engine snapshot FROM
// TO`; it has no service account token and no engine id label, so neither
// List nor the informer takes it for an engine.

// snapshots lists the numbers of the engine's snapshot PVCs, ascending.
func (b *Backend) snapshots(ctx context.Context, engineID string) ([]int, error) {
	cctx, cancel := b.call(ctx)
	defer cancel()
	sel := labels.SelectorFromSet(backend.SnapshotLabels(b.cfg.Deployment, engineID)).String()
	list, err := b.cs.CoreV1().PersistentVolumeClaims(b.cfg.Namespace).List(cctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, wrap(err, "list snapshots of engine %s", engineID)
	}
	var nums []int
	for _, c := range list.Items {
		if n, ok := backend.SnapshotNumber(c.Labels, c.Name, engineID); ok && c.DeletionTimestamp == nil {
			nums = append(nums, n)
		}
	}
	slices.Sort(nums)
	return nums, nil
}

// stopped refuses a snapshot or restore while the engine's Pod runs.
func (b *Backend) stopped(ctx context.Context, engineID, op string) error {
	pod, err := b.getPod(ctx, engineID)
	if err != nil {
		return err
	}
	if pod != nil && pod.DeletionTimestamp == nil && !terminated(pod) {
		return fmt.Errorf("%s engine %s: it is running: %w", op, engineID, backend.ErrConflict)
	}
	return nil
}

// Snapshot copies the engine's PVC onto a new snapshot PVC and returns its
// name (snap-<n>). The engine must not run. ErrNotFound when it has no PVC.
func (b *Backend) Snapshot(ctx context.Context, engineID string) (string, error) {
	if err := b.stopped(ctx, engineID, "snapshot"); err != nil {
		return "", err
	}
	pvc, err := b.getClaim(ctx, engineID)
	if err != nil {
		return "", err
	}
	if pvc == nil || pvc.DeletionTimestamp != nil || pvc.Labels[backend.LabelEngineID] != engineID {
		return "", fmt.Errorf("snapshot engine %s: %w: it has no data", engineID, backend.ErrNotFound)
	}
	nums, err := b.snapshots(ctx, engineID)
	if err != nil {
		return "", err
	}
	n := backend.NextSnapshot(nums)
	snapLabels := backend.SnapshotLabels(b.cfg.Deployment, engineID)
	snapLabels[backend.LabelSnapshot] = strconv.Itoa(n)
	snap := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{
			Name:      backend.SnapshotDataName(engineID, n),
			Namespace: b.cfg.Namespace,
			Labels:    snapLabels,
		},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:        pvc.Spec.Resources,
			StorageClassName: pvc.Spec.StorageClassName,
		},
	}
	cctx, cancel := b.call(ctx)
	_, err = b.cs.CoreV1().PersistentVolumeClaims(b.cfg.Namespace).Create(cctx, snap, metav1.CreateOptions{})
	cancel()
	if err != nil {
		return "", wrap(err, "create persistentvolumeclaim %s", snap.Name)
	}
	if err := b.copyClaim(ctx, engineID, pvc.Name, snap.Name); err != nil {
		b.deleteClaim(context.WithoutCancel(ctx), snap.Name)
		return "", fmt.Errorf("snapshot engine %s: %w", engineID, err)
	}
	return backend.SnapshotName(n), nil
}

// Restore makes the engine's data the named snapshot's. The engine must not
// run. ErrNotFound when there is no such snapshot.
func (b *Backend) Restore(ctx context.Context, engineID, snapshot string) error {
	n, ok := backend.ParseSnapshotName(snapshot)
	if !ok {
		return fmt.Errorf("restore engine %s: snapshot %q: %w", engineID, snapshot, backend.ErrNotFound)
	}
	nums, err := b.snapshots(ctx, engineID)
	if err != nil {
		return err
	}
	if !slices.Contains(nums, n) {
		return fmt.Errorf("restore engine %s: snapshot %q: %w", engineID, snapshot, backend.ErrNotFound)
	}
	if err := b.stopped(ctx, engineID, "restore"); err != nil {
		return err
	}
	return b.copyClaim(ctx, engineID, backend.SnapshotDataName(engineID, n), ClaimName(engineID))
}

// PruneSnapshots deletes all but the newest keep snapshots and returns the
// names kept, oldest first.
func (b *Backend) PruneSnapshots(ctx context.Context, engineID string, keep int) ([]string, error) {
	nums, err := b.snapshots(ctx, engineID)
	if err != nil {
		return nil, err
	}
	return backend.PruneSnapshots(nums, keep, func(n int) error {
		return b.deleteClaim(ctx, backend.SnapshotDataName(engineID, n))
	})
}

// deleteSnapshots deletes every snapshot of the engine (Destroy).
func (b *Backend) deleteSnapshots(ctx context.Context, engineID string) error {
	_, err := b.PruneSnapshots(ctx, engineID, 0)
	return err
}

// deleteClaim deletes a PVC by name; missing is success.
func (b *Backend) deleteClaim(ctx context.Context, name string) error {
	cctx, cancel := b.call(ctx)
	defer cancel()
	err := b.cs.CoreV1().PersistentVolumeClaims(b.cfg.Namespace).Delete(cctx, name, metav1.DeleteOptions{})
	if errors.Is(classify(err), backend.ErrNotFound) {
		return nil
	}
	return wrap(err, "delete persistentvolumeclaim %s", name)
}

// copyClaim runs a helper Pod that makes PVC to's data the same as from's,
// waits for it to succeed and deletes it.
func (b *Backend) copyClaim(ctx context.Context, engineID, from, to string) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:      "engine-snap-" + strings.TrimPrefix(ClaimName(engineID), "engine-data-") + "-" + newInstanceID()[:8],
			Namespace: b.cfg.Namespace,
			Labels:    backend.SnapshotLabels(b.cfg.Deployment, engineID),
		},
		Spec: podSpec(0, corev1.Container{
			Name:    "snapshot",
			Image:   b.cfg.HelperImage,
			Command: []string{"/bap-engine"},
			Args:    []string{"snapshot", backend.SnapshotFrom, backend.SnapshotTo},
			VolumeMounts: []corev1.VolumeMount{
				{Name: "from", MountPath: backend.SnapshotFrom, ReadOnly: true},
				{Name: "to", MountPath: backend.SnapshotTo},
			},
		}, []corev1.Volume{
			{Name: "from", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: from, ReadOnly: true}}},
			{Name: "to", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: to}}},
		}),
	}
	cctx, cancel := b.call(ctx)
	made, err := b.cs.CoreV1().Pods(b.cfg.Namespace).Create(cctx, pod, metav1.CreateOptions{})
	cancel()
	if err != nil {
		return wrap(err, "create helper pod %s", pod.Name)
	}
	defer func() {
		dctx, cancel := b.call(context.WithoutCancel(ctx))
		defer cancel()
		_ = b.cs.CoreV1().Pods(b.cfg.Namespace).Delete(dctx, made.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))})
	}()
	wctx, cancel := context.WithTimeout(ctx, backend.SnapshotHelperWait)
	defer cancel()
	delay := 20 * time.Millisecond
	for {
		cur, err := b.cs.CoreV1().Pods(b.cfg.Namespace).Get(wctx, made.Name, metav1.GetOptions{})
		switch {
		case err != nil && wctx.Err() != nil:
			return fmt.Errorf("copy %s onto %s: helper pod %s did not finish: %w", from, to, made.Name, wctx.Err())
		case err != nil:
			return wrap(err, "get helper pod %s", made.Name)
		case cur.Status.Phase == corev1.PodSucceeded:
			return nil
		case cur.Status.Phase == corev1.PodFailed:
			return fmt.Errorf("copy %s onto %s: helper pod %s failed: %s", from, to, made.Name, strings.TrimSpace(cur.Status.Message+" "+pendingReason(cur)))
		}
		if err := startFailure(cur); err != nil && cur.Status.Phase == corev1.PodPending {
			return fmt.Errorf("copy %s onto %s: %w", from, to, err)
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("copy %s onto %s: helper pod %s did not finish: %w", from, to, made.Name, wctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 500*time.Millisecond)
	}
}
