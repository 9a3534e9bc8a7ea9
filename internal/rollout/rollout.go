// Package rollout runs durable rollouts (SPEC §16): a product's engines
// upgraded a share at a time, each through lifecycle.Upgrade, so every
// upgrade snapshots its brain and rolls itself back on failure. The state
// of a rollout and each engine's outcome live in the registry, so a
// rollout survives restarts and replica deaths: the runner is the holder
// of the leader shard (internal/replica), and another replica takes over
// when it dies. It never calls a backend.
package rollout

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/replica"
)

// Defaults of a rollout request (SPEC §16).
const (
	DefaultMaxParallel = 2
	DefaultMaxFailures = 1
)

// Config wires a Service.
type Config struct {
	Store     registry.Store
	Lifecycle *lifecycle.Manager
	// Replica says whether this process runs rollouts (it holds the
	// leader shard) and fences the runner's writes with that lease.
	Replica *replica.Replica
	// Every is the runner's pass interval (default 1 s); a finished
	// upgrade starts a pass at once.
	Every time.Duration
	// ProductChanged, when set, is told when a rollout changed a product's
	// policy (to drop cached copies at once).
	ProductChanged func(productID string)
	Logger         *slog.Logger
}

// Service creates, reads and changes rollouts and runs them.
type Service struct {
	store registry.Store
	lc    *lifecycle.Manager
	rep   *replica.Replica
	every time.Duration
	log   *slog.Logger
	kick  chan struct{}

	productChanged func(productID string)

	mu sync.Mutex
	// inflight: rollout id → engine ids this process is upgrading for it.
	inflight map[string]map[string]bool
	wg       sync.WaitGroup
}

// New returns a Service. Store, Lifecycle and Replica are required.
func New(cfg Config) *Service {
	if cfg.Store == nil || cfg.Lifecycle == nil || cfg.Replica == nil {
		panic("rollout.New: Store, Lifecycle and Replica are required")
	}
	return &Service{
		store:    cfg.Store,
		lc:       cfg.Lifecycle,
		rep:      cfg.Replica,
		every:    cmp.Or(cfg.Every, time.Second),
		log:      cmp.Or(cfg.Logger, slog.Default()),
		kick:     make(chan struct{}, 1),
		inflight: map[string]map[string]bool{},

		productChanged: cfg.ProductChanged,
	}
}

// Request asks for a rollout. Zero MaxParallel and MaxFailures take the
// defaults.
type Request struct {
	EngineVersion string
	Percent       int
	MaxParallel   int
	MaxFailures   int
}

// Counts are a rollout's engines by outcome: pending counts the chosen
// engines not yet upgraded (in flight included).
type Counts struct {
	Pending    int
	Upgraded   int
	RolledBack int
	Skipped    int
}

// View is a rollout with its counts.
type View struct {
	bap.Rollout
	Counts Counts
}

func validate(req Request) (Request, error) {
	req.MaxParallel = cmp.Or(req.MaxParallel, DefaultMaxParallel)
	req.MaxFailures = cmp.Or(req.MaxFailures, DefaultMaxFailures)
	switch {
	case req.EngineVersion == "" || len(req.EngineVersion) > 255:
		return req, bap.Errorf(bap.CodeValidation, "engine_version is required (at most 255 characters).")
	case req.Percent < 1 || req.Percent > 100:
		return req, bap.Errorf(bap.CodeValidation, "percent must be an integer from 1 to 100.")
	case req.MaxParallel < 1 || req.MaxParallel > 100:
		return req, bap.Errorf(bap.CodeValidation, "max_parallel must be an integer from 1 to 100.")
	case req.MaxFailures < 1 || req.MaxFailures > 10000:
		return req, bap.Errorf(bap.CodeValidation, "max_failures must be a positive integer.")
	}
	for _, c := range req.EngineVersion {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '/' || c == ':' || c == '@') {
			return req, bap.Errorf(bap.CodeValidation, "engine_version is not a valid image reference.")
		}
	}
	return req, nil
}

// Create starts a rollout of p's engines. Errors: VALIDATION_ERROR,
// ROLLOUT_IN_PROGRESS (one is running or paused), PRODUCT_NOT_FOUND,
// DATABASE_UNAVAILABLE.
func (s *Service) Create(ctx context.Context, p bap.Product, req Request, actor string) (View, error) {
	req, err := validate(req)
	if err != nil {
		return View{}, err
	}
	now := bap.Now()
	r := bap.Rollout{ID: uuid.NewString(), ProductID: p.ID, EngineVersion: req.EngineVersion, Percent: req.Percent,
		MaxParallel: req.MaxParallel, MaxFailures: req.MaxFailures, State: bap.RolloutRunning, CreatedAt: now, UpdatedAt: now}
	entry := audit.Entry{ProductID: p.ID, Action: audit.RolloutCreate, Actor: actor, Metadata: map[string]any{
		"rollout_id": r.ID, "engine_version": r.EngineVersion, "percent": r.Percent,
		"max_parallel": r.MaxParallel, "max_failures": r.MaxFailures,
	}}
	err = s.store.CreateRollout(ctx, r, entry)
	switch {
	case errors.Is(err, registry.ErrConflict):
		return View{}, bap.Errorf(bap.CodeRolloutInProgress, "Product %s has a rollout running or paused; finish, resume or abort it first.", p.Slug)
	case errors.Is(err, registry.ErrNotFound):
		return View{}, bap.Errorf(bap.CodeProductNotFound, "Product not found.")
	case err != nil:
		return View{}, registry.PublicErr("create rollout", err)
	}
	s.Kick()
	return s.view(ctx, r)
}

// Get returns the product's rollout id. Errors: ROLLOUT_NOT_FOUND.
func (s *Service) Get(ctx context.Context, productID, id string) (View, error) {
	r, err := s.load(ctx, productID, id)
	if err != nil {
		return View{}, err
	}
	return s.view(ctx, r)
}

// List returns the product's rollouts, newest first.
func (s *Service) List(ctx context.Context, productID string) ([]View, error) {
	rs, err := s.store.ListRollouts(ctx, productID)
	if err != nil {
		return nil, registry.PublicErr("list rollouts", err)
	}
	out := make([]View, 0, len(rs))
	for _, r := range rs {
		v, err := s.view(ctx, r)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func (s *Service) load(ctx context.Context, productID, id string) (bap.Rollout, error) {
	r, err := s.store.GetRollout(ctx, id)
	if errors.Is(err, registry.ErrNotFound) || (err == nil && r.ProductID != productID) {
		return bap.Rollout{}, bap.Errorf(bap.CodeRolloutNotFound, "Rollout not found.")
	}
	if err != nil {
		return bap.Rollout{}, registry.PublicErr("read rollout", err)
	}
	return r, nil
}

// change applies fn to the rollout under the product and records it.
func (s *Service) change(ctx context.Context, productID, id, actor string, fn func(r *bap.Rollout) error) (View, error) {
	var out bap.Rollout
	err := s.store.InTx(ctx, func(tx registry.Store) error {
		r, err := tx.GetRollout(ctx, id)
		if errors.Is(err, registry.ErrNotFound) || (err == nil && r.ProductID != productID) {
			return bap.Errorf(bap.CodeRolloutNotFound, "Rollout not found.")
		}
		if err != nil {
			return err
		}
		before := r
		if err := fn(&r); err != nil {
			return err
		}
		out = r
		if r == before {
			return nil
		}
		return tx.UpdateRollout(ctx, r, audit.Entry{ProductID: productID, Action: audit.RolloutUpdate, Actor: actor,
			Metadata: map[string]any{"rollout_id": id, "state": string(r.State), "percent": r.Percent,
				"from_state": string(before.State), "from_percent": before.Percent}})
	})
	if err != nil {
		if _, ok := bap.AsError(err); ok {
			return View{}, err
		}
		return View{}, registry.PublicErr("update rollout", err)
	}
	s.Kick()
	return s.view(ctx, out)
}

// SetPercent raises a rollout's percent: the same order of engines is
// extended, and a done rollout runs again. Lowering it, or changing an
// aborted rollout, is VALIDATION_ERROR; ROLLOUT_NOT_FOUND.
func (s *Service) SetPercent(ctx context.Context, productID, id string, percent int, actor string) (View, error) {
	if percent < 1 || percent > 100 {
		return View{}, bap.Errorf(bap.CodeValidation, "percent must be an integer from 1 to 100.")
	}
	return s.change(ctx, productID, id, actor, func(r *bap.Rollout) error {
		switch {
		case percent < r.Percent:
			return bap.Errorf(bap.CodeValidation, "percent can only be raised (it is %d).", r.Percent)
		case r.State == bap.RolloutAborted:
			return bap.Errorf(bap.CodeValidation, "The rollout was aborted; create a new one.")
		}
		if percent > r.Percent && r.State == bap.RolloutDone {
			r.State = bap.RolloutRunning
		}
		r.Percent = percent
		return nil
	})
}

// Pause stops starting upgrades (those in flight finish).
func (s *Service) Pause(ctx context.Context, productID, id, actor string) (View, error) {
	return s.change(ctx, productID, id, actor, func(r *bap.Rollout) error {
		if r.State != bap.RolloutRunning && r.State != bap.RolloutPaused {
			return bap.Errorf(bap.CodeValidation, "The rollout is %s.", r.State)
		}
		r.State = bap.RolloutPaused
		r.Reason = "paused by " + actor
		return nil
	})
}

// Resume runs a paused rollout again; the failures before it no longer
// count against max_failures.
func (s *Service) Resume(ctx context.Context, productID, id, actor string) (View, error) {
	outcomes, err := s.store.RolloutEngines(ctx, id)
	if err != nil {
		return View{}, registry.PublicErr("read rollout engines", err)
	}
	rolledBack := 0
	for _, o := range outcomes {
		if o.Outcome == bap.OutcomeRolledBack {
			rolledBack++
		}
	}
	return s.change(ctx, productID, id, actor, func(r *bap.Rollout) error {
		if r.State != bap.RolloutRunning && r.State != bap.RolloutPaused {
			return bap.Errorf(bap.CodeValidation, "The rollout is %s.", r.State)
		}
		r.State, r.Reason = bap.RolloutRunning, ""
		r.FailureBase = rolledBack
		return nil
	})
}

// Abort ends a rollout for good; upgrades in flight finish, nothing is
// undone.
func (s *Service) Abort(ctx context.Context, productID, id, actor string) (View, error) {
	return s.change(ctx, productID, id, actor, func(r *bap.Rollout) error {
		if r.State == bap.RolloutDone || r.State == bap.RolloutAborted {
			return bap.Errorf(bap.CodeValidation, "The rollout is %s.", r.State)
		}
		r.State, r.Reason = bap.RolloutAborted, "aborted by "+actor
		return nil
	})
}
