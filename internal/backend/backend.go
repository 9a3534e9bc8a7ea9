// Package backend defines what runs engines: the Backend interface, the
// instance description it returns and its error classes. It knows containers
// and processes, not products or policies, and holds what the
// implementations share (labels, snapshot names, the spec checks and the
// transport failures they class as unavailable). Implementations: docker/,
// kubernetes/ and subprocess/; backendtest holds the shared conformance
// suite and a fault-injecting fake for the layers above. Only lifecycle
// calls a Backend.
package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"syscall"
	"time"
)

// Error classes. Implementations wrap them with context; callers test with
// errors.Is.
var (
	// ErrNotFound: no instance (or no image, see ErrImageNotFound) by that name.
	ErrNotFound = errors.New("instance not found")
	// ErrConflict: the operation conflicts with the instance's state.
	ErrConflict = errors.New("instance conflict")
	// ErrUnavailable: the daemon cannot be reached or timed out; the caller
	// should retry later and must not blame the engine.
	ErrUnavailable = errors.New("backend unavailable")
	// ErrImageNotFound: the engine image is missing and cannot be pulled.
	ErrImageNotFound = errors.New("engine image not found")
)

// IsConnectionFailure reports whether err is a call's deadline or a
// connection to the daemon or API server failing (refused, reset, broken,
// cut short, timed out): the transport failures every backend classes as
// ErrUnavailable, beside those its client reports in its own way.
func IsConnectionFailure(err error) bool {
	var netErr net.Error
	return errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		(errors.As(err, &netErr) && netErr.Timeout())
}

// Labels put on every instance (SPEC §9).
const (
	LabelManaged    = "bap-engine.managed"
	LabelEngineID   = "bap-engine.engine_id"
	LabelProductID  = "bap-engine.product_id"
	LabelDeployment = "bap-engine.deployment"
	// LabelReplica names the orchestrator replica that created the
	// instance (SPEC §15): an instance without an engine row whose creator
	// is dead is an orphan at once.
	LabelReplica = "bap-engine.replica"
)

// Labels are the labels of the instance (and its data) made for spec in
// deployment.
func Labels(spec Spec, deployment string) map[string]string {
	l := map[string]string{
		LabelManaged:    "true",
		LabelEngineID:   spec.EngineID,
		LabelProductID:  spec.ProductID,
		LabelDeployment: deployment,
	}
	if spec.Replica != "" {
		l[LabelReplica] = spec.Replica
	}
	return l
}

// Check reports what every backend refuses in a spec whatever its engine
// id: a port out of range, no key hash, a negative or non-finite ceiling.
func (s Spec) Check() error {
	switch {
	case s.Port < 1 || s.Port > 65535:
		return fmt.Errorf("engine %s: port %d out of range", s.EngineID, s.Port)
	case s.KeyHash == "":
		return fmt.Errorf("engine %s: empty key hash", s.EngineID)
	case s.MemoryMB < 0 || s.CPUs < 0 || math.IsNaN(s.CPUs) || math.IsInf(s.CPUs, 0):
		return fmt.Errorf("engine %s: negative resource ceiling", s.EngineID)
	}
	return nil
}

// Spec describes the instance to create for one engine.
type Spec struct {
	EngineID  string
	ProductID string
	// Replica is the creating replica's id (LabelReplica); it does not make
	// two otherwise equal specs differ.
	Replica string
	// Image is the engine image (docker); subprocess engines get it as
	// ENGINE_VERSION, the stand-in for an image (an upgrade changes it).
	Image string
	// Port is the host port the engine is published on (docker) or listens
	// on (subprocess, as PORT).
	Port int
	// KeyHash becomes ENGINE_KEY_HASH.
	KeyHash string
	// MemoryMB and CPUs are ceilings (0: none); docker only.
	MemoryMB int
	CPUs     float64
}

// Status is what an instance is doing.
type Status string

// Instance statuses.
const (
	StatusCreated Status = "created" // exists, never started
	StatusRunning Status = "running"
	StatusPaused  Status = "paused"
	StatusExited  Status = "exited" // stopped or died
)

// Instance is what the backend knows about one engine's container/process.
type Instance struct {
	// ID is the container id or the process identity.
	ID        string
	Name      string
	EngineID  string
	ProductID string
	// Replica is the creating replica's id, from LabelReplica ("" when the
	// instance predates replicas).
	Replica   string
	Status    Status
	CreatedAt time.Time
	// ExitCode is meaningful when Status is exited.
	ExitCode int
	// Pid is the process id (subprocess; 0 for docker).
	Pid int
}

// Event reports an instance that stopped on its own (docker "die", a
// subprocess exit) without the orchestrator asking.
type Event struct {
	EngineID string
	ExitCode int
	At       time.Time
}

// LogOptions choose what Logs returns.
type LogOptions struct {
	// Tail is how many of the last lines to return; 0 or less: all kept.
	Tail int
	// Follow keeps the reader open after the last line, delivering what
	// the engine writes next, until the caller's ctx ends.
	Follow bool
}

// Backend runs engines. Every method is safe for concurrent use on
// different engines; lifecycle serializes calls for one engine.
type Backend interface {
	// Name is "docker", "subprocess" or "kubernetes" (or a test double's name).
	Name() string
	// Create makes the instance for spec without starting it. Idempotent by
	// name: an existing instance for the same engine with the same spec is
	// adopted, a different one replaced; data is never removed.
	// ErrImageNotFound, ErrUnavailable.
	Create(ctx context.Context, spec Spec) (Instance, error)
	// Start starts the engine's instance; already running is success.
	// ErrNotFound (caller recreates), ErrUnavailable.
	Start(ctx context.Context, engineID string) error
	// Stop sends SIGTERM, waits up to grace, then kills. Stopped or missing
	// is success. ErrUnavailable.
	Stop(ctx context.Context, engineID string, grace time.Duration) error
	// Pause freezes the instance (SIGSTOP / docker pause). ErrNotFound,
	// ErrConflict (not running), ErrUnavailable.
	Pause(ctx context.Context, engineID string) error
	// Unpause resumes a paused instance; running is success. ErrNotFound.
	Unpause(ctx context.Context, engineID string) error
	// Remove deletes the instance but keeps the engine's data (volume or
	// data dir): used to recreate with a new spec. Missing is success.
	Remove(ctx context.Context, engineID string) error
	// Destroy deletes the instance, its data and its snapshots. Idempotent.
	Destroy(ctx context.Context, engineID string) error
	// Snapshot copies the engine's data (its brain) beside it as a new
	// snapshot and returns the snapshot's name (SPEC §16; snapshots of one
	// engine are numbered, newer ones higher). The instance must not be
	// running (the caller stops it first). ErrNotFound when the engine has
	// no data, ErrUnavailable.
	Snapshot(ctx context.Context, engineID string) (string, error)
	// Restore replaces the engine's data with the named snapshot's; the
	// snapshot is kept. The instance must not be running. ErrNotFound when
	// there is no such snapshot, ErrUnavailable.
	Restore(ctx context.Context, engineID, snapshot string) error
	// PruneSnapshots deletes all but the newest keep snapshots of the
	// engine and returns the names kept, oldest first. ErrUnavailable.
	PruneSnapshots(ctx context.Context, engineID string, keep int) ([]string, error)
	// Inspect describes the engine's instance. ErrNotFound.
	Inspect(ctx context.Context, engineID string) (Instance, error)
	// List returns every instance labelled as managed by this deployment.
	List(ctx context.Context) ([]Instance, error)
	// URL is the base URL at which the orchestrator and products reach the
	// engine published on port. A backend whose address comes with the
	// instance (kubernetes: the Pod's IP, new with each Pod) knows it once
	// Start returned, and answers "" while no instance runs.
	URL(engineID string, port int) string
	// Logs returns the engine's own output (stdout and stderr interleaved
	// as written): container logs, the process's log file, the pod's log.
	// It never carries the orchestrator's output. The caller closes the
	// reader; with Follow it ends when ctx does. A read only (no lock on
	// the engine needed). ErrNotFound when the engine has no instance and
	// no log; ErrUnavailable.
	Logs(ctx context.Context, engineID string, opts LogOptions) (io.ReadCloser, error)
	// Events delivers instances that stopped on their own until ctx ends.
	// The channel is closed when ctx is done.
	Events(ctx context.Context) <-chan Event
}
