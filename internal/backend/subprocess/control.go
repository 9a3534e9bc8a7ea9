package subprocess

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/september/bap-engine/internal/backend"
)

// Stop sends SIGTERM to the engine's group, waits up to grace, then
// SIGKILLs it. Stopped or missing is success.
func (b *Backend) Stop(ctx context.Context, engineID string, grace time.Duration) error {
	if err := validID(engineID); err != nil {
		return err
	}
	unlock := b.lock(engineID, "stop")
	defer unlock()
	p := b.current(engineID)
	if p == nil {
		return nil
	}
	if err := b.terminate(ctx, p, grace); err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	return nil
}

// Pause SIGSTOPs the engine's group. ErrNotFound without an instance,
// ErrConflict when it is not running.
func (b *Backend) Pause(_ context.Context, engineID string) error {
	return b.freeze(engineID, "pause", syscall.SIGSTOP, true)
}

// Unpause SIGCONTs a paused engine; running is success. ErrNotFound without
// an instance, ErrConflict when it is not running at all.
func (b *Backend) Unpause(_ context.Context, engineID string) error {
	return b.freeze(engineID, "unpause", syscall.SIGCONT, false)
}

// freeze sends sig to a running engine's group and waits until the process
// is stopped (stopped=true) or running again.
func (b *Backend) freeze(engineID, op string, sig syscall.Signal, stopped bool) error {
	if err := validID(engineID); err != nil {
		return fmt.Errorf("%w: %w", backend.ErrNotFound, err)
	}
	unlock := b.lock(engineID, op)
	defer unlock()
	if _, err := b.readSpec(engineID); err != nil {
		return err
	}
	p := b.current(engineID)
	if p == nil {
		return fmt.Errorf("%s engine %s: not running: %w", op, engineID, backend.ErrConflict)
	}
	if err := p.signalGroup(sig); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if !p.waitState(stopped, signalSettle) {
		return fmt.Errorf("%s engine %s: process state did not change: %w", op, engineID, backend.ErrConflict)
	}
	return nil
}

// end takes the engine's lock for op, stops its process and forgets it, so
// that op can delete its files; the caller releases the lock with unlock.
func (b *Backend) end(ctx context.Context, engineID, op string) (unlock func(), err error) {
	if err := validID(engineID); err != nil {
		return nil, err
	}
	unlock = b.lock(engineID, op)
	if p := b.current(engineID); p != nil {
		if err := b.terminate(ctx, p, removeGrace); err != nil {
			unlock()
			return nil, fmt.Errorf("%s: %w", op, err)
		}
	}
	b.forget(engineID, b.procOf(engineID))
	return unlock, nil
}

// Remove stops the engine and deletes its instance (spec and pid file) but
// keeps its data dir, brain and log. Missing is success.
func (b *Backend) Remove(ctx context.Context, engineID string) error {
	unlock, err := b.end(ctx, engineID, "remove")
	if err != nil {
		return err
	}
	defer unlock()
	dir := b.dir(engineID)
	if err := removeIfExists(filepath.Join(dir, specFileName)); err != nil {
		return fmt.Errorf("remove engine %s: %w", engineID, err)
	}
	if err := removeIfExists(filepath.Join(dir, pidFileName)); err != nil {
		return fmt.Errorf("remove engine %s: %w", engineID, err)
	}
	return nil
}

// Destroy stops the engine and deletes its data dir. Idempotent.
func (b *Backend) Destroy(ctx context.Context, engineID string) error {
	unlock, err := b.end(ctx, engineID, "destroy")
	if err != nil {
		return err
	}
	defer unlock()
	b.fileMu(engineID).Lock()
	defer b.fileMu(engineID).Unlock()
	if err := removeDir(ctx, b.dir(engineID)); err != nil {
		return fmt.Errorf("destroy engine %s: remove data dir: %w", engineID, err)
	}
	if _, err := b.pruneSnapshots(engineID, 0); err != nil {
		return fmt.Errorf("destroy engine %s: %w", engineID, err)
	}
	return nil
}

// removeDir removes a data dir, retrying briefly when a file appears while
// it is emptied (an exiting engine's last SQLite checkpoint or log line).
func removeDir(ctx context.Context, dir string) error {
	var err error
	for range 20 {
		if err = os.RemoveAll(dir); err == nil || !errors.Is(err, syscall.ENOTEMPTY) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
	return err
}
