package subprocess

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/september/bap-engine/internal/backend"
)

// Create records the engine's spec. An existing instance with the same spec
// is returned as is (running or not); a different one is stopped and
// replaced. The data dir, and so the brain, is kept.
func (b *Backend) Create(ctx context.Context, spec backend.Spec) (backend.Instance, error) {
	if err := validID(spec.EngineID); err != nil {
		return backend.Instance{}, err
	}
	if spec.Port <= 0 || spec.Port > 65535 {
		return backend.Instance{}, fmt.Errorf("engine %s: invalid port %d", spec.EngineID, spec.Port)
	}
	if spec.KeyHash == "" {
		return backend.Instance{}, fmt.Errorf("engine %s: empty key hash", spec.EngineID)
	}
	unlock := b.lock(spec.EngineID, "create")
	defer unlock()

	dir := b.dir(spec.EngineID)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return backend.Instance{}, fmt.Errorf("engine %s: create data dir: %w", spec.EngineID, err)
		}
		defer b.lockDir(spec.EngineID, "create")()
	}
	want := specFile{
		EngineID:   spec.EngineID,
		ProductID:  spec.ProductID,
		Deployment: b.cfg.Deployment,
		Image:      spec.Image,
		Port:       spec.Port,
		KeyHash:    spec.KeyHash,
		MemoryMB:   spec.MemoryMB,
		CPUs:       spec.CPUs,
		Labels: map[string]string{
			backend.LabelManaged:    "true",
			backend.LabelEngineID:   spec.EngineID,
			backend.LabelProductID:  spec.ProductID,
			backend.LabelDeployment: b.cfg.Deployment,
		},
		CreatedAt: time.Now().UTC().Truncate(time.Microsecond),
	}
	if spec.Replica != "" {
		want.Labels[backend.LabelReplica] = spec.Replica
	}
	if have, err := b.readSpec(spec.EngineID); err == nil && have.sameAs(want) {
		return b.instance(have), nil
	}
	if p := b.current(spec.EngineID); p != nil {
		if err := b.terminate(ctx, p, removeGrace); err != nil {
			return backend.Instance{}, fmt.Errorf("engine %s: replace: %w", spec.EngineID, err)
		}
	}
	b.forget(spec.EngineID, b.procOf(spec.EngineID))
	if err := removeIfExists(filepath.Join(dir, pidFileName)); err != nil {
		return backend.Instance{}, fmt.Errorf("engine %s: %w", spec.EngineID, err)
	}
	if err := writeJSON(filepath.Join(dir, specFileName), want); err != nil {
		return backend.Instance{}, fmt.Errorf("engine %s: %w", spec.EngineID, err)
	}
	return b.instance(want), nil
}

// procOf is the table's entry for the engine, live or not.
func (b *Backend) procOf(engineID string) *proc {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.procs[engineID]
}

// Start spawns the engine's process. Running is success; a paused engine is
// resumed. ErrNotFound when there is no instance (the caller recreates).
func (b *Backend) Start(ctx context.Context, engineID string) error {
	if err := validID(engineID); err != nil {
		return fmt.Errorf("%w: %w", backend.ErrNotFound, err)
	}
	unlock := b.lock(engineID, "start")
	defer unlock()
	spec, err := b.readSpec(engineID)
	if err != nil {
		return err
	}
	if p := b.current(engineID); p != nil {
		if p.paused() {
			if err := p.signalGroup(syscall.SIGCONT); err != nil {
				return err
			}
			p.waitState(false, signalSettle)
		}
		return nil
	}
	return b.spawn(spec)
}

// env is the whole environment of an engine process.
func (b *Backend) env(spec specFile) []string {
	dir := b.dir(spec.EngineID)
	own := []string{
		envPort + "=" + strconv.Itoa(spec.Port),
		envKeyHash + "=" + spec.KeyHash,
		envDBPath + "=" + filepath.Join(dir, brainFileName),
		envListenHost + "=" + b.cfg.Host,
		envEngineID + "=" + spec.EngineID,
		envVersion + "=" + spec.Image,
	}
	if b.cfg.CatalogDir != "" {
		own = append(own, envCatalogDir+"="+b.cfg.CatalogDir)
	}
	reserved := map[string]bool{envVersion: true, envPort: true, envKeyHash: true, envDBPath: true, envListenHost: true, envEngineID: true, envCatalogDir: true}
	env := own
	for _, name := range append(slices.Clone(inherited), b.cfg.Passthrough...) {
		if reserved[name] || name == "" {
			continue
		}
		reserved[name] = true
		if v := b.cfg.Getenv(name); v != "" {
			env = append(env, name+"="+v)
		}
	}
	return env
}

// spawn starts the engine process in its own group, logging to the data
// dir, and records its identity. Caller holds the engine lock.
func (b *Backend) spawn(spec specFile) error {
	dir := b.dir(spec.EngineID)
	logf, err := openLog(dir)
	if err != nil {
		return fmt.Errorf("engine %s: %w", spec.EngineID, err)
	}
	cmd := exec.Command(b.command, b.cfg.Command[1:]...)
	cmd.Env = b.env(spec)
	cmd.Dir = dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Own group: signals reach the engine and its children, and a signal to
	// the orchestrator's group (Ctrl-C in dev) does not reach the engine.
	// No Pdeathsig: engines outlive the orchestrator.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	_ = logf.Close()
	if err != nil {
		return fmt.Errorf("engine %s: start %s: %w", spec.EngineID, b.command, err)
	}
	pid := cmd.Process.Pid
	// The child is not reaped before Wait, so /proc/<pid> exists.
	st, err := readProcStat(pid)
	if err != nil {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = cmd.Wait()
		return fmt.Errorf("engine %s: read process start time: %w", spec.EngineID, err)
	}
	p := newProc(spec.EngineID, pid, st.startTicks, true, b.hub.Publish)
	b.fileMu(spec.EngineID).Lock()
	err = writeJSON(filepath.Join(dir, pidFileName), pidFile{Pid: pid, StartTicks: st.startTicks, StartedAt: time.Now().UTC()})
	b.fileMu(spec.EngineID).Unlock()
	if err != nil {
		p.expected.Store(true)
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = cmd.Wait()
		return fmt.Errorf("engine %s: %w", spec.EngineID, err)
	}
	b.mu.Lock()
	b.procs[spec.EngineID] = p
	b.mu.Unlock()
	go b.reap(cmd, p)
	return nil
}

// reap waits for a child, records how it ended and reports an exit nobody
// asked for. The pid file is updated before done is closed, so an operation
// waiting for the exit (Destroy) never races the write.
func (b *Backend) reap(cmd *exec.Cmd, p *proc) {
	_ = cmd.Wait()
	code := exitCodeOf(cmd.ProcessState)
	b.markExited(p.engineID, p, code)
	p.finish(code)
}

// waitGone waits up to d (or until ctx ends) for p to disappear.
func waitGone(ctx context.Context, p *proc, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	if p.child {
		select {
		case <-p.done:
			return true
		case <-timer.C:
		case <-ctx.Done():
		}
		return p.exited()
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if !p.alive() {
			return true
		}
		select {
		case <-tick.C:
		case <-timer.C:
			return !p.alive()
		case <-ctx.Done():
			return !p.alive()
		}
	}
}

// terminate stops p: SIGTERM (and SIGCONT, so a paused engine can act on
// it) to the group, up to grace (cut short when ctx ends), then SIGKILL.
func (b *Backend) terminate(ctx context.Context, p *proc, grace time.Duration) error {
	p.expected.Store(true)
	if !p.alive() {
		return nil
	}
	if err := p.signalGroup(syscall.SIGTERM); err != nil {
		return err
	}
	if err := p.signalGroup(syscall.SIGCONT); err != nil {
		return err
	}
	if !waitGone(ctx, p, grace) {
		if err := p.signalGroup(syscall.SIGKILL); err != nil {
			return err
		}
		if !waitGone(context.Background(), p, killWait) {
			return fmt.Errorf("engine %s (pid %d) survived SIGKILL: %w", p.engineID, p.pid, backend.ErrUnavailable)
		}
	}
	// Whatever the engine left in its group goes with it.
	_ = p.signalGroup(syscall.SIGKILL)
	if !p.child {
		b.markExited(p.engineID, p, -1)
	}
	return nil
}
