package ui

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"

	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/rollout"
)

// rolloutsView is the rollouts section of a product's page (admin only, as
// the API's rollout routes are).
type rolloutsView struct {
	// Served is false when this orchestrator has no rollout service.
	Served   bool
	Rollouts []rolloutRow
	// Active says that one rollout is running or paused, so that another
	// cannot be created until it ends.
	Active bool
	// Draft is the create form as typed (kept when it was refused).
	Draft rolloutDraft
	// Error is why the last rollout form was refused, in the API's words;
	// ErrorFor is the rollout it concerned ("" for the create form).
	Error    *errorView
	ErrorFor string

	DefaultMaxParallel, DefaultMaxFailures int
	// CSRF is the session's token, for the section's forms.
	CSRF string
}

// rolloutRow is one rollout as the table shows it.
type rolloutRow struct {
	rollout.View
	CanRaise, CanPause, CanResume, CanAbort bool
	// NextPercent is what the raise form proposes.
	NextPercent int
}

// rolloutDraft is the create form's fields as typed.
type rolloutDraft struct {
	EngineVersion, Percent, MaxParallel, MaxFailures string
}

// rolloutsOf assembles the rollouts section of p's page for an admin.
func (h *Handler) rolloutsOf(r *http.Request, v *viewer, p bap.Product) (rolloutsView, error) {
	rv := rolloutsView{Served: h.rollouts != nil, CSRF: v.sess.csrf,
		DefaultMaxParallel: rollout.DefaultMaxParallel, DefaultMaxFailures: rollout.DefaultMaxFailures}
	if !rv.Served {
		return rv, nil
	}
	vs, err := h.rollouts.List(r.Context(), p.ID)
	if err != nil {
		return rv, err
	}
	for _, ro := range vs {
		row := rolloutRow{View: ro, NextPercent: min(100, ro.Percent+10)}
		switch ro.State {
		case bap.RolloutRunning:
			row.CanRaise, row.CanPause, row.CanAbort = ro.Percent < 100, true, true
		case bap.RolloutPaused:
			row.CanRaise, row.CanResume, row.CanAbort = ro.Percent < 100, true, true
		case bap.RolloutDone:
			row.CanRaise = ro.Percent < 100
		}
		rv.Active = rv.Active || ro.Active()
		rv.Rollouts = append(rv.Rollouts, row)
	}
	return rv, nil
}

// errRolloutsAdminOnly refuses rollouts to a product's own operator: the
// API serves them on the admin key only.
var errRolloutsAdminOnly = errForbidden("Only an admin may see or change rollouts.")

// rolloutProduct is the product a rollout form names, for an admin, with
// the API's answer when rollouts are not served.
func (h *Handler) rolloutProduct(r *http.Request, v *viewer) (bap.Product, error) {
	p, err := h.productFor(r, v)
	if err != nil {
		return p, err
	}
	if !v.admin {
		return p, errRolloutsAdminOnly
	}
	if h.rollouts == nil {
		return p, bap.Errorf(bap.CodeNotFound, "Rollouts are not served here.")
	}
	return p, nil
}

// formInt reads an integer field of a form as the API reads one of a JSON
// body, in the same words: absent or empty is 0 and ok=false.
func formInt(r *http.Request, key string, required bool) (n int, ok bool, err error) {
	s := strings.TrimSpace(r.PostForm.Get(key))
	if s == "" {
		if required {
			return 0, false, bap.Errorf(bap.CodeValidation, "%s is required.", key)
		}
		return 0, false, nil
	}
	x, perr := strconv.ParseFloat(s, 64)
	if perr != nil || x != math.Trunc(x) || math.Abs(x) > math.MaxInt32 {
		return 0, false, bap.Errorf(bap.CodeValidation, "%s must be an integer.", key)
	}
	return int(x), true, nil
}

// rolloutRequest reads the create form as POST /products/{product}/rollouts
// reads its body; the service validates the rest.
func rolloutRequest(r *http.Request) (rollout.Request, error) {
	req := rollout.Request{EngineVersion: r.PostForm.Get("engine_version")}
	var (
		ok  bool
		err error
	)
	if req.Percent, _, err = formInt(r, "percent", true); err != nil {
		return req, err
	}
	if req.MaxParallel, ok, err = formInt(r, "max_parallel", false); err != nil {
		return req, err
	} else if ok && req.MaxParallel < 1 {
		return req, bap.Errorf(bap.CodeValidation, "max_parallel must be at least 1.")
	}
	if req.MaxFailures, ok, err = formInt(r, "max_failures", false); err != nil {
		return req, err
	} else if ok && req.MaxFailures < 1 {
		return req, bap.Errorf(bap.CodeValidation, "max_failures must be at least 1.")
	}
	return req, nil
}

// createRollout: POST /ui/products/{product_id}/rollouts, as POST
// /products/{product}/rollouts.
func (h *Handler) createRollout(w http.ResponseWriter, r *http.Request, v *viewer) error {
	p, err := h.rolloutProduct(r, v)
	if err != nil {
		return err
	}
	req, err := rolloutRequest(r)
	var ro rollout.View
	if err == nil {
		ro, err = h.rollouts.Create(r.Context(), p, req, v.actor())
	}
	if err != nil {
		return h.rolloutRefused(w, r, v, p, "", err)
	}
	h.log.Info("dashboard rollout create", "who", v.name(), "product_id", p.ID, "rollout_id", ro.ID)
	h.redirect(w, r, v, productURL(p.ID)+"#rollouts",
		fmt.Sprintf("Rollout created: %s to %d%% of the engines.", ro.EngineVersion, ro.Percent))
	return nil
}

// rolloutAction: POST /ui/products/{product_id}/rollouts/{rollout_id}/{op}
// with op percent, pause, resume or abort, as PATCH and the pause, resume
// and abort routes of the API.
func (h *Handler) rolloutAction(w http.ResponseWriter, r *http.Request, v *viewer) error {
	p, err := h.rolloutProduct(r, v)
	if err != nil {
		return err
	}
	ctx, id := r.Context(), r.PathValue("rollout_id")
	var (
		ro  rollout.View
		msg string
	)
	switch r.PathValue("op") {
	case "percent":
		var percent int
		if percent, _, err = formInt(r, "percent", true); err == nil {
			ro, err = h.rollouts.SetPercent(ctx, p.ID, id, percent, v.actor())
		}
		msg = "Rollout raised to %d%%."
	case "pause":
		ro, err = h.rollouts.Pause(ctx, p.ID, id, v.actor())
		msg = "Rollout paused at %d%%."
	case "resume":
		ro, err = h.rollouts.Resume(ctx, p.ID, id, v.actor())
		msg = "Rollout resumed at %d%%."
	case "abort":
		ro, err = h.rollouts.Abort(ctx, p.ID, id, v.actor())
		msg = "Rollout aborted at %d%%; upgrades already made stay."
	default:
		return errNotFound
	}
	if err != nil {
		return h.rolloutRefused(w, r, v, p, id, err)
	}
	h.log.Info("dashboard rollout action", "who", v.name(), "product_id", p.ID, "rollout_id", id, "op", r.PathValue("op"))
	h.redirect(w, r, v, productURL(p.ID)+"#rollouts", fmt.Sprintf(msg, ro.Percent))
	return nil
}

// rolloutRefused answers a rollout form that changed nothing with the
// product's page and the API's error beside the form.
func (h *Handler) rolloutRefused(w http.ResponseWriter, r *http.Request, v *viewer, p bap.Product, id string, err error) error {
	if _, ok := bap.AsError(err); !ok {
		return err // internal: the error page, logged
	}
	pe, status, _ := api.PublicError(err)
	pv, verr := h.productView(r, v, p)
	if verr != nil {
		return verr
	}
	pv.Rollouts.Error = &errorView{Status: status, Code: pe.Code, Message: pe.Message}
	pv.Rollouts.ErrorFor = id
	if id == "" {
		pv.Rollouts.Draft = rolloutDraft{
			EngineVersion: r.PostForm.Get("engine_version"), Percent: r.PostForm.Get("percent"),
			MaxParallel: r.PostForm.Get("max_parallel"), MaxFailures: r.PostForm.Get("max_failures"),
		}
	}
	h.render(w, r, v, status, "product", "Product "+p.Slug, pv)
	return nil
}
