package ui

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/registry"
)

// Sizes of the engine page.
const (
	timelinePerPage = 20
	logTailLines    = 200
	logsTimeout     = 5 * time.Second
)

// timelineEntry is one audit row as the timeline shows it.
type timelineEntry struct {
	audit.Entry
	Details string // the metadata as compact JSON, "" when none
}

// engineView is the body of the engine page.
type engineView struct {
	Engine  bap.Engine
	Product bap.Product
	// Restarts counts the engine's auto-restart attempts in the audit log.
	Restarts int

	Timeline      []timelineEntry
	TimelineTotal int
	TimelinePage  int
	TimelinePages int
	TimelinePrev  string
	TimelineNext  string

	LogsAvailable bool
	Logs          string
	LogsError     string

	// Operation is the operation in flight on the engine ("" when none),
	// Phase the phase of an upgrade in flight, as the API's "operation"
	// shows them.
	Operation string
	Phase     string

	CanStart, CanStop, CanRestart, CanRotate, CanUpgrade, CanDestroy bool
	// UpgradeDraft is the version typed into the upgrade form, kept when
	// the upgrade was refused; UpgradeError is why.
	UpgradeDraft string
	UpgradeError *errorView

	// ActionError is an action that was refused or failed.
	ActionError *errorView
	// NewKey is the engine's new key right after a rotation, shown once.
	NewKey string
}

// msgEmptyVersion is the API's answer to an upgrade without a version.
const msgEmptyVersion = "engine_version must not be empty."

// engineFor returns the engine the path names, if the viewer may see it:
// another product's engine is as absent as no engine at all.
func (h *Handler) engineFor(r *http.Request, v *viewer) (bap.Engine, error) {
	e, err := h.store.GetEngine(r.Context(), r.PathValue("engine_id"))
	if errors.Is(err, registry.ErrNotFound) || (err == nil && !v.sees(e.ProductID)) {
		return bap.Engine{}, errNotFound
	}
	if err != nil {
		return bap.Engine{}, fmt.Errorf("read engine: %w", err)
	}
	return e, nil
}

// engineURL is an engine's page.
func engineURL(id string) string { return Path + "/engines/" + url.PathEscape(id) }

// engineView assembles the page of e, its timeline at page tpage.
func (h *Handler) engineView(ctx context.Context, e bap.Engine, tpage int) (engineView, error) {
	ev := engineView{Engine: e, TimelinePage: max(tpage, 1)}
	p, err := h.store.GetProduct(ctx, e.ProductID)
	if err != nil {
		return ev, fmt.Errorf("read product: %w", err)
	}
	ev.Product = p
	if _, ev.Restarts, err = h.store.ListAudit(ctx, registry.AuditFilter{
		EngineID: e.ID, Actions: []audit.Action{audit.AutoRestartStart}, Limit: 1,
	}); err != nil {
		return ev, fmt.Errorf("count restarts: %w", err)
	}
	page := func() ([]audit.Entry, int, error) {
		return h.store.ListAudit(ctx, registry.AuditFilter{
			EngineID: e.ID, Limit: timelinePerPage, Offset: (ev.TimelinePage - 1) * timelinePerPage,
		})
	}
	entries, total, err := page()
	if err != nil {
		return ev, fmt.Errorf("list audit: %w", err)
	}
	ev.TimelineTotal = total
	ev.TimelinePages = max(1, (total+timelinePerPage-1)/timelinePerPage)
	if ev.TimelinePage > ev.TimelinePages {
		ev.TimelinePage = ev.TimelinePages
		if entries, _, err = page(); err != nil {
			return ev, fmt.Errorf("list audit: %w", err)
		}
	}
	for _, a := range entries {
		te := timelineEntry{Entry: a}
		if len(a.Metadata) > 0 {
			b, err := json.Marshal(a.Metadata)
			if err == nil {
				te.Details = string(b)
			}
		}
		ev.Timeline = append(ev.Timeline, te)
	}
	tl := func(n int) string {
		return engineURL(e.ID) + "?" + url.Values{"tpage": {strconv.Itoa(n)}}.Encode() + "#timeline"
	}
	if ev.TimelinePage > 1 {
		ev.TimelinePrev = tl(ev.TimelinePage - 1)
	}
	if ev.TimelinePage < ev.TimelinePages {
		ev.TimelineNext = tl(ev.TimelinePage + 1)
	}

	if h.logs != nil {
		ev.LogsAvailable = true
		lctx, cancel := context.WithTimeout(ctx, logsTimeout)
		ev.Logs, err = h.logs(lctx, e.ID, logTailLines)
		cancel()
		if err != nil {
			pe, _, internal := api.PublicError(err)
			if internal {
				h.log.Warn("dashboard: engine logs", "engine_id", e.ID, "err", err)
			}
			ev.LogsError = pe.Message
		}
	}

	if e.Claim.Held() {
		ev.Operation, ev.Phase = string(e.Claim.Op), lifecycle.UpgradePhase(e)
	}
	switch e.Status {
	case bap.StateRunning:
		ev.CanStop, ev.CanRestart, ev.CanRotate, ev.CanUpgrade = true, true, true, true
	case bap.StateSleeping:
		ev.CanStart, ev.CanStop, ev.CanRestart, ev.CanUpgrade = true, true, true, true
	case bap.StateStopped:
		ev.CanStart, ev.CanUpgrade = true, true
	case bap.StateFailed:
		ev.CanStart, ev.CanRestart = true, true
	}
	ev.CanDestroy = e.Status != bap.StateDestroying
	return ev, nil
}

// enginePage: GET /ui/engines/{engine_id}.
func (h *Handler) enginePage(w http.ResponseWriter, r *http.Request, v *viewer) error {
	e, err := h.engineFor(r, v)
	if err != nil {
		return err
	}
	tpage, _ := strconv.Atoi(r.URL.Query().Get("tpage"))
	ev, err := h.engineView(r.Context(), e, tpage)
	if err != nil {
		return err
	}
	h.render(w, r, v, http.StatusOK, "engine", "Engine "+e.UserID, ev)
	return nil
}

// engineAction: POST /ui/engines/{engine_id}/{action}, through lifecycle
// as the API's routes do, with the viewer as the audit actor.
func (h *Handler) engineAction(w http.ResponseWriter, r *http.Request, v *viewer) error {
	e, err := h.engineFor(r, v)
	if err != nil {
		return err
	}
	ctx, actor := r.Context(), v.actor()
	var (
		res   string // the message of a success
		key   string // a new key, shown once
		after = engineURL(e.ID)
	)
	switch r.PathValue("action") {
	case "start":
		_, err = h.lm.Start(ctx, e.ID, actor)
		res = "Engine started."
	case "stop":
		_, err = h.lm.Stop(ctx, e.ID, actor)
		res = "Engine stopped."
	case "restart":
		if _, err = h.lm.Stop(ctx, e.ID, actor); bap.ErrorCode(err) == bap.CodeEngineNotRunning {
			err = nil // a failed engine has nothing to stop
		}
		if err == nil {
			_, err = h.lm.Start(ctx, e.ID, actor)
		}
		res = "Engine restarted."
	case "rotate-key":
		var rot lifecycle.Result
		rot, err = h.lm.RotateKey(ctx, e.ID, actor)
		key = rot.APIKey
	case "upgrade":
		// As POST /engines/{user_id}/upgrade: the same lifecycle operation,
		// which rolls itself back when the new version is not healthy.
		version := r.PostForm.Get("engine_version")
		var up lifecycle.Result
		if version == "" {
			err = bap.Errorf(bap.CodeValidation, msgEmptyVersion)
		} else {
			up, err = h.lm.Upgrade(ctx, e.ID, version, actor)
		}
		switch {
		case err != nil:
		case e.Image == up.Engine.Image:
			res = "The engine already runs " + version + "; nothing changed."
		default:
			res = "Upgraded from " + cmp.Or(e.Image, "the default version") + " to " + up.Engine.Image + "."
		}
	case "destroy":
		if r.PostForm.Get("confirm_user_id") != e.UserID {
			return h.engineRefused(w, r, v, e, http.StatusUnprocessableEntity, "",
				"Nothing was destroyed: type the engine's user id exactly to confirm.")
		}
		_, err = h.lm.Destroy(ctx, e.ID, actor)
		res = "Destroyed the engine of " + e.UserID + "."
		after = Path + "/engines"
	default:
		return errNotFound
	}
	if err != nil {
		pe, status, internal := api.PublicError(err)
		if internal {
			h.log.Error("dashboard: engine action", "engine_id", e.ID, "action", r.PathValue("action"), "err", err)
		}
		return h.engineRefused(w, r, v, e, status, pe.Code, pe.Message)
	}
	h.log.Info("dashboard engine action", "who", v.name(), "engine_id", e.ID, "action", r.PathValue("action"))
	if key != "" {
		cur, err := h.store.GetEngine(ctx, e.ID)
		if err != nil {
			cur = e
		}
		ev, err := h.engineView(ctx, cur, 1)
		if err != nil {
			return err
		}
		ev.NewKey = key
		h.render(w, r, v, http.StatusOK, "engine", "Engine "+e.UserID, ev)
		return nil
	}
	h.redirect(w, r, v, after, res)
	return nil
}

// engineRefused answers an action that did not happen with the engine page
// (as it is now) and the reason, under the given status.
func (h *Handler) engineRefused(w http.ResponseWriter, r *http.Request, v *viewer, e bap.Engine, status int, code, msg string) error {
	cur, err := h.store.GetEngine(r.Context(), e.ID)
	if errors.Is(err, registry.ErrNotFound) {
		return errStatus(status, msg)
	}
	if err != nil {
		return fmt.Errorf("read engine: %w", err)
	}
	ev, err := h.engineView(r.Context(), cur, 1)
	if err != nil {
		return err
	}
	ev.ActionError = &errorView{Status: status, Code: code, Message: msg}
	if r.PathValue("action") == "upgrade" {
		// The form keeps what was typed, its error beside it.
		ev.UpgradeDraft, ev.UpgradeError = r.PostForm.Get("engine_version"), ev.ActionError
	}
	h.render(w, r, v, status, "engine", "Engine "+e.UserID, ev)
	return nil
}
