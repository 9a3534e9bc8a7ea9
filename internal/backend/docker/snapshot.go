package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/client"

	"github.com/september/bap-engine/internal/backend"
)

// Brain snapshots (SPEC §16) are volumes beside the engine's data volume,
// engine-data-<id12>-snap-<n>, labelled with the engine and the number. A
// short-lived helper container of the orchestrator's own image
// (Config.HelperImage, static and FROM scratch like the engine image, so
// nothing else need be pulled) copies one volume onto the other with
// `bap-engine snapshot FROM TO`; it has no network and sees only the two
// volumes.

// snapshots lists the numbers of the engine's snapshot volumes, ascending.
func (b *Backend) snapshots(ctx context.Context, engineID string) ([]int, error) {
	cctx, cancel := b.call(ctx)
	defer cancel()
	f := b.labelFilter().Add("label", backend.LabelSnapshotOf+"="+engineID)
	res, err := b.cli.VolumeList(cctx, client.VolumeListOptions{Filters: f})
	if err != nil {
		return nil, wrap(err, "list snapshots of engine %s", engineID)
	}
	var nums []int
	for _, v := range res.Items {
		if n, ok := backend.SnapshotNumber(v.Labels, v.Name, engineID); ok {
			nums = append(nums, n)
		}
	}
	slices.Sort(nums)
	return nums, nil
}

// stopped refuses a snapshot or restore while the engine's container runs.
func (b *Backend) stopped(ctx context.Context, engineID, op string) error {
	inst, err := b.Inspect(ctx, engineID)
	if err == nil && (inst.Status == backend.StatusRunning || inst.Status == backend.StatusPaused) {
		return fmt.Errorf("%s engine %s: it is running: %w", op, engineID, backend.ErrConflict)
	}
	if err != nil && !errors.Is(err, backend.ErrNotFound) {
		return err
	}
	return nil
}

// Snapshot copies the engine's data volume to a new snapshot volume.
func (b *Backend) Snapshot(ctx context.Context, engineID string) (string, error) {
	if !validEngineID.MatchString(engineID) {
		return "", fmt.Errorf("snapshot engine %q: %w", engineID, backend.ErrNotFound)
	}
	if err := b.stopped(ctx, engineID, "snapshot"); err != nil {
		return "", err
	}
	data := VolumeName(engineID)
	cctx, cancel := b.call(ctx)
	_, err := b.cli.VolumeInspect(cctx, data, client.VolumeInspectOptions{})
	cancel()
	if err != nil {
		return "", wrap(err, "snapshot engine %s: inspect volume %s", engineID, data)
	}
	nums, err := b.snapshots(ctx, engineID)
	if err != nil {
		return "", err
	}
	n := backend.NextSnapshot(nums)
	snap := backend.SnapshotDataName(engineID, n)
	labels := backend.SnapshotLabels(b.cfg.Deployment, engineID)
	labels[backend.LabelSnapshot] = strconv.Itoa(n)
	cctx, cancel = b.call(ctx)
	_, err = b.cli.VolumeCreate(cctx, client.VolumeCreateOptions{Name: snap, Labels: labels})
	cancel()
	if err != nil {
		return "", wrap(err, "create snapshot volume %s", snap)
	}
	if err := b.copyVolume(ctx, engineID, data, snap); err != nil {
		// A half-made snapshot is no snapshot.
		rctx, cancel := b.call(context.WithoutCancel(ctx))
		_, _ = b.cli.VolumeRemove(rctx, snap, client.VolumeRemoveOptions{Force: true})
		cancel()
		return "", fmt.Errorf("snapshot engine %s: %w", engineID, err)
	}
	return backend.SnapshotName(n), nil
}

// Restore copies the snapshot volume back onto the engine's data volume.
func (b *Backend) Restore(ctx context.Context, engineID, snapshot string) error {
	n, ok := backend.ParseSnapshotName(snapshot)
	if !ok || !validEngineID.MatchString(engineID) {
		return fmt.Errorf("restore engine %s: no snapshot %q: %w", engineID, snapshot, backend.ErrNotFound)
	}
	if err := b.stopped(ctx, engineID, "restore"); err != nil {
		return err
	}
	nums, err := b.snapshots(ctx, engineID)
	if err != nil {
		return err
	}
	if !slices.Contains(nums, n) {
		return fmt.Errorf("restore engine %s: no snapshot %s: %w", engineID, snapshot, backend.ErrNotFound)
	}
	if err := b.copyVolume(ctx, engineID, backend.SnapshotDataName(engineID, n), VolumeName(engineID)); err != nil {
		return fmt.Errorf("restore engine %s from %s: %w", engineID, snapshot, err)
	}
	return nil
}

// PruneSnapshots removes all but the newest keep snapshot volumes.
func (b *Backend) PruneSnapshots(ctx context.Context, engineID string, keep int) ([]string, error) {
	nums, err := b.snapshots(ctx, engineID)
	if err != nil {
		return nil, err
	}
	return backend.PruneSnapshots(nums, keep, func(n int) error {
		name := backend.SnapshotDataName(engineID, n)
		cctx, cancel := b.call(ctx)
		_, err := b.cli.VolumeRemove(cctx, name, client.VolumeRemoveOptions{})
		cancel()
		if err != nil && !errors.Is(classify(err), backend.ErrNotFound) {
			return wrap(err, "remove snapshot volume %s", name)
		}
		return nil
	})
}

// copyVolume runs the helper container that makes volume to's data the
// same as volume from's, waits for it and removes it.
func (b *Backend) copyVolume(ctx context.Context, engineID, from, to string) error {
	name := "bap-snapshot-" + to
	// A helper left by a crash holds the names: remove it first.
	rctx, cancel := b.call(ctx)
	_, err := b.cli.ContainerRemove(rctx, name, client.ContainerRemoveOptions{Force: true})
	cancel()
	if err != nil && !errors.Is(classify(err), backend.ErrNotFound) {
		return wrap(err, "remove old helper %s", name)
	}
	cctx, cancel := b.call(ctx)
	res, err := b.cli.ContainerCreate(cctx, client.ContainerCreateOptions{
		Name:  name,
		Image: b.cfg.HelperImage,
		Config: &container.Config{
			Entrypoint: []string{"/bap-engine"},
			// Root, whatever user the image names (the orchestrator's may
			// run unprivileged): the brain files belong to the engine's user
			// and must be copied with their contents intact.
			User:            "0:0",
			Cmd:             []string{"snapshot", backend.SnapshotFrom, backend.SnapshotTo},
			Labels:          backend.SnapshotLabels(b.cfg.Deployment, engineID),
			NetworkDisabled: true,
		},
		HostConfig: &container.HostConfig{
			NetworkMode: "none",
			Mounts: []mount.Mount{
				{Type: mount.TypeVolume, Source: from, Target: backend.SnapshotFrom, ReadOnly: true},
				{Type: mount.TypeVolume, Source: to, Target: backend.SnapshotTo},
			},
		},
	})
	cancel()
	if err != nil {
		if errors.Is(classify(err), backend.ErrNotFound) {
			return fmt.Errorf("snapshot helper image %s (ORCH_HELPER_IMAGE) is not present: %w: %w", b.cfg.HelperImage, backend.ErrImageNotFound, err)
		}
		return wrap(err, "create snapshot helper %s", name)
	}
	defer func() {
		rctx, cancel := b.call(context.WithoutCancel(ctx))
		_, _ = b.cli.ContainerRemove(rctx, res.ID, client.ContainerRemoveOptions{Force: true})
		cancel()
	}()
	wctx, wcancel := context.WithTimeout(ctx, backend.SnapshotHelperWait)
	defer wcancel()
	// Subscribe before starting, so a quick exit is not missed.
	wait := b.cli.ContainerWait(wctx, res.ID, client.ContainerWaitOptions{Condition: container.WaitConditionNextExit})
	sctx, cancel := b.call(ctx)
	_, err = b.cli.ContainerStart(sctx, res.ID, client.ContainerStartOptions{})
	cancel()
	if err != nil {
		return wrap(err, "start snapshot helper %s", name)
	}
	select {
	case r := <-wait.Result:
		if r.StatusCode != 0 {
			return fmt.Errorf("snapshot helper %s exited %d: %s", name, r.StatusCode, b.helperOutput(ctx, res.ID))
		}
		return nil
	case err := <-wait.Error:
		return wrap(err, "wait for snapshot helper %s", name)
	}
}

// helperOutput is the end of a helper's output, printable characters only,
// for the error that reports its failure.
func (b *Backend) helperOutput(ctx context.Context, id string) string {
	cctx, cancel := b.call(context.WithoutCancel(ctx))
	defer cancel()
	r, err := b.cli.ContainerLogs(cctx, id, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Tail: "5"})
	if err != nil {
		return "(no output)"
	}
	defer r.Close()
	raw, _ := io.ReadAll(io.LimitReader(r, 4096))
	out := strings.Map(func(c rune) rune {
		if c == '\n' || (c >= 0x20 && c < 0x7f) {
			return c
		}
		return -1
	}, string(raw))
	return strings.TrimSpace(out)
}
