package subprocess

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/hub"
)

// Environment variables the backend itself sets for an engine.
const (
	envPort       = "PORT"
	envKeyHash    = "ENGINE_KEY_HASH"
	envDBPath     = "SQLITE_DB_PATH"
	envCatalogDir = "CATALOG_DIR"
	envListenHost = "ENGINE_LISTEN_HOST"
	// envEngineID marks the process as this engine's, for re-adoption.
	envEngineID = "BAP_ENGINE_ID"
)

// inherited are the orchestrator variables an engine process also gets.
var inherited = []string{"PATH", "HOME", "LANG"}

// Timings.
const (
	// removeGrace is the SIGTERM grace Remove, Destroy and a replacing
	// Create give a running engine before SIGKILL.
	removeGrace = 5 * time.Second
	// killWait bounds the wait for a SIGKILLed process to disappear.
	killWait = 5 * time.Second
	// pollInterval is how often adopted processes are checked for exits.
	pollInterval = 250 * time.Millisecond
	// signalSettle bounds the wait for SIGSTOP/SIGCONT to take effect.
	signalSettle = 2 * time.Second
)

// engineIDPattern keeps engine ids to safe directory names (UUIDs and the
// like): no separators, no dots, nothing that could leave DataRoot.
var engineIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$`)

// errInvalidID is returned for an engine id that can name no instance.
var errInvalidID = errors.New("invalid engine id")

// Config configures the subprocess backend.
type Config struct {
	// Command starts one engine (argv); required. The caller chooses the
	// default (the orchestrator passes its own binary and "engine").
	Command []string
	// DataRoot holds one data dir per engine; required, created if missing.
	DataRoot string
	// CatalogDir is given to engines as CATALOG_DIR when set.
	CatalogDir string
	// Passthrough names orchestrator variables copied to every engine (when
	// set). The backend's own variables win over a passthrough of the same
	// name.
	Passthrough []string
	// Deployment scopes List (the deployment label); default "default".
	Deployment string
	// Getenv reads the orchestrator's environment for PATH, HOME, LANG and
	// the passthrough values; default os.Getenv.
	Getenv func(string) string
	// Host is the address engines listen on and URLs name; default 127.0.0.1.
	Host string
	// OnOverlap, when set, is told when an operation on an engine found
	// another process in the middle of one (the operation then waits its
	// turn). Orchestrator replicas claim engines in the database so that
	// this never happens; it is the backend's own check of that promise.
	OnOverlap func(engineID, op string)
}

// Backend runs engines as local processes. It implements backend.Backend.
type Backend struct {
	cfg     Config
	command string // resolved Command[0]

	hub    *hub.Hub[backend.Event]
	closed chan struct{}
	once   sync.Once
	poller sync.WaitGroup

	// fileMus order an engine's pid file writes between its operations and
	// its reaper (fileMu picks the engine's); one mutex per engine would
	// need cleaning up, one for all would serialize every engine's spawn
	// behind one another's fsync.
	fileMus [64]sync.Mutex

	// scanned caches one /proc scan for unrecorded engine processes.
	scanMu    sync.Mutex
	scanned   map[string][]int
	scannedAt time.Time

	mu      sync.Mutex
	locks   map[string]*engineLock
	procs   map[string]*proc
	polling bool
}

var _ backend.Backend = (*Backend)(nil)

// engineLock serializes operations on one engine; refs lets it be dropped
// when unused.
type engineLock struct {
	mu   sync.Mutex
	refs int
}

// New validates cfg and returns a Backend. It starts nothing; processes left
// by an earlier orchestrator are adopted when an operation first meets them.
func New(cfg Config) (*Backend, error) {
	if len(cfg.Command) == 0 || cfg.Command[0] == "" {
		return nil, errors.New("subprocess backend: engine command is empty")
	}
	if cfg.DataRoot == "" {
		return nil, errors.New("subprocess backend: data root is empty")
	}
	cfg.Deployment = cmp.Or(cfg.Deployment, "default")
	cfg.Host = cmp.Or(cfg.Host, "127.0.0.1")
	if cfg.Getenv == nil {
		cfg.Getenv = os.Getenv
	}
	cfg.Command = slices.Clone(cfg.Command)
	cfg.Passthrough = slices.Clone(cfg.Passthrough)
	root, err := filepath.Abs(cfg.DataRoot)
	if err != nil {
		return nil, fmt.Errorf("subprocess backend: data root: %w", err)
	}
	cfg.DataRoot = root
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("subprocess backend: create data root: %w", err)
	}
	command, err := exec.LookPath(cfg.Command[0])
	if err != nil {
		return nil, fmt.Errorf("subprocess backend: engine command: %w", err)
	}
	return &Backend{
		cfg:     cfg,
		command: command,
		hub:     &hub.Hub[backend.Event]{},
		closed:  make(chan struct{}),
		locks:   map[string]*engineLock{},
		procs:   map[string]*proc{},
	}, nil
}

// Close stops the backend's own goroutines (the poller of adopted
// processes) and ends every Events channel. Engines keep running: they are
// meant to outlive the orchestrator.
func (b *Backend) Close() error {
	// Under b.mu, so no poller can be started after Wait begins.
	b.mu.Lock()
	b.once.Do(func() { close(b.closed) })
	b.mu.Unlock()
	b.poller.Wait()
	return nil
}

// Name is "subprocess".
func (b *Backend) Name() string { return "subprocess" }

// URL is http://<Host>:<port>.
func (b *Backend) URL(_ string, port int) string {
	return "http://" + net.JoinHostPort(b.cfg.Host, strconv.Itoa(port))
}

// Events delivers exits the orchestrator did not ask for until ctx ends or
// the backend is closed.
func (b *Backend) Events(ctx context.Context) <-chan backend.Event {
	return b.hub.Stream(ctx, b.closed)
}

// dir is the engine's data dir.
func (b *Backend) dir(engineID string) string { return filepath.Join(b.cfg.DataRoot, engineID) }

// lock takes the engine's operation lock and returns its release: an
// in-process mutex, then an exclusive flock on the engine's data dir (when
// it exists), which serializes operations of several orchestrator
// processes sharing DataRoot and reveals any overlap (OnOverlap).
func (b *Backend) lock(engineID, op string) func() {
	b.mu.Lock()
	l := b.locks[engineID]
	if l == nil {
		l = &engineLock{}
		b.locks[engineID] = l
	}
	l.refs++
	b.mu.Unlock()
	l.mu.Lock()
	dirLock := b.lockDir(engineID, op)
	return func() {
		dirLock()
		l.mu.Unlock()
		b.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(b.locks, engineID)
		}
		b.mu.Unlock()
	}
}

// overlapWait bounds how long an operation waits for another process's
// operation on the same engine before going ahead anyway.
const overlapWait = 2 * time.Minute

// lockDir flocks the engine's data dir exclusively, waiting (bounded) when
// another process holds it, and returns the release. No dir: nothing to
// serialize.
func (b *Backend) lockDir(engineID, op string) func() {
	f, err := os.Open(b.dir(engineID))
	if err != nil {
		return func() {}
	}
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		if b.cfg.OnOverlap != nil {
			b.cfg.OnOverlap(engineID, op)
		}
		deadline := time.Now().Add(overlapWait)
		for errors.Is(err, syscall.EWOULDBLOCK) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
			err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		}
	}
	return func() {
		if err == nil {
			_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		}
		_ = f.Close()
	}
}

func validID(engineID string) error {
	if !engineIDPattern.MatchString(engineID) {
		return fmt.Errorf("%w %q", errInvalidID, engineID)
	}
	return nil
}

// readSpec loads the engine's spec; no spec is backend.ErrNotFound.
func (b *Backend) readSpec(engineID string) (specFile, error) {
	var s specFile
	if err := readJSON(filepath.Join(b.dir(engineID), specFileName), &s); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return specFile{}, fmt.Errorf("engine %s: %w", engineID, backend.ErrNotFound)
		}
		return specFile{}, fmt.Errorf("engine %s: %w", engineID, err)
	}
	return s, nil
}

// current returns the engine's live process, or nil. It adopts a process
// left by an earlier orchestrator when the pid file's identity checks out.
func (b *Backend) current(engineID string) *proc {
	b.mu.Lock()
	p := b.procs[engineID]
	b.mu.Unlock()
	if p != nil {
		if p.alive() {
			return p
		}
		// An adopted process that is gone is dropped; a gone child's record
		// stays for its exit code. Either way the pid file may name a newer
		// process (spawned by another orchestrator instance).
		if !p.child {
			b.forget(engineID, p)
		}
	}
	var pf pidFile
	if err := readJSON(filepath.Join(b.dir(engineID), pidFileName), &pf); err != nil || pf.Exited ||
		!isEngine(pf.Pid, pf.StartTicks, engineID) {
		return b.adoptStray(engineID)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if known := b.procs[engineID]; known != nil && known.pid == pf.Pid && known.startTicks == pf.StartTicks {
		return known
	}
	p = newProc(engineID, pf.Pid, pf.StartTicks, false, b.hub.Publish)
	b.procs[engineID] = p
	b.startPollerLocked()
	return p
}

// fileMu is the mutex ordering the engine's pid file writes.
func (b *Backend) fileMu(engineID string) *sync.Mutex {
	h := fnv.New32a()
	_, _ = h.Write([]byte(engineID))
	return &b.fileMus[h.Sum32()%uint32(len(b.fileMus))]
}

// strayScanAge is how long one scan of /proc for unrecorded engine
// processes is reused (List looks at every engine at once).
const strayScanAge = time.Second

// adoptStray adopts a live process of the engine that no pid file names (its
// orchestrator died between spawning it and recording it) and records it,
// so that stopping or destroying the engine ends it too. Extra ones, which
// nothing should ever leave, are killed. It returns nil when there is none.
func (b *Backend) adoptStray(engineID string) *proc {
	b.scanMu.Lock()
	if time.Since(b.scannedAt) > strayScanAge {
		b.scanned, b.scannedAt = engineProcs(b.cfg.DataRoot), time.Now()
	}
	pids := b.scanned[engineID]
	b.scanMu.Unlock()
	var found *proc
	for _, pid := range pids {
		st, err := readProcStat(pid)
		if err != nil || st.state == 'Z' || st.state == 'X' || !isEngine(pid, st.startTicks, engineID) {
			continue
		}
		if found != nil {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			continue
		}
		found = newProc(engineID, pid, st.startTicks, false, b.hub.Publish)
	}
	if found == nil {
		return nil
	}
	// Without a data dir (destroyed under it) there is nothing to record it
	// in; the process is still returned, for the destroy to end it.
	b.fileMu(engineID).Lock()
	_ = writeJSON(filepath.Join(b.dir(engineID), pidFileName),
		pidFile{Pid: found.pid, StartTicks: found.startTicks, StartedAt: time.Now().UTC()})
	b.fileMu(engineID).Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.procs[engineID] = found
	b.startPollerLocked()
	return found
}

// forget drops p from the table if it is still the engine's entry.
func (b *Backend) forget(engineID string, p *proc) {
	b.mu.Lock()
	if b.procs[engineID] == p {
		delete(b.procs, engineID)
	}
	b.mu.Unlock()
}

// startPollerLocked starts the goroutine that watches adopted processes,
// once. Caller holds b.mu.
func (b *Backend) startPollerLocked() {
	if b.polling {
		return
	}
	select {
	case <-b.closed:
		return
	default:
	}
	b.polling = true
	b.poller.Add(1)
	go b.poll()
}

// poll reports adopted processes that disappear without being asked to.
func (b *Backend) poll() {
	defer b.poller.Done()
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		select {
		case <-b.closed:
			return
		case <-t.C:
		}
		b.mu.Lock()
		var adopted []*proc
		for _, p := range b.procs {
			if !p.child && !p.exited() {
				adopted = append(adopted, p)
			}
		}
		b.mu.Unlock()
		for _, p := range adopted {
			// alive re-verifies the identity and reports a disappearance.
			if !p.alive() {
				b.forget(p.engineID, p)
			}
		}
	}
}

// markExited records an exit in the pid file, unless the file already
// describes another process or the Backend is closed (its files may belong
// to another orchestrator instance by then).
func (b *Backend) markExited(engineID string, p *proc, code int) {
	select {
	case <-b.closed:
		return
	default:
	}
	b.fileMu(engineID).Lock()
	defer b.fileMu(engineID).Unlock()
	path := filepath.Join(b.dir(engineID), pidFileName)
	var pf pidFile
	if err := readJSON(path, &pf); err != nil || pf.Pid != p.pid || pf.StartTicks != p.startTicks || pf.Exited {
		return
	}
	now := time.Now().UTC()
	pf.Exited, pf.ExitCode, pf.ExitedAt = true, code, &now
	// The data dir may be gone (Destroy); the record is then moot.
	_ = writeJSON(path, pf)
}

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
	}
	if b.cfg.CatalogDir != "" {
		own = append(own, envCatalogDir+"="+b.cfg.CatalogDir)
	}
	reserved := map[string]bool{envPort: true, envKeyHash: true, envDBPath: true, envListenHost: true, envEngineID: true, envCatalogDir: true}
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

// Remove stops the engine and deletes its instance (spec and pid file) but
// keeps its data dir, brain and log. Missing is success.
func (b *Backend) Remove(ctx context.Context, engineID string) error {
	if err := validID(engineID); err != nil {
		return err
	}
	unlock := b.lock(engineID, "remove")
	defer unlock()
	if p := b.current(engineID); p != nil {
		if err := b.terminate(ctx, p, removeGrace); err != nil {
			return fmt.Errorf("remove: %w", err)
		}
	}
	b.forget(engineID, b.procOf(engineID))
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
	if err := validID(engineID); err != nil {
		return err
	}
	unlock := b.lock(engineID, "destroy")
	defer unlock()
	if p := b.current(engineID); p != nil {
		if err := b.terminate(ctx, p, removeGrace); err != nil {
			return fmt.Errorf("destroy: %w", err)
		}
	}
	b.forget(engineID, b.procOf(engineID))
	b.fileMu(engineID).Lock()
	defer b.fileMu(engineID).Unlock()
	if err := removeDir(ctx, b.dir(engineID)); err != nil {
		return fmt.Errorf("destroy engine %s: remove data dir: %w", engineID, err)
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
