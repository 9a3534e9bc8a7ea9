package lifecycle

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/loop"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/replica"
	"github.com/september/bap-engine/internal/secret"
)

// Sleep modes (ORCH_SLEEP_MODE).
const (
	SleepMark  = "mark"
	SleepPause = "pause"
	SleepStop  = "stop"
)

// RestartPolicy shapes automatic restarts of failed engines (SPEC §8).
type RestartPolicy struct {
	// MaxAttempts is how many attempts are made before giving up
	// (default 8).
	MaxAttempts int
	// BackoffBase and BackoffMax: attempt n waits min(base·2ⁿ, max)
	// (defaults 5 s and 300 s).
	BackoffBase time.Duration
	BackoffMax  time.Duration
}

// Delay is the wait before restart attempt n (0-based).
func (p RestartPolicy) Delay(n int) time.Duration {
	return loop.Backoff(p.BackoffBase, p.BackoffMax, n)
}

// Config tunes a Manager. Zero values take the documented defaults.
type Config struct {
	PortMin int // default 9001
	PortMax int // default 9999
	// BootTimeout bounds the wait for a healthy engine (default 60 s).
	BootTimeout time.Duration
	// StopGrace is the SIGTERM→SIGKILL grace (default 30 s).
	StopGrace time.Duration
	// DefaultImage is used when a provision names no engine_version.
	DefaultImage string
	// SleepMode is mark, pause or stop (default mark).
	SleepMode string
	// ProbeTimeout bounds one /health probe while waiting for boot
	// (default 2 s).
	ProbeTimeout time.Duration
	// OpTimeout bounds a whole detached operation (default BootTimeout +
	// 2·StopGrace + 60 s: a rotate-key may stop twice and boot twice).
	OpTimeout time.Duration
	// Restart is the automatic restart policy.
	Restart RestartPolicy
	// SnapshotsKept is how many brain snapshots an upgrade keeps per engine
	// (ORCH_SNAPSHOTS_KEPT, default 2).
	SnapshotsKept int
	// MaxConcurrentProvisions bounds the provisions in flight in this
	// process (ORCH_MAX_CONCURRENT_PROVISIONS); the others wait their turn,
	// first come, first served, before anything of them exists. 0: no bound.
	MaxConcurrentProvisions int
	// ProvisionQueueWait bounds that wait (default BootTimeout); past it the
	// provision is refused with RATE_LIMITED and a Retry-After.
	ProvisionQueueWait time.Duration
	// OrphanGrace is the age before an instance without any row, made by a
	// replica that is alive (or by an orchestrator older than replicas), is
	// removed (ORCH_RECONCILE_GRACE_S; zero: at once). One made by a dead
	// replica is removed at once.
	OrphanGrace time.Duration
	// Replica is this process among the orchestrators sharing the database:
	// it owns operation claims and says which engines' background work is
	// this process's. Default: replica.Solo (the only one, holding every
	// shard; for tests and tools).
	Replica  *replica.Replica
	Logger   *slog.Logger
	Observer Observer
}

// Observer receives timings of completed operations (metrics). Methods must
// be cheap and safe for concurrent use.
type Observer interface {
	// Operation reports a finished operation on an engine of productID.
	Operation(productID, op string, d time.Duration, err error)
	// Boot reports how long an engine took from start to healthy.
	Boot(productID string, d time.Duration)
}

type nopObserver struct{}

func (nopObserver) Operation(string, string, time.Duration, error) {}
func (nopObserver) Boot(string, time.Duration)                     {}

// Manager runs engine transitions.
type Manager struct {
	store   registry.Store
	backend backend.Backend
	sealer  *secret.Sealer
	cfg     Config
	rep     *replica.Replica
	log     *slog.Logger
	obs     Observer
	probe   *http.Client
	flights *flights
	// bootGuess is the learned start-to-healthy time of engines, in ns
	// (waitHealthy).
	bootGuess atomic.Int64
	// bg tracks work started in the background (takeovers of dead
	// replicas' operations), for Close.
	bg      sync.WaitGroup
	repairs sync.Map // engine id → struct{}: a takeover runs
	// active maps engine id → epoch of the claims this process's operations
	// hold; a claim of this replica not in it is a leftover to end.
	active      sync.Map
	takeoverSem chan struct{}
	provisions  *provisionQueue
	closing     chan struct{}
	closeOne    sync.Once
}

// New returns a Manager. store, be and sealer are required.
func New(store registry.Store, be backend.Backend, sealer *secret.Sealer, cfg Config) *Manager {
	if store == nil || be == nil || sealer == nil {
		panic("lifecycle.New: store, backend and sealer are required")
	}
	cfg.PortMin = cmp.Or(cfg.PortMin, 9001)
	cfg.PortMax = cmp.Or(cfg.PortMax, 9999)
	cfg.BootTimeout = cmp.Or(cfg.BootTimeout, 60*time.Second)
	cfg.StopGrace = cmp.Or(cfg.StopGrace, 30*time.Second)
	cfg.DefaultImage = cmp.Or(cfg.DefaultImage, "september-engine:latest")
	cfg.SleepMode = cmp.Or(cfg.SleepMode, SleepMark)
	cfg.ProbeTimeout = cmp.Or(cfg.ProbeTimeout, 2*time.Second)
	cfg.OpTimeout = cmp.Or(cfg.OpTimeout, cfg.BootTimeout+2*cfg.StopGrace+60*time.Second)
	cfg.ProvisionQueueWait = cmp.Or(cfg.ProvisionQueueWait, cfg.BootTimeout)
	cfg.SnapshotsKept = cmp.Or(cfg.SnapshotsKept, 2)
	cfg.Restart.MaxAttempts = cmp.Or(cfg.Restart.MaxAttempts, 8)
	cfg.Restart.BackoffBase = cmp.Or(cfg.Restart.BackoffBase, 5*time.Second)
	cfg.Restart.BackoffMax = cmp.Or(cfg.Restart.BackoffMax, 300*time.Second)
	if cfg.OrphanGrace < 0 || cfg.MaxConcurrentProvisions < 0 || cfg.Restart.MaxAttempts < 0 || cfg.Restart.BackoffBase < 0 || cfg.Restart.BackoffMax < 0 {
		panic("lifecycle.New: negative setting")
	}
	switch cfg.SleepMode {
	case SleepMark, SleepPause, SleepStop:
	default:
		panic("lifecycle.New: unknown sleep mode " + cfg.SleepMode)
	}
	if cfg.PortMin > cfg.PortMax {
		panic("lifecycle.New: PortMin > PortMax")
	}
	if cfg.Replica == nil {
		cfg.Replica = replica.Solo(store)
	}
	log := cmp.Or(cfg.Logger, slog.Default())
	var obs Observer = nopObserver{}
	if cfg.Observer != nil {
		obs = cfg.Observer
	}
	m := &Manager{
		sealer:  sealer,
		store:   store,
		cfg:     cfg,
		rep:     cfg.Replica,
		log:     log,
		obs:     obs,
		probe:   newProbeClient(),
		closing: make(chan struct{}),

		takeoverSem: make(chan struct{}, maxTakeovers),
		provisions:  newProvisionQueue(cfg.MaxConcurrentProvisions),
	}
	m.backend = guarded{Backend: be, rep: cfg.Replica, store: store}
	m.flights = newFlights(cfg.OpTimeout)
	return m
}

// Config returns the effective configuration (defaults applied).
func (m *Manager) Config() Config { return m.cfg }

// Replica is the replica this Manager acts as.
func (m *Manager) Replica() *replica.Replica { return m.rep }

// Close waits, until ctx ends, for the operations this Manager runs (they
// are detached from their callers) and its background takeovers; new
// background work is refused from the start of Close. Call it before the
// store closes.
func (m *Manager) Close(ctx context.Context) error {
	m.closeOne.Do(func() { close(m.closing) })
	done := make(chan struct{})
	go func() {
		m.flights.wait()
		m.bg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("lifecycle close: operations still running: %w", ctx.Err())
	}
}

// closed reports whether Close began.
func (m *Manager) closed() bool {
	select {
	case <-m.closing:
		return true
	default:
		return false
	}
}

// Result is the outcome of an operation: the engine as committed and, for
// provision and rotate-key, the new plaintext key (empty otherwise).
type Result struct {
	Engine bap.Engine
	APIKey string
	// outcome carries a non-engine result through a flight (sleep, restart).
	outcome string
}

// APIKey decrypts an engine's key for the caller.
func (m *Manager) APIKey(e bap.Engine) (string, error) {
	if e.KeyEnc == "" {
		return "", nil
	}
	k, err := m.sealer.Open(e.KeyEnc)
	if err != nil {
		return "", fmt.Errorf("decrypt key of engine %s: %w", e.ID, err)
	}
	return k, nil
}

// newKey generates an engine key and seals it: the plaintext (for the
// caller, once) and the Fernet token (for the row).
func (m *Manager) newKey() (plain, token string, err error) {
	plain, err = secret.NewEngineKey()
	if err != nil {
		return "", "", fmt.Errorf("generate engine key: %w", err)
	}
	token, err = m.sealer.Seal(plain)
	if err != nil {
		return "", "", fmt.Errorf("seal engine key: %w", err)
	}
	return plain, token, nil
}

// spec is the backend description of an engine.
func (m *Manager) spec(e bap.Engine, p bap.Product) backend.Spec {
	s := backend.Spec{
		EngineID:  e.ID,
		ProductID: e.ProductID,
		Replica:   m.rep.ID(),
		Image:     e.Image,
		Port:      e.Port,
		KeyHash:   e.KeyHash,
	}
	if p.Policy.EngineMemoryMB != nil {
		s.MemoryMB = *p.Policy.EngineMemoryMB
	}
	if p.Policy.EngineCPUs != nil {
		s.CPUs = *p.Policy.EngineCPUs
	}
	return s
}

// specOf reads the engine's product and returns its backend description.
func (m *Manager) specOf(ctx context.Context, e bap.Engine) (backend.Spec, error) {
	p, err := m.store.GetProduct(ctx, e.ProductID)
	if err != nil {
		return backend.Spec{}, productErr("read product", err)
	}
	return m.spec(e, p), nil
}

func (m *Manager) createAndStart(ctx context.Context, spec backend.Spec) (backend.Instance, error) {
	inst, err := m.backend.Create(ctx, spec)
	if err != nil {
		return backend.Instance{}, err
	}
	if err := m.backend.Start(ctx, spec.EngineID); err != nil {
		return backend.Instance{}, err
	}
	return inst, nil
}

// load reads an engine, mapping a missing row to ENGINE_NOT_FOUND.
func (m *Manager) load(ctx context.Context, id string) (bap.Engine, error) {
	e, err := m.store.GetEngine(ctx, id)
	if err != nil {
		return bap.Engine{}, engineErr("read engine", err)
	}
	return e, nil
}

func ptr[T any](v T) *T { return &v }

// validateImage rejects engine_version values that are not plausible image
// references before anything is created.
func validateImage(s string) error {
	if len(s) > 255 {
		return bap.Errorf(bap.CodeValidation, "engine_version must be at most 255 characters")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '_', c == '-', c == '/', c == ':', c == '@':
		default:
			return bap.Errorf(bap.CodeValidation, "engine_version is not a valid image reference")
		}
	}
	return nil
}

// guarded refuses every backend call that changes an instance while this
// replica's heartbeat is not fresh (replica.Valid), and, for a call made
// under an operation's claim, unless the engine's row still carries that
// claim: another replica may be taking over, and two replicas must never
// operate one engine at once. The refusal is backend.ErrUnavailable, so no
// engine is blamed.
type guarded struct {
	backend.Backend
	rep   *replica.Replica
	store registry.Store
}

func (g guarded) check(ctx context.Context, op, engineID string) error {
	if !g.rep.Valid() {
		return fmt.Errorf("%s engine %s: this replica's heartbeat is not fresh, it may no longer act: %w",
			op, engineID, backend.ErrUnavailable)
	}
	c := claimOf(ctx)
	if c == nil || c.engineID != engineID {
		return nil
	}
	cur, err := g.store.GetEngine(ctx, engineID)
	if errors.Is(err, registry.ErrNotFound) {
		return fmt.Errorf("%s engine %s: the row is gone: %w", op, engineID, errFenced)
	}
	if err != nil {
		return fmt.Errorf("%s engine %s: check the claim: %w", op, engineID, err)
	}
	if cur.Claim.Owner != g.rep.ID() || cur.Claim.Epoch != c.epoch {
		return fmt.Errorf("%s engine %s under %s at epoch %d: %w", op, engineID, c.op, c.epoch, errFenced)
	}
	if !g.rep.Valid() { // the read may have taken long
		return fmt.Errorf("%s engine %s: this replica's heartbeat is not fresh, it may no longer act: %w",
			op, engineID, backend.ErrUnavailable)
	}
	return nil
}

func (g guarded) Create(ctx context.Context, spec backend.Spec) (backend.Instance, error) {
	if err := g.check(ctx, "create", spec.EngineID); err != nil {
		return backend.Instance{}, err
	}
	return g.Backend.Create(ctx, spec)
}

func (g guarded) Start(ctx context.Context, id string) error {
	if err := g.check(ctx, "start", id); err != nil {
		return err
	}
	return g.Backend.Start(ctx, id)
}

func (g guarded) Stop(ctx context.Context, id string, grace time.Duration) error {
	if err := g.check(ctx, "stop", id); err != nil {
		return err
	}
	return g.Backend.Stop(ctx, id, grace)
}

func (g guarded) Pause(ctx context.Context, id string) error {
	if err := g.check(ctx, "pause", id); err != nil {
		return err
	}
	return g.Backend.Pause(ctx, id)
}

func (g guarded) Unpause(ctx context.Context, id string) error {
	if err := g.check(ctx, "unpause", id); err != nil {
		return err
	}
	return g.Backend.Unpause(ctx, id)
}

func (g guarded) Remove(ctx context.Context, id string) error {
	if err := g.check(ctx, "remove", id); err != nil {
		return err
	}
	return g.Backend.Remove(ctx, id)
}

func (g guarded) Destroy(ctx context.Context, id string) error {
	if err := g.check(ctx, "destroy", id); err != nil {
		return err
	}
	return g.Backend.Destroy(ctx, id)
}

func (g guarded) Snapshot(ctx context.Context, id string) (string, error) {
	if err := g.check(ctx, "snapshot", id); err != nil {
		return "", err
	}
	return g.Backend.Snapshot(ctx, id)
}

func (g guarded) Restore(ctx context.Context, id, snapshot string) error {
	if err := g.check(ctx, "restore", id); err != nil {
		return err
	}
	return g.Backend.Restore(ctx, id, snapshot)
}

func (g guarded) PruneSnapshots(ctx context.Context, id string, keep int) ([]string, error) {
	if err := g.check(ctx, "prune snapshots of", id); err != nil {
		return nil, err
	}
	return g.Backend.PruneSnapshots(ctx, id, keep)
}
