package discovery

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/policy"
	"github.com/september/bap-engine/internal/registry"
)

// Denial reasons of an admit (SPEC §2).
const (
	ReasonEngineNotFound  = "engine_not_found"
	ReasonEngineSleeping  = "engine_sleeping"
	ReasonEngineStopped   = "engine_stopped"
	ReasonEngineUnhealthy = "engine_unhealthy"
	ReasonEngineBusy      = "engine_busy"
)

// Config tunes a Service. Zero values take the defaults.
type Config struct {
	// TouchInterval is how often recorded admits are written to
	// last_active_at: at most one write per engine per interval (default
	// 5 s). Keep it well below the idle timeout, or an engine in use can
	// look idle to the sleep sweep.
	TouchInterval time.Duration
	// DenySampleInterval bounds admit_denied audit rows to one per engine
	// (or product and user, without an engine) per interval (default 1 min).
	DenySampleInterval time.Duration
	// ProductTTL is how long an authenticated product is kept in memory, so
	// an admit of a known product is one point-select of its engine (default
	// 1 s; negative disables). A change to the product's policy or keys
	// drops it at once while Run watches the store's changes
	// (registry.Watcher); ForgetProduct does so when Run is not running.
	// Otherwise changes made by another process apply within ProductTTL.
	ProductTTL time.Duration
	// EngineTTL is how long a running engine an admit found is kept in
	// memory, so that the next admit to it costs no database round trip
	// (default 5 s; negative disables). The cache is on only while Run is
	// watching a store that reports changes: any change to the engine's
	// status, address or keys, made by any process, drops it first. The
	// TTL bounds how old the engine's last_health_at in an admit's answer
	// can be.
	EngineTTL time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger receives warnings of failed background writes (default
	// slog.Default()).
	Logger *slog.Logger
}

// Options are the admit request's switches.
type Options struct {
	// AutoProvision provisions an engine when the user has none.
	AutoProvision bool
	// AutoWake wakes a sleeping or stopped engine.
	AutoWake bool
}

// Decision is the outcome of an admit that was not an error.
type Decision struct {
	Admitted bool
	// Engine is the admitted engine (nil when denied).
	Engine *bap.Engine
	// APIKey is the admitted engine's plaintext key.
	APIKey string
	// Reason says why the admit was denied (one of the Reason constants).
	Reason string
}

// Service runs admits. It is safe for concurrent use; Run must be running
// for last_active_at to be written.
type Service struct {
	store    registry.Store
	lm       *lifecycle.Manager
	lim      *policy.Limiter
	cfg      Config
	log      *slog.Logger
	touches  *touches
	denials  *sampler
	keys     *keyCache
	products *productCache
	engines  *engineCache
	// hits and reads count lookups served from memory and from the store.
	hits, reads atomic.Uint64
}

// New returns a Service. store, lm and lim are required.
func New(store registry.Store, lm *lifecycle.Manager, lim *policy.Limiter, cfg Config) *Service {
	if store == nil || lm == nil || lim == nil {
		panic("discovery.New: store, lifecycle manager and limiter are required")
	}
	cfg.TouchInterval = cmp.Or(cfg.TouchInterval, 5*time.Second)
	cfg.DenySampleInterval = cmp.Or(cfg.DenySampleInterval, time.Minute)
	cfg.ProductTTL = cmp.Or(cfg.ProductTTL, time.Second)
	cfg.EngineTTL = cmp.Or(cfg.EngineTTL, 5*time.Second)
	if cfg.TouchInterval < 0 || cfg.DenySampleInterval < 0 {
		panic("discovery.New: negative interval")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Service{
		store:    store,
		lm:       lm,
		lim:      lim,
		cfg:      cfg,
		log:      cmp.Or(cfg.Logger, slog.Default()),
		touches:  newTouches(),
		denials:  newSampler(cfg.DenySampleInterval),
		keys:     newKeyCache(),
		products: newProductCache(),
		engines:  newEngineCache(cfg.EngineTTL),
	}
}

// Config returns the effective configuration (defaults applied).
func (s *Service) Config() Config { return s.cfg }

// maxSteps bounds the state walk of one admit: lost provision race →
// provisioning → awaited → running is three; more means the engine keeps
// being destroyed and re-made under us.
const maxSteps = 6

// Admit admits userID of the product authenticated by keyHash (the SHA-256
// hex of its platform key) to their engine, as SPEC §5 describes. It returns
// the product whenever the key authenticated, so the caller can label
// metrics and logs. Errors: INVALID_PLATFORM_KEY,
// RATE_LIMITED (with RetryAfter), and from provision or wake
// QUOTA_EXCEEDED, PORT_EXHAUSTION, BOOT_TIMEOUT, IMAGE_NOT_FOUND,
// BACKEND_UNAVAILABLE, BACKEND_ERROR, ENGINE_BUSY; DATABASE_UNAVAILABLE.
func (s *Service) Admit(ctx context.Context, keyHash string, uid bap.UserID, opt Options) (bap.Product, Decision, error) {
	userID := string(uid)
	if keyHash == "" {
		return bap.Product{}, Decision{}, errInvalidKey()
	}
	now := s.cfg.Now()
	p, e, err := s.lookup(ctx, keyHash, userID, now)
	if errors.Is(err, registry.ErrNotFound) {
		return bap.Product{}, Decision{}, errInvalidKey()
	}
	if err != nil {
		return bap.Product{}, Decision{}, registry.PublicErr("admit lookup", err)
	}
	r, ok, retryAfter := s.lim.Reserve(p.ID, policy.RPM(p.Policy))
	if !ok {
		return p, Decision{}, policy.RateLimitError(retryAfter)
	}
	d, last, err := s.decide(ctx, p, userID, e, opt)
	if err != nil {
		r.Cancel()
		return p, Decision{}, err
	}
	if !d.Admitted {
		r.Cancel()
		s.recordDenial(ctx, p, userID, last, d.Reason)
		return p, d, nil
	}
	s.touches.record(d.Engine, s.cfg.Now(), s.cfg.TouchInterval)
	return p, d, nil
}

// decide walks the engine's state to an admission, a denial or an error.
// It also returns the engine last seen (nil when none), for the audit row
// of a denial.
func (s *Service) decide(ctx context.Context, p bap.Product, userID string, e *bap.Engine, opt Options) (Decision, *bap.Engine, error) {
	for range maxSteps {
		if e == nil {
			if !opt.AutoProvision {
				return deny(ReasonEngineNotFound), nil, nil
			}
			res, err := s.lm.Provision(ctx, p, bap.UserID(userID), "", p.Slug)
			if err == nil {
				return s.admitted(res.Engine, res.APIKey)
			}
			if bap.ErrorCode(err) != bap.CodeEngineAlreadyExists {
				return Decision{}, nil, err
			}
			// Another caller or process inserted the row first: go on with
			// the engine it made.
			if e, err = s.reread(ctx, p.ID, userID); err != nil {
				return Decision{}, nil, err
			}
			continue
		}
		switch e.Status {
		case bap.StateRunning:
			return s.admitted(*e, "")
		case bap.StateSleeping, bap.StateStopped:
			if !opt.AutoWake {
				if e.Status == bap.StateSleeping {
					return deny(ReasonEngineSleeping), e, nil
				}
				return deny(ReasonEngineStopped), e, nil
			}
			res, err := s.lm.Wake(ctx, e.ID, p.Slug)
			switch bap.ErrorCode(err) {
			case "":
				return s.admitted(res.Engine, "")
			case bap.CodeEngineNotFound, bap.CodeEngineBusy:
				// Destroyed, or being destroyed or re-made, meanwhile.
				if e, err = s.reread(ctx, p.ID, userID); err != nil {
					return Decision{}, nil, err
				}
				continue
			default:
				return Decision{}, e, err
			}
		case bap.StateProvisioning:
			cur, err := s.lm.AwaitProvision(ctx, *e)
			switch bap.ErrorCode(err) {
			case "":
				e = &cur
			case bap.CodeEngineNotFound:
				e = nil
			default:
				return Decision{}, e, err
			}
		case bap.StateFailed:
			return deny(ReasonEngineUnhealthy), e, nil
		case bap.StateDestroying:
			return deny(ReasonEngineBusy), e, nil
		default:
			return Decision{}, e, fmt.Errorf("engine %s has unknown status %q", e.ID, e.Status)
		}
	}
	return Decision{}, e, bap.Errorf(bap.CodeEngineBusy, "The engine is changing state; retry shortly.")
}

// reread reads the product's engine for userID; nil when there is none.
func (s *Service) reread(ctx context.Context, productID, userID string) (*bap.Engine, error) {
	e, err := s.store.GetEngineByUser(ctx, productID, userID)
	if errors.Is(err, registry.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, registry.PublicErr("read engine", err)
	}
	return &e, nil
}

// admitted builds the admission of e; key is its plaintext key when the
// caller already has it (a provision), else it is decrypted.
func (s *Service) admitted(e bap.Engine, key string) (Decision, *bap.Engine, error) {
	if e.Status != bap.StateRunning {
		return Decision{}, &e, bap.Errorf(bap.CodeEngineBusy, "Engine is %s.", e.Status)
	}
	if key == "" {
		var err error
		if key, err = s.apiKey(e); err != nil {
			return Decision{}, &e, err
		}
	} else {
		s.keys.put(e.KeyEnc, key)
	}
	return Decision{Admitted: true, Engine: &e, APIKey: key}, &e, nil
}

// apiKey decrypts the engine key, through a small cache keyed by the Fernet
// token (a rotated key has a new token, so the cache never serves a stale
// key).
func (s *Service) apiKey(e bap.Engine) (string, error) {
	if k, ok := s.keys.get(e.KeyEnc); ok {
		return k, nil
	}
	k, err := s.lm.APIKey(e)
	if err != nil {
		return "", err
	}
	s.keys.put(e.KeyEnc, k)
	return k, nil
}

func errInvalidKey() error {
	return bap.Errorf(bap.CodeInvalidPlatformKey, "Invalid or missing platform key.")
}

func deny(reason string) Decision { return Decision{Reason: reason} }

// denyAuditTimeout bounds the write of one admit_denied row.
const denyAuditTimeout = 5 * time.Second

// recordDenial writes the admit_denied audit row, sampled. The write runs
// inline (it is rare by construction) but never fails the admit, and is not
// cut short by the caller going away.
func (s *Service) recordDenial(ctx context.Context, p bap.Product, userID string, e *bap.Engine, reason string) {
	key := "user/" + p.ID + "/" + userID
	entry := audit.Entry{
		ProductID: p.ID,
		UserID:    userID,
		Action:    audit.AdmitDenied,
		Actor:     p.Slug,
		Metadata:  map[string]any{"reason": reason},
	}
	if e != nil {
		key = "engine/" + e.ID
		entry.EngineID = e.ID
	}
	now := s.cfg.Now()
	if !s.denials.allow(key, now) {
		return
	}
	entry.Timestamp = bap.Timestamp(now)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), denyAuditTimeout)
	defer cancel()
	if err := s.store.AppendAudit(ctx, entry); err != nil {
		s.log.Warn("write admit_denied audit", "product_id", p.ID, "engine_id", entry.EngineID, "reason", reason, "err", err)
	}
}
