package docker

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/september/bap-engine/internal/backend"
)

// Start starts the engine's container; running is success, paused is
// unpaused. ErrNotFound when there is no container (the caller recreates).
func (b *Backend) Start(ctx context.Context, engineID string) error {
	name := ContainerName(engineID)
	b.own.started(engineID)
	cctx, cancel := b.call(ctx)
	_, err := b.cli.ContainerStart(cctx, name, client.ContainerStartOptions{})
	cancel()
	if err == nil {
		return nil
	}
	werr := wrap(err, "start container %s", name)
	if class := classify(err); class == backend.ErrNotFound || class == backend.ErrUnavailable {
		return werr
	}
	// A paused container refuses to start although it is up: resume it.
	cctx, cancel = b.call(ctx)
	res, ierr := b.cli.ContainerInspect(cctx, name, client.ContainerInspectOptions{})
	cancel()
	if ierr == nil && res.Container.State != nil && res.Container.State.Paused {
		return b.Unpause(ctx, engineID)
	}
	return werr
}

// Stop asks the engine to stop (SIGTERM), and Docker kills it after grace.
// A stopped or missing container is success; the volume is kept.
func (b *Backend) Stop(ctx context.Context, engineID string, grace time.Duration) error {
	name := ContainerName(engineID)
	done := b.own.begin(engineID)
	defer done()
	secs := max(0, int(math.Ceil(grace.Seconds())))
	cctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+b.cfg.CallTimeout)
	defer cancel()
	_, err := b.cli.ContainerStop(cctx, name, client.ContainerStopOptions{Timeout: &secs})
	if errors.Is(classify(err), backend.ErrNotFound) {
		return nil
	}
	return wrap(err, "stop container %s", name)
}

// Pause freezes the engine's container; paused is success. ErrConflict when
// it is not running, ErrNotFound when it is gone.
func (b *Backend) Pause(ctx context.Context, engineID string) error {
	name := ContainerName(engineID)
	done := b.own.begin(engineID)
	defer done()
	cctx, cancel := b.call(ctx)
	_, err := b.cli.ContainerPause(cctx, name, client.ContainerPauseOptions{})
	cancel()
	paused := func(st container.State) bool { return st.Paused }
	if err == nil {
		return b.await(ctx, name, "pause", paused)
	}
	return b.settle(ctx, name, err, "pause", paused)
}

// Unpause resumes the engine's container; running is success. ErrNotFound
// when it is gone, ErrConflict when it is not running at all.
func (b *Backend) Unpause(ctx context.Context, engineID string) error {
	name := ContainerName(engineID)
	cctx, cancel := b.call(ctx)
	_, err := b.cli.ContainerUnpause(cctx, name, client.ContainerUnpauseOptions{})
	cancel()
	resumed := func(st container.State) bool { return st.Running && !st.Paused }
	if err == nil {
		return b.await(ctx, name, "unpause", resumed)
	}
	return b.settle(ctx, name, err, "unpause", resumed)
}

// await polls the container until its state shows what op did. Some daemons
// (20.10) answer pause and unpause before they record the new state, which
// they learn from containerd a moment later; waiting here means an Inspect
// right after Pause or Unpause tells the truth.
func (b *Backend) await(ctx context.Context, name, op string, reached func(container.State) bool) error {
	cctx, cancel := b.call(ctx)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		res, err := b.cli.ContainerInspect(cctx, name, client.ContainerInspectOptions{})
		switch {
		case err != nil:
			return wrap(err, "%s container %s: inspect", op, name)
		case res.Container.State != nil && reached(*res.Container.State):
			return nil
		}
		select {
		case <-cctx.Done():
			return wrap(cctx.Err(), "%s container %s: state not updated", op, name)
		case <-tick.C:
		}
	}
}

// settle decides what a failed pause or unpause means. Daemons disagree on
// the status of "already paused" or "not paused" (409 or 500), so the
// container's state decides: already where we wanted it is success, not
// running at all is ErrConflict.
func (b *Backend) settle(ctx context.Context, name string, err error, op string, reached func(container.State) bool) error {
	if class := classify(err); class == backend.ErrNotFound || class == backend.ErrUnavailable {
		return wrap(err, "%s container %s", op, name)
	}
	st, ierr := b.state(ctx, name)
	switch {
	case ierr != nil:
		return ierr
	case reached(st):
		return nil
	case !st.Running:
		return fmt.Errorf("%s container %s: %w: it is %s: %w", op, name, backend.ErrConflict, st.Status, err)
	}
	return wrap(err, "%s container %s", op, name)
}

// state inspects a container's state.
func (b *Backend) state(ctx context.Context, name string) (container.State, error) {
	cctx, cancel := b.call(ctx)
	defer cancel()
	res, err := b.cli.ContainerInspect(cctx, name, client.ContainerInspectOptions{})
	if err != nil {
		return container.State{}, wrap(err, "inspect container %s", name)
	}
	if res.Container.State == nil {
		return container.State{}, fmt.Errorf("inspect container %s: daemon returned no state", name)
	}
	return *res.Container.State, nil
}

// Remove deletes the engine's container (killing it if running) and keeps
// its volume. Missing is success.
func (b *Backend) Remove(ctx context.Context, engineID string) error {
	name := ContainerName(engineID)
	done := b.own.begin(engineID)
	defer done()
	cctx, cancel := b.call(ctx)
	defer cancel()
	_, err := b.cli.ContainerRemove(cctx, name, client.ContainerRemoveOptions{Force: true})
	switch classify(err) {
	case backend.ErrNotFound:
		return nil
	case backend.ErrConflict:
		// Another removal is under way: done when the container is gone.
		if b.waitGone(cctx, name) {
			return nil
		}
	}
	return wrap(err, "remove container %s", name)
}

// waitGone polls until the container no longer exists or ctx ends.
func (b *Backend) waitGone(ctx context.Context, name string) bool {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		_, err := b.cli.ContainerInspect(ctx, name, client.ContainerInspectOptions{})
		if errors.Is(classify(err), backend.ErrNotFound) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

// Destroy deletes the engine's container, its data volume and its
// snapshots. Idempotent.
// A volume labelled for another engine is left alone: it is not this
// engine's data.
func (b *Backend) Destroy(ctx context.Context, engineID string) error {
	if err := b.Remove(ctx, engineID); err != nil {
		return err
	}
	if _, err := b.PruneSnapshots(ctx, engineID, 0); err != nil {
		return err
	}
	name := VolumeName(engineID)
	cctx, cancel := b.call(ctx)
	defer cancel()
	res, err := b.cli.VolumeInspect(cctx, name, client.VolumeInspectOptions{})
	switch {
	case errors.Is(classify(err), backend.ErrNotFound):
		return nil
	case err != nil:
		return wrap(err, "inspect volume %s", name)
	}
	if owner := res.Volume.Labels[backend.LabelEngineID]; owner != "" && owner != engineID {
		return nil
	}
	_, err = b.cli.VolumeRemove(cctx, name, client.VolumeRemoveOptions{})
	if errors.Is(classify(err), backend.ErrNotFound) {
		return nil
	}
	return wrap(err, "remove volume %s", name)
}
