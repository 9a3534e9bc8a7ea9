package subprocess

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/september/bap-engine/internal/backend"
)

// Inspect describes the engine's instance. ErrNotFound.
func (b *Backend) Inspect(_ context.Context, engineID string) (backend.Instance, error) {
	if err := validID(engineID); err != nil {
		return backend.Instance{}, fmt.Errorf("%w: %w", backend.ErrNotFound, err)
	}
	spec, err := b.readSpec(engineID)
	if err != nil {
		return backend.Instance{}, err
	}
	return b.instance(spec), nil
}

// List returns the instances under DataRoot created by this deployment.
func (b *Backend) List(_ context.Context) ([]backend.Instance, error) {
	entries, err := os.ReadDir(b.cfg.DataRoot)
	if err != nil {
		return nil, fmt.Errorf("list engines in %s: %w: %w", b.cfg.DataRoot, backend.ErrUnavailable, err)
	}
	out := []backend.Instance{}
	for _, e := range entries {
		if !e.IsDir() || validID(e.Name()) != nil {
			continue
		}
		spec, err := b.readSpec(e.Name())
		if err != nil || spec.Deployment != b.cfg.Deployment || spec.EngineID != e.Name() {
			// Removed instances (data only), other deployments and
			// unreadable specs are not this deployment's instances.
			continue
		}
		out = append(out, b.instance(spec))
	}
	return out, nil
}

// instance reports what the engine is doing now.
func (b *Backend) instance(spec specFile) backend.Instance {
	inst := backend.Instance{
		ID:        fmt.Sprintf("engine-%s@%d", spec.EngineID, spec.CreatedAt.UnixNano()),
		Name:      "engine-" + spec.EngineID,
		EngineID:  spec.EngineID,
		ProductID: spec.ProductID,
		Replica:   spec.Labels[backend.LabelReplica],
		Status:    backend.StatusCreated,
		CreatedAt: spec.CreatedAt,
	}
	if p := b.current(spec.EngineID); p != nil {
		inst.Pid = p.pid
		inst.Status = backend.StatusRunning
		if p.paused() {
			inst.Status = backend.StatusPaused
		}
		return inst
	}
	if p := b.procOf(spec.EngineID); p != nil && p.exited() {
		inst.Pid, inst.Status, inst.ExitCode = p.pid, backend.StatusExited, p.exitCode
		return inst
	}
	var pf pidFile
	if err := readJSON(filepath.Join(b.dir(spec.EngineID), pidFileName), &pf); err == nil {
		inst.Pid, inst.Status, inst.ExitCode = pf.Pid, backend.StatusExited, -1
		if pf.Exited {
			inst.ExitCode = pf.ExitCode
		}
	}
	return inst
}
