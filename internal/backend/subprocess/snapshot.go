package subprocess

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/september/bap-engine/internal/backend"
)

// Snapshots of an engine are directories beside its data dir,
// <DataRoot>/<engine_id>.snap-<n>: a name with a dot is no engine id, so
// List never mistakes one for an instance. A snapshot is written under a
// temporary name and renamed when complete, so a crash never leaves a
// partial one under a real name.
const snapInfix = ".snap-"

// instanceFiles are the data dir's files that describe the instance, not
// the engine's data: a snapshot leaves them out and a restore keeps them.
var instanceFiles = []string{specFileName, pidFileName, logFileName, logFileName + ".1"}

func (b *Backend) snapDir(engineID, name string) string {
	return filepath.Join(b.cfg.DataRoot, engineID+"."+name)
}

// snapshots lists the engine's complete snapshots, oldest first.
func (b *Backend) snapshots(engineID string) ([]int, error) {
	entries, err := os.ReadDir(b.cfg.DataRoot)
	if err != nil {
		return nil, fmt.Errorf("list snapshots of %s: %w: %w", engineID, backend.ErrUnavailable, err)
	}
	var nums []int
	prefix := engineID + snapInfix
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || !e.IsDir() {
			continue
		}
		if n, err := strconv.Atoi(rest); err == nil && n > 0 {
			nums = append(nums, n)
		}
	}
	slices.Sort(nums)
	return nums, nil
}

// Snapshot copies the engine's data dir (its brain, without the instance's
// spec, pid file and log) to the next numbered snapshot beside it.
func (b *Backend) Snapshot(ctx context.Context, engineID string) (string, error) {
	if err := validID(engineID); err != nil {
		return "", fmt.Errorf("%w: %w", backend.ErrNotFound, err)
	}
	unlock := b.lock(engineID, "snapshot")
	defer unlock()
	if p := b.current(engineID); p != nil {
		return "", fmt.Errorf("snapshot engine %s: it is running: %w", engineID, backend.ErrConflict)
	}
	src := b.dir(engineID)
	if _, err := os.Stat(src); errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("snapshot engine %s: no data dir: %w", engineID, backend.ErrNotFound)
	}
	nums, err := b.snapshots(engineID)
	if err != nil {
		return "", err
	}
	n := 1
	if len(nums) > 0 {
		n = nums[len(nums)-1] + 1
	}
	name := backend.SnapshotName(n)
	dst := b.snapDir(engineID, name)
	tmp := dst + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return "", fmt.Errorf("snapshot engine %s: %w", engineID, err)
	}
	if err := backend.CopyData(ctx, src, tmp, instanceFiles); err != nil {
		_ = os.RemoveAll(tmp)
		return "", fmt.Errorf("snapshot engine %s: %w", engineID, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		_ = os.RemoveAll(tmp)
		return "", fmt.Errorf("snapshot engine %s: %w", engineID, err)
	}
	return name, nil
}

// Restore replaces the engine's data files with the snapshot's.
func (b *Backend) Restore(ctx context.Context, engineID, snapshot string) error {
	if err := validID(engineID); err != nil {
		return fmt.Errorf("%w: %w", backend.ErrNotFound, err)
	}
	if _, err := strconv.Atoi(strings.TrimPrefix(snapshot, "snap-")); err != nil || !strings.HasPrefix(snapshot, "snap-") {
		return fmt.Errorf("restore engine %s: no snapshot %q: %w", engineID, snapshot, backend.ErrNotFound)
	}
	unlock := b.lock(engineID, "restore")
	defer unlock()
	if p := b.current(engineID); p != nil {
		return fmt.Errorf("restore engine %s: it is running: %w", engineID, backend.ErrConflict)
	}
	src := b.snapDir(engineID, snapshot)
	if _, err := os.Stat(src); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("restore engine %s: no snapshot %s: %w", engineID, snapshot, backend.ErrNotFound)
	}
	dst := b.dir(engineID)
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return fmt.Errorf("restore engine %s: %w", engineID, err)
	}
	if err := backend.CopyData(ctx, src, dst, instanceFiles); err != nil {
		return fmt.Errorf("restore engine %s from %s: %w", engineID, snapshot, err)
	}
	return nil
}

// PruneSnapshots deletes all but the newest keep snapshots, and any left
// half-made by a crash.
func (b *Backend) PruneSnapshots(_ context.Context, engineID string, keep int) ([]string, error) {
	if err := validID(engineID); err != nil {
		return nil, err
	}
	unlock := b.lock(engineID, "prune")
	defer unlock()
	return b.pruneSnapshots(engineID, keep)
}

func (b *Backend) pruneSnapshots(engineID string, keep int) ([]string, error) {
	nums, err := b.snapshots(engineID)
	if err != nil {
		return nil, err
	}
	drop := max(len(nums)-max(keep, 0), 0)
	for _, n := range nums[:drop] {
		if err := os.RemoveAll(b.snapDir(engineID, backend.SnapshotName(n))); err != nil {
			return nil, fmt.Errorf("prune snapshot %s of %s: %w", backend.SnapshotName(n), engineID, err)
		}
	}
	tmps, _ := filepath.Glob(filepath.Join(b.cfg.DataRoot, engineID+snapInfix+"*.tmp"))
	for _, t := range tmps {
		_ = os.RemoveAll(t)
	}
	kept := []string{}
	for _, n := range nums[drop:] {
		kept = append(kept, backend.SnapshotName(n))
	}
	return kept, nil
}
