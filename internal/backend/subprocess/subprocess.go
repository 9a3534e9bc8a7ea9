package subprocess

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
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
	// envVersion is the subprocess stand-in for the image (SPEC §10).
	envVersion = "ENGINE_VERSION"
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
