package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"

	"github.com/google/uuid"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/rollout"
)

// integer returns an integer field; absent or null is 0 and ok=false.
func (f fields) integer(key string, required bool) (int, bool, error) {
	if f.isNull(key) {
		if required {
			return 0, false, bap.Errorf(bap.CodeValidation, "%s is required.", key)
		}
		return 0, false, nil
	}
	var x float64
	if err := json.Unmarshal(f[key], &x); err != nil || x != math.Trunc(x) || math.Abs(x) > math.MaxInt32 {
		return 0, false, bap.Errorf(bap.CodeValidation, "%s must be an integer.", key)
	}
	return int(x), true, nil
}

// decodeRollout parses {"engine_version", "percent", "max_parallel"?,
// "max_failures"?}.
func decodeRollout(b []byte) (rollout.Request, error) {
	f, err := parseObject(b, false)
	if err != nil {
		return rollout.Request{}, err
	}
	var req rollout.Request
	if req.EngineVersion, _, err = f.str("engine_version", true); err != nil {
		return req, err
	}
	if req.Percent, _, err = f.integer("percent", true); err != nil {
		return req, err
	}
	var ok bool
	if req.MaxParallel, ok, err = f.integer("max_parallel", false); err != nil {
		return req, err
	} else if ok && req.MaxParallel < 1 {
		return req, bap.Errorf(bap.CodeValidation, "max_parallel must be at least 1.")
	}
	if req.MaxFailures, ok, err = f.integer("max_failures", false); err != nil {
		return req, err
	} else if ok && req.MaxFailures < 1 {
		return req, bap.Errorf(bap.CodeValidation, "max_failures must be at least 1.")
	}
	return req, nil
}

type rolloutCounts struct {
	Pending    int `json:"pending"`
	Upgraded   int `json:"upgraded"`
	RolledBack int `json:"rolled_back"`
	Skipped    int `json:"skipped"`
}

type rolloutInfo struct {
	RolloutID     string        `json:"rollout_id"`
	EngineVersion string        `json:"engine_version"`
	Percent       int           `json:"percent"`
	MaxParallel   int           `json:"max_parallel"`
	MaxFailures   int           `json:"max_failures"`
	State         string        `json:"state"`
	Reason        string        `json:"reason,omitempty"`
	Counts        rolloutCounts `json:"counts"`
	CreatedAt     string        `json:"created_at"`
	UpdatedAt     string        `json:"updated_at"`
}

func toRolloutInfo(v rollout.View) rolloutInfo {
	return rolloutInfo{
		RolloutID: v.ID, EngineVersion: v.EngineVersion, Percent: v.Percent, MaxParallel: v.MaxParallel,
		MaxFailures: v.MaxFailures, State: string(v.State), Reason: v.Reason,
		Counts: rolloutCounts{Pending: v.Counts.Pending, Upgraded: v.Counts.Upgraded,
			RolledBack: v.Counts.RolledBack, Skipped: v.Counts.Skipped},
		CreatedAt: bap.FormatTime(v.CreatedAt), UpdatedAt: bap.FormatTime(v.UpdatedAt),
	}
}

// pathProduct is the product named by {product} in the path: its id or
// its slug.
func (s *server) pathProduct(r *http.Request) (bap.Product, error) {
	ref := r.PathValue("product")
	if u, err := uuid.Parse(ref); err == nil {
		p, err := s.store.GetProduct(r.Context(), u.String())
		if errors.Is(err, registry.ErrNotFound) {
			return bap.Product{}, bap.Errorf(bap.CodeProductNotFound, msgProductNotFound)
		}
		if err != nil {
			return bap.Product{}, fmt.Errorf("read product: %w", err)
		}
		return p, nil
	}
	ps, err := s.store.ListProducts(r.Context())
	if err != nil {
		return bap.Product{}, fmt.Errorf("list products: %w", err)
	}
	for _, p := range ps {
		if p.Slug == ref {
			return p, nil
		}
	}
	return bap.Product{}, bap.Errorf(bap.CodeProductNotFound, msgProductNotFound)
}

// rolloutProduct is the product (id or slug) the path names, when
// rollouts are served here.
func (s *server) rolloutProduct(r *http.Request) (bap.Product, error) {
	if s.rollouts == nil {
		return bap.Product{}, bap.Errorf(bap.CodeNotFound, "Rollouts are not served here.")
	}
	return s.pathProduct(r)
}

// createRollout: POST /products/{product}/rollouts.
func (s *server) createRollout(w http.ResponseWriter, r *http.Request, _ bap.Product) error {
	p, err := s.rolloutProduct(r)
	if err != nil {
		return err
	}
	req, err := readRequest(s, w, r, decodeRollout)
	if err != nil {
		return err
	}
	v, err := s.rollouts.Create(r.Context(), p, req, audit.ActorAdmin)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, toRolloutInfo(v))
	return nil
}

type rolloutList struct {
	Rollouts []rolloutInfo `json:"rollouts"`
	Total    int           `json:"total"`
}

// listRollouts: GET /products/{product}/rollouts.
func (s *server) listRollouts(w http.ResponseWriter, r *http.Request, _ bap.Product) error {
	p, err := s.rolloutProduct(r)
	if err != nil {
		return err
	}
	vs, err := s.rollouts.List(r.Context(), p.ID)
	if err != nil {
		return err
	}
	out := rolloutList{Rollouts: make([]rolloutInfo, 0, len(vs)), Total: len(vs)}
	for _, v := range vs {
		out.Rollouts = append(out.Rollouts, toRolloutInfo(v))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// rolloutOp serves GET, PATCH and the pause/resume/abort actions of one
// rollout.
func (s *server) rolloutOp(op string) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, _ bap.Product) error {
		p, err := s.rolloutProduct(r)
		if err != nil {
			return err
		}
		id := r.PathValue("rollout_id")
		var v rollout.View
		switch op {
		case "get":
			v, err = s.rollouts.Get(r.Context(), p.ID, id)
		case "patch":
			b, rerr := s.readBody(w, r)
			if rerr != nil {
				return rerr
			}
			f, perr := parseObject(b, false)
			if perr != nil {
				return perr
			}
			percent, _, perr := f.integer("percent", true)
			if perr != nil {
				return perr
			}
			v, err = s.rollouts.SetPercent(r.Context(), p.ID, id, percent, audit.ActorAdmin)
		case "pause":
			v, err = s.rollouts.Pause(r.Context(), p.ID, id, audit.ActorAdmin)
		case "resume":
			v, err = s.rollouts.Resume(r.Context(), p.ID, id, audit.ActorAdmin)
		case "abort":
			v, err = s.rollouts.Abort(r.Context(), p.ID, id, audit.ActorAdmin)
		}
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, toRolloutInfo(v))
		return nil
	}
}
