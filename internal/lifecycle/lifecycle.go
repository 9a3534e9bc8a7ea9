package lifecycle

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/secret"
)

// Sleep modes (ORCH_SLEEP_MODE).
const (
	SleepMark  = "mark"
	SleepPause = "pause"
	SleepStop  = "stop"
)

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
	// OpTimeout bounds a whole detached operation beyond BootTimeout
	// (default BootTimeout + StopGrace + 60 s).
	OpTimeout time.Duration
	Logger    *slog.Logger
	Observer  Observer
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
	log     *slog.Logger
	obs     Observer
	probe   *http.Client
	flights *flights
	// bootGuess is the learned start-to-healthy time of engines, in ns
	// (waitHealthy).
	bootGuess atomic.Int64
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
	cfg.OpTimeout = cmp.Or(cfg.OpTimeout, cfg.BootTimeout+cfg.StopGrace+60*time.Second)
	switch cfg.SleepMode {
	case SleepMark, SleepPause, SleepStop:
	default:
		panic("lifecycle.New: unknown sleep mode " + cfg.SleepMode)
	}
	if cfg.PortMin > cfg.PortMax {
		panic("lifecycle.New: PortMin > PortMax")
	}
	log := cmp.Or(cfg.Logger, slog.Default())
	var obs Observer = nopObserver{}
	if cfg.Observer != nil {
		obs = cfg.Observer
	}
	return &Manager{
		store:   store,
		backend: be,
		sealer:  sealer,
		cfg:     cfg,
		log:     log,
		obs:     obs,
		probe:   newProbeClient(),
		flights: newFlights(),
	}
}

// Config returns the effective configuration (defaults applied).
func (m *Manager) Config() Config { return m.cfg }

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

// Provision creates a product's engine for userID (SPEC §5): the quota check
// and the insert of the provisioning row with the lowest free port are one
// transaction; then the backend creates and starts it and the engine is
// waited healthy. Concurrent provisions for the same user join one flight.
// Errors: VALIDATION_ERROR, ENGINE_ALREADY_EXISTS, QUOTA_EXCEEDED,
// PORT_EXHAUSTION, BOOT_TIMEOUT, IMAGE_NOT_FOUND, BACKEND_UNAVAILABLE,
// BACKEND_ERROR, DATABASE_UNAVAILABLE.
func (m *Manager) Provision(ctx context.Context, p bap.Product, userID, image, actor string) (Result, error) {
	if err := bap.ValidateUserID(userID); err != nil {
		return Result{}, err
	}
	if image == "" {
		image = m.cfg.DefaultImage
	} else if err := validateImage(image); err != nil {
		return Result{}, err
	}
	return m.flights.do(ctx, provisionKey(p.ID, userID), "provision", func(ctx context.Context) (Result, error) {
		return m.provision(ctx, p, userID, image, actor)
	})
}

func provisionKey(productID, userID string) string { return "provision/" + productID + "/" + userID }

// AwaitProvision waits for an engine in provisioning to leave that state —
// joining the provision when it runs in this process, else watching the
// registry — and returns the engine as it then is. Errors:
// ENGINE_NOT_FOUND (the provision failed and was destroyed), BOOT_TIMEOUT,
// DATABASE_UNAVAILABLE.
func (m *Manager) AwaitProvision(ctx context.Context, e bap.Engine) (bap.Engine, error) {
	if err := m.flights.idle(ctx, provisionKey(e.ProductID, e.UserID)); err != nil {
		return bap.Engine{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.BootTimeout+5*time.Second)
	defer cancel()
	delay := probeFirstDelay
	for {
		cur, err := m.load(ctx, e.ID)
		if err != nil || cur.Status != bap.StateProvisioning {
			return cur, err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return bap.Engine{}, bap.Errorf(bap.CodeBootTimeout, "Engine did not become healthy within %s.", m.cfg.BootTimeout)
		case <-t.C:
		}
		delay = min(delay*2, probeMaxDelay)
	}
}

func (m *Manager) provision(ctx context.Context, p bap.Product, userID, image, actor string) (res Result, err error) {
	began := time.Now()
	defer func() { m.obs.Operation(p.ID, "provision", time.Since(began), err) }()

	if err := m.checkMaxRunning(ctx, p); err != nil {
		return Result{}, err
	}
	plain, err := secret.NewEngineKey()
	if err != nil {
		return Result{}, fmt.Errorf("generate engine key: %w", err)
	}
	token, err := m.sealer.Seal(plain)
	if err != nil {
		return Result{}, fmt.Errorf("seal engine key: %w", err)
	}
	now := bap.Now()
	e := bap.Engine{
		ID:        uuid.NewString(),
		ProductID: p.ID,
		UserID:    userID,
		Status:    bap.StateProvisioning,
		KeyHash:   secret.Hash(plain),
		KeyEnc:    token,
		Image:     image,
		CreatedAt: now,
		UpdatedAt: now,
	}
	var quota registry.Quota
	if p.Policy.MaxEngines != nil {
		quota.MaxEngines = *p.Policy.MaxEngines
		if quota.MaxEngines == 0 {
			return Result{}, bap.Errorf(bap.CodeQuotaExceeded, "Product at max_engines limit (0).")
		}
	}
	err = m.store.InTx(ctx, func(tx registry.Store) error {
		port, err := tx.AllocatePort(ctx, e.ID, m.cfg.PortMin, m.cfg.PortMax)
		if err != nil {
			return err
		}
		e.Port = port
		e.URL = m.backend.URL(e.ID, port)
		return tx.InsertEngine(ctx, e, quota)
	})
	switch {
	case errors.Is(err, registry.ErrQuotaExceeded):
		return Result{}, bap.Errorf(bap.CodeQuotaExceeded, "Product at max_engines limit (%d).", quota.MaxEngines)
	case errors.Is(err, registry.ErrPortExhausted):
		return Result{}, bap.Errorf(bap.CodePortExhaustion, "No free engine port in %d-%d.", m.cfg.PortMin, m.cfg.PortMax)
	case errors.Is(err, registry.ErrConflict):
		return Result{}, bap.Errorf(bap.CodeEngineAlreadyExists, "An engine already exists for user %q.", userID)
	case err != nil:
		return Result{}, storeErr("insert engine", err)
	}

	spec := m.spec(e, p)
	bootStart := time.Now()
	inst, err := m.createAndStart(ctx, spec)
	if err == nil {
		err = m.waitHealthy(ctx, e.URL, m.cfg.BootTimeout)
	}
	if err != nil {
		return Result{}, m.failProvision(ctx, e, err)
	}
	boot := time.Since(bootStart)
	m.obs.Boot(p.ID, boot)
	bootMS := boot.Milliseconds()
	e.Status = bap.StateRunning
	e.InstanceID = inst.ID
	e.BootDurationMS = &bootMS
	e.LastActiveAt = ptr(bap.Now())
	err = m.commit(ctx, e.ID, func(cur *bap.Engine) (*audit.Entry, error) {
		if cur.Status != bap.StateProvisioning {
			return nil, bap.Errorf(bap.CodeEngineBusy, "engine changed state to %s during provision", cur.Status)
		}
		*cur = e
		return &audit.Entry{
			Action:     audit.Provision,
			Actor:      actor,
			DurationMS: &bootMS,
			Metadata:   map[string]any{"image": e.Image, "port": e.Port, "backend": m.backend.Name()},
		}, nil
	})
	if err != nil {
		return Result{}, err
	}
	e, err = m.store.GetEngine(ctx, e.ID)
	if err != nil {
		return Result{}, storeErr("read engine", err)
	}
	return Result{Engine: e, APIKey: plain}, nil
}

// failProvision records a failed provision: the instance and its data are
// removed, the row stays failed with its port and the reason.
func (m *Manager) failProvision(ctx context.Context, e bap.Engine, cause error) error {
	reason := failureReason(cause)
	m.log.Warn("provision failed", "engine_id", e.ID, "product_id", e.ProductID, "reason", reason)
	if errors.Is(cause, backend.ErrUnavailable) {
		// The backend could not be reached: nothing is known to exist, and
		// the engine is not to blame. Reconciliation finishes the row if an
		// instance appears later; the caller sees 503.
		_ = m.backend.Destroy(ctx, e.ID)
	} else if derr := m.backend.Destroy(ctx, e.ID); derr != nil {
		m.log.Warn("cleanup after failed provision", "engine_id", e.ID, "err", derr)
	}
	err := m.commit(ctx, e.ID, func(cur *bap.Engine) (*audit.Entry, error) {
		if cur.Status != bap.StateProvisioning {
			return nil, nil
		}
		cur.Status = bap.StateFailed
		cur.FailureReason = reason
		return &audit.Entry{
			Action:   audit.ProvisionFailed,
			Actor:    audit.ActorSystem,
			Metadata: map[string]any{"reason": reason, "image": e.Image, "port": e.Port},
		}, nil
	})
	if err != nil {
		m.log.Error("record failed provision", "engine_id", e.ID, "err", err)
	}
	return opErr(cause, m.cfg.BootTimeout)
}

// Start brings a stopped, sleeping or failed engine to running (SPEC §5):
// the instance is recreated on the same data and port if it is gone.
// Errors: ENGINE_NOT_FOUND, ENGINE_ALREADY_RUNNING, ENGINE_BUSY,
// BOOT_TIMEOUT, BACKEND_UNAVAILABLE, BACKEND_ERROR, DATABASE_UNAVAILABLE.
func (m *Manager) Start(ctx context.Context, engineID, actor string) (Result, error) {
	return m.flights.do(ctx, engineID, "start", func(ctx context.Context) (Result, error) {
		return m.bringUp(ctx, engineID, actor, audit.Start, false)
	})
}

// Wake brings a sleeping (or stopped) engine back to running and is the
// idempotent form of Start used by admit: a running engine is success.
// Errors: as Start, without ENGINE_ALREADY_RUNNING.
func (m *Manager) Wake(ctx context.Context, engineID, actor string) (Result, error) {
	return m.flights.do(ctx, engineID, "wake", func(ctx context.Context) (Result, error) {
		return m.bringUp(ctx, engineID, actor, audit.Wake, true)
	})
}

func (m *Manager) bringUp(ctx context.Context, engineID, actor string, action audit.Action, idempotent bool) (res Result, err error) {
	began := time.Now()
	e, err := m.load(ctx, engineID)
	if err != nil {
		return Result{}, err
	}
	defer func() { m.obs.Operation(e.ProductID, string(action), time.Since(began), err) }()
	switch e.Status {
	case bap.StateRunning:
		if idempotent {
			return Result{Engine: e}, nil
		}
		return Result{}, bap.Errorf(bap.CodeEngineAlreadyRunning, "Engine is already running.")
	case bap.StateProvisioning, bap.StateDestroying:
		return Result{}, bap.Errorf(bap.CodeEngineBusy, "Engine is %s.", e.Status)
	}
	if e.Status == bap.StateStopped {
		p, err := m.store.GetProduct(ctx, e.ProductID)
		if err != nil {
			return Result{}, storeErr("read product", err)
		}
		if err := m.checkMaxRunning(ctx, p); err != nil {
			return Result{}, err
		}
	}
	inst, boot, err := m.ensureRunning(ctx, e)
	if err != nil {
		return Result{}, m.failBringUp(ctx, e, action, actor, err)
	}
	from := e.Status
	bootMS := boot.Milliseconds()
	err = m.commit(ctx, e.ID, func(cur *bap.Engine) (*audit.Entry, error) {
		if cur.Status == bap.StateDestroying || cur.Status == bap.StateProvisioning {
			return nil, bap.Errorf(bap.CodeEngineBusy, "Engine is %s.", cur.Status)
		}
		cur.Status = bap.StateRunning
		cur.InstanceID = inst.ID
		cur.HealthFailures = 0
		cur.RestartAttempts = 0
		cur.NextRestartAt = nil
		cur.FailureReason = ""
		cur.LastActiveAt = ptr(bap.Now())
		return &audit.Entry{
			Action:     action,
			Actor:      actor,
			DurationMS: &bootMS,
			Metadata:   map[string]any{"from": string(from)},
		}, nil
	})
	if err != nil {
		return Result{}, err
	}
	e, err = m.load(ctx, engineID)
	return Result{Engine: e}, err
}

// failBringUp records a failed start/wake. An unreachable backend leaves the
// state alone; anything else makes the engine failed with the reason.
func (m *Manager) failBringUp(ctx context.Context, e bap.Engine, action audit.Action, actor string, cause error) error {
	if errors.Is(cause, backend.ErrUnavailable) {
		return opErr(cause, m.cfg.BootTimeout)
	}
	reason := failureReason(cause)
	m.log.Warn(string(action)+" failed", "engine_id", e.ID, "reason", reason)
	err := m.commit(ctx, e.ID, func(cur *bap.Engine) (*audit.Entry, error) {
		if cur.Status == bap.StateDestroying || cur.Status == bap.StateProvisioning {
			return nil, nil
		}
		cur.Status = bap.StateFailed
		cur.FailureReason = reason
		return &audit.Entry{
			Action:   audit.StartFailed,
			Actor:    actor,
			Metadata: map[string]any{"reason": reason, "op": string(action)},
		}, nil
	})
	if err != nil {
		m.log.Error("record failed start", "engine_id", e.ID, "err", err)
	}
	return opErr(cause, m.cfg.BootTimeout)
}

// ensureRunning makes the engine's instance run and answer /health: it is
// unpaused, started, or recreated on the same data when gone.
func (m *Manager) ensureRunning(ctx context.Context, e bap.Engine) (backend.Instance, time.Duration, error) {
	began := time.Now()
	inst, err := m.backend.Inspect(ctx, e.ID)
	switch {
	case errors.Is(err, backend.ErrNotFound):
		p, perr := m.store.GetProduct(ctx, e.ProductID)
		if perr != nil {
			return backend.Instance{}, 0, storeErr("read product", perr)
		}
		inst, err = m.createAndStart(ctx, m.spec(e, p))
	case err != nil:
	case inst.Status == backend.StatusPaused:
		err = m.backend.Unpause(ctx, e.ID)
	case inst.Status != backend.StatusRunning:
		err = m.backend.Start(ctx, e.ID)
		if errors.Is(err, backend.ErrNotFound) {
			p, perr := m.store.GetProduct(ctx, e.ProductID)
			if perr != nil {
				return backend.Instance{}, 0, storeErr("read product", perr)
			}
			inst, err = m.createAndStart(ctx, m.spec(e, p))
		}
	}
	if err != nil {
		return backend.Instance{}, 0, err
	}
	if err := m.waitHealthy(ctx, e.URL, m.cfg.BootTimeout); err != nil {
		return backend.Instance{}, 0, err
	}
	if inst.ID == "" {
		if fresh, err := m.backend.Inspect(ctx, e.ID); err == nil {
			inst = fresh
		}
	}
	d := time.Since(began)
	m.obs.Boot(e.ProductID, d)
	return inst, d, nil
}

// Stop stops a running or sleeping engine; its data is kept (SPEC §5).
// Errors: ENGINE_NOT_FOUND, ENGINE_NOT_RUNNING, ENGINE_BUSY,
// BACKEND_UNAVAILABLE, BACKEND_ERROR, DATABASE_UNAVAILABLE.
func (m *Manager) Stop(ctx context.Context, engineID, actor string) (Result, error) {
	return m.flights.do(ctx, engineID, "stop", func(ctx context.Context) (res Result, err error) {
		began := time.Now()
		e, err := m.load(ctx, engineID)
		if err != nil {
			return Result{}, err
		}
		defer func() { m.obs.Operation(e.ProductID, "stop", time.Since(began), err) }()
		switch e.Status {
		case bap.StateRunning, bap.StateSleeping:
		case bap.StateProvisioning, bap.StateDestroying:
			return Result{}, bap.Errorf(bap.CodeEngineBusy, "Engine is %s.", e.Status)
		default:
			return Result{}, bap.Errorf(bap.CodeEngineNotRunning, "Engine is not running (status %s).", e.Status)
		}
		if err := m.stopInstance(ctx, e.ID); err != nil {
			return Result{}, opErr(err, m.cfg.BootTimeout)
		}
		from := e.Status
		err = m.commit(ctx, e.ID, func(cur *bap.Engine) (*audit.Entry, error) {
			if cur.Status == bap.StateDestroying {
				return nil, bap.Errorf(bap.CodeEngineBusy, "Engine is destroying.")
			}
			cur.Status = bap.StateStopped
			return &audit.Entry{Action: audit.Stop, Actor: actor, DurationMS: ptr(time.Since(began).Milliseconds()),
				Metadata: map[string]any{"from": string(from)}}, nil
		})
		if err != nil {
			return Result{}, err
		}
		e, err = m.load(ctx, engineID)
		return Result{Engine: e}, err
	})
}

// stopInstance stops an instance, unpausing it first so it can handle
// SIGTERM.
func (m *Manager) stopInstance(ctx context.Context, engineID string) error {
	inst, err := m.backend.Inspect(ctx, engineID)
	if errors.Is(err, backend.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if inst.Status == backend.StatusPaused {
		if err := m.backend.Unpause(ctx, engineID); err != nil && !errors.Is(err, backend.ErrNotFound) {
			return err
		}
	}
	return m.backend.Stop(ctx, engineID, m.cfg.StopGrace)
}

// Sleep puts a running engine to sleep as ORCH_SLEEP_MODE says (SPEC §7).
// idleSince, when non-zero, makes the sleep conditional: an engine active
// after it (a wake or admit that raced the sweep) is left running and
// Sleep reports slept=false.
func (m *Manager) Sleep(ctx context.Context, engineID string, idleSince time.Time) (slept bool, err error) {
	res, err := m.flights.do(ctx, engineID, "sleep", func(ctx context.Context) (Result, error) {
		e, err := m.load(ctx, engineID)
		if err != nil {
			return Result{}, err
		}
		if e.Status != bap.StateRunning || activeAfter(e, idleSince) {
			return Result{}, nil
		}
		switch m.cfg.SleepMode {
		case SleepPause:
			err = m.backend.Pause(ctx, engineID)
		case SleepStop:
			err = m.stopInstance(ctx, engineID)
		}
		if err != nil {
			return Result{}, opErr(err, m.cfg.BootTimeout)
		}
		var done bool
		err = m.commit(ctx, e.ID, func(cur *bap.Engine) (*audit.Entry, error) {
			if cur.Status != bap.StateRunning {
				return nil, nil
			}
			cur.Status = bap.StateSleeping
			done = true
			return &audit.Entry{Action: audit.Sleep, Actor: audit.ActorSystem,
				Metadata: map[string]any{"mode": m.cfg.SleepMode}}, nil
		})
		if err != nil {
			return Result{}, err
		}
		if done {
			return Result{outcome: "slept"}, nil
		}
		return Result{}, nil
	})
	return res.outcome == "slept", err
}

func activeAfter(e bap.Engine, idleSince time.Time) bool {
	return !idleSince.IsZero() && e.LastActiveAt != nil && e.LastActiveAt.After(idleSince)
}

// RotateKey gives a running engine a new key: it is recreated with the new
// ENGINE_KEY_HASH on the same data and port, waited healthy, and only then
// the new hash and token are committed. If the new instance does not come
// up, the old key's instance is restored. Errors: ENGINE_NOT_FOUND,
// ENGINE_NOT_RUNNING, BOOT_TIMEOUT, BACKEND_*, DATABASE_UNAVAILABLE.
func (m *Manager) RotateKey(ctx context.Context, engineID, actor string) (Result, error) {
	return m.flights.do(ctx, engineID, "rotate-key", func(ctx context.Context) (res Result, err error) {
		began := time.Now()
		e, err := m.load(ctx, engineID)
		if err != nil {
			return Result{}, err
		}
		defer func() { m.obs.Operation(e.ProductID, "rotate_key", time.Since(began), err) }()
		if e.Status != bap.StateRunning {
			return Result{}, bap.Errorf(bap.CodeEngineNotRunning, "Engine is not running (status %s).", e.Status)
		}
		p, err := m.store.GetProduct(ctx, e.ProductID)
		if err != nil {
			return Result{}, storeErr("read product", err)
		}
		plain, err := secret.NewEngineKey()
		if err != nil {
			return Result{}, fmt.Errorf("generate engine key: %w", err)
		}
		token, err := m.sealer.Seal(plain)
		if err != nil {
			return Result{}, fmt.Errorf("seal engine key: %w", err)
		}
		next := e
		next.KeyHash = secret.Hash(plain)
		next.KeyEnc = token
		inst, err := m.recreate(ctx, next, p)
		if err != nil {
			m.log.Warn("rotate-key failed, restoring the old key", "engine_id", e.ID, "reason", failureReason(err))
			if _, rerr := m.recreate(ctx, e, p); rerr != nil {
				return Result{}, m.failBringUp(ctx, e, audit.RotateKeyFailed, actor, err)
			}
			return Result{}, opErr(err, m.cfg.BootTimeout)
		}
		err = m.commit(ctx, e.ID, func(cur *bap.Engine) (*audit.Entry, error) {
			if cur.Status == bap.StateDestroying {
				return nil, bap.Errorf(bap.CodeEngineBusy, "Engine is destroying.")
			}
			cur.KeyHash = next.KeyHash
			cur.KeyEnc = next.KeyEnc
			cur.InstanceID = inst.ID
			cur.Status = bap.StateRunning
			return &audit.Entry{Action: audit.RotateKey, Actor: actor, DurationMS: ptr(time.Since(began).Milliseconds())}, nil
		})
		if err != nil {
			return Result{}, err
		}
		e, err = m.load(ctx, engineID)
		return Result{Engine: e, APIKey: plain}, err
	})
}

// recreate replaces the engine's instance with one built from e (same data
// and port) and waits for it to be healthy.
func (m *Manager) recreate(ctx context.Context, e bap.Engine, p bap.Product) (backend.Instance, error) {
	if err := m.backend.Stop(ctx, e.ID, m.cfg.StopGrace); err != nil {
		return backend.Instance{}, err
	}
	if err := m.backend.Remove(ctx, e.ID); err != nil {
		return backend.Instance{}, err
	}
	inst, err := m.createAndStart(ctx, m.spec(e, p))
	if err != nil {
		return backend.Instance{}, err
	}
	return inst, m.waitHealthy(ctx, e.URL, m.cfg.BootTimeout)
}

// Destroy removes an engine: destroying, backend destroy (instance and data),
// then the row is deleted and its port freed with the destroy audit row.
// Idempotent on a destroying engine. Errors: ENGINE_NOT_FOUND,
// BACKEND_UNAVAILABLE (the row stays destroying; reconciliation finishes it),
// DATABASE_UNAVAILABLE.
func (m *Manager) Destroy(ctx context.Context, engineID, actor string) (Result, error) {
	if e, err := m.load(ctx, engineID); err == nil && e.Status == bap.StateProvisioning {
		// Let a provision of this engine in flight here finish first, so its
		// instance is not created after the destroy removed everything.
		if err := m.flights.idle(ctx, provisionKey(e.ProductID, e.UserID)); err != nil {
			return Result{}, err
		}
	}
	return m.flights.do(ctx, engineID, "destroy", func(ctx context.Context) (res Result, err error) {
		began := time.Now()
		e, err := m.load(ctx, engineID)
		if err != nil {
			return Result{}, err
		}
		defer func() { m.obs.Operation(e.ProductID, "destroy", time.Since(began), err) }()
		from := e.Status
		err = m.commit(ctx, e.ID, func(cur *bap.Engine) (*audit.Entry, error) {
			cur.Status = bap.StateDestroying
			return nil, nil
		})
		if err != nil {
			return Result{}, err
		}
		if err := m.finishDestroy(ctx, e, actor, from, began); err != nil {
			return Result{}, err
		}
		e.Status = bap.StateDestroying
		return Result{Engine: e}, nil
	})
}

// finishDestroy removes the instance and data, then the row and port.
func (m *Manager) finishDestroy(ctx context.Context, e bap.Engine, actor string, from bap.State, began time.Time) error {
	if err := m.backend.Destroy(ctx, e.ID); err != nil {
		return opErr(err, m.cfg.BootTimeout)
	}
	err := m.store.DeleteEngine(ctx, e.ID, audit.Entry{
		ProductID:  e.ProductID,
		UserID:     e.UserID,
		EngineID:   e.ID,
		Action:     audit.Destroy,
		Actor:      actor,
		DurationMS: ptr(time.Since(began).Milliseconds()),
		Metadata:   map[string]any{"from": string(from), "port": e.Port},
	})
	if err != nil && !errors.Is(err, registry.ErrNotFound) {
		return storeErr("delete engine", err)
	}
	return nil
}

// spec is the backend description of an engine.
func (m *Manager) spec(e bap.Engine, p bap.Product) backend.Spec {
	s := backend.Spec{
		EngineID:  e.ID,
		ProductID: e.ProductID,
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

// checkMaxRunning enforces the policy's max_running (engines running or
// sleeping) before an operation adds one.
func (m *Manager) checkMaxRunning(ctx context.Context, p bap.Product) error {
	if p.Policy.MaxRunning == nil {
		return nil
	}
	counts, err := m.store.CountByStatus(ctx, p.ID)
	if err != nil {
		return storeErr("count engines", err)
	}
	n := counts[bap.StateRunning] + counts[bap.StateSleeping] + counts[bap.StateProvisioning]
	if n >= *p.Policy.MaxRunning {
		return bap.Errorf(bap.CodeQuotaExceeded, "Product at max_running limit (%d).", *p.Policy.MaxRunning)
	}
	return nil
}

// load reads an engine, mapping a missing row to ENGINE_NOT_FOUND.
func (m *Manager) load(ctx context.Context, id string) (bap.Engine, error) {
	e, err := m.store.GetEngine(ctx, id)
	if err != nil {
		return bap.Engine{}, storeErr("read engine", err)
	}
	return e, nil
}

// commit re-reads the engine under its row lock, lets mutate change it and
// name the audit entry, and writes both in one transaction. mutate returning
// a nil entry and nil error with an unchanged engine writes nothing.
func (m *Manager) commit(ctx context.Context, id string, mutate func(cur *bap.Engine) (*audit.Entry, error)) error {
	err := m.store.InTx(ctx, func(tx registry.Store) error {
		cur, err := tx.LockEngine(ctx, id)
		if err != nil {
			return err
		}
		before := cur
		entry, err := mutate(&cur)
		if err != nil {
			return err
		}
		if entry == nil {
			if cur == before {
				return nil
			}
			return tx.UpdateEngine(ctx, cur)
		}
		entry.ProductID = cur.ProductID
		entry.UserID = cur.UserID
		entry.EngineID = cur.ID
		return tx.UpdateEngine(ctx, cur, *entry)
	})
	if _, ok := bap.AsError(err); ok {
		return err
	}
	if err != nil {
		return storeErr("update engine", err)
	}
	return nil
}

// storeErr maps registry errors to API errors.
func storeErr(what string, err error) error {
	switch {
	case errors.Is(err, registry.ErrNotFound):
		return bap.Errorf(bap.CodeEngineNotFound, "Engine not found.")
	case errors.Is(err, registry.ErrUnavailable):
		return &wrapped{bap.Errorf(bap.CodeDatabaseUnavailable, "The database is unavailable; retry shortly."), fmt.Errorf("%s: %w", what, err)}
	default:
		return fmt.Errorf("%s: %w", what, err)
	}
}

// opErr maps a backend or boot failure to the API error a caller sees.
func opErr(err error, bootTimeout time.Duration) error {
	if _, ok := bap.AsError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, errBootTimeout):
		return &wrapped{bap.Errorf(bap.CodeBootTimeout, "Engine did not become healthy within %s.", bootTimeout), err}
	case errors.Is(err, backend.ErrImageNotFound):
		return &wrapped{bap.Errorf(bap.CodeImageNotFound, "The engine image is not available."), err}
	case errors.Is(err, backend.ErrUnavailable):
		return &wrapped{bap.Errorf(bap.CodeBackendUnavailable, "The engine backend is unavailable; retry shortly."), err}
	default:
		return &wrapped{bap.Errorf(bap.CodeBackendError, "The engine backend failed."), err}
	}
}

// failureReason is the short text stored on a failed engine.
func failureReason(err error) string {
	switch {
	case errors.Is(err, errBootTimeout):
		return "boot_timeout"
	case errors.Is(err, backend.ErrImageNotFound):
		return "image_not_found: " + truncate(err.Error(), 200)
	default:
		return truncate(err.Error(), 300)
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// wrapped carries a caller-safe *bap.Error and the internal cause (for logs).
type wrapped struct {
	pub   *bap.Error
	cause error
}

func (w *wrapped) Error() string { return w.pub.Error() + " (" + w.cause.Error() + ")" }

// As exposes the public error to errors.As.
func (w *wrapped) As(target any) bool {
	if t, ok := target.(**bap.Error); ok {
		*t = w.pub
		return true
	}
	return false
}

func (w *wrapped) Unwrap() error { return w.cause }

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
