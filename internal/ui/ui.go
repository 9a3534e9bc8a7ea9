package ui

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"time"

	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/discovery"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/policy"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/rollout"
)

// Path is where the dashboard is served (api.UIPath).
const Path = api.UIPath

// Defaults of Deps.
const (
	DefaultSessionTTL   = 8 * time.Hour
	DefaultPollInterval = 2 * time.Second
)

//go:embed templates/*.html
var templateFiles embed.FS

//go:embed static
var staticFiles embed.FS

// Deps is what the dashboard needs. Store, Lifecycle, Discovery and AdminKey
// are required.
type Deps struct {
	Store     registry.Store
	Lifecycle *lifecycle.Manager
	Discovery *discovery.Service
	// Rollouts is the service behind /products/{product}/rollouts, which
	// the products page lists and acts on (admin only, as in the API).
	// nil: the page says that rollouts are not served here, and their
	// forms are answered 404 as the API answers those routes.
	Rollouts *rollout.Service
	// AdminKey is ORCH_ADMIN_KEY. It must not be empty.
	AdminKey string
	// PlatformKeyGrace is ORCH_PLATFORM_KEY_GRACE_S, for platform-key
	// rotations made from the products page.
	PlatformKeyGrace time.Duration
	// Logs returns the last lines of an engine's own output. nil: the
	// engine page says that no log facility is available.
	Logs func(ctx context.Context, engineID string, lines int) (string, error)
	// Logger receives internal errors (default slog.Default()).
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// SessionTTL is how long a session lasts from sign-in (default
	// DefaultSessionTTL).
	SessionTTL time.Duration
	// PollInterval is how often the live stream polls the counts per
	// product and state while someone watches (default
	// DefaultPollInterval).
	PollInterval time.Duration
	// Context, when it ends, ends every live stream (the server shutting
	// down: a stream never ends on its own). Default: never.
	Context context.Context
}

// Handler serves the dashboard under Path.
type Handler struct {
	store    registry.Store
	lm       *lifecycle.Manager
	disc     *discovery.Service
	rollouts *rollout.Service
	adminKey string
	grace    time.Duration
	logs     func(ctx context.Context, engineID string, lines int) (string, error)
	log      *slog.Logger
	now      func() time.Time
	base     context.Context

	pages    map[string]*template.Template
	static   http.Handler
	sessions *sessions
	// signins limits failed sign-ins per client address.
	signins *policy.Limiter
	feed    *feed
	mux     *http.ServeMux
}

// New returns the dashboard. It panics when a required dependency is
// missing: that is a wiring mistake, not a runtime condition.
func New(d Deps) *Handler {
	if d.Store == nil || d.Lifecycle == nil || d.Discovery == nil {
		panic("ui.New: Store, Lifecycle and Discovery are required")
	}
	if d.AdminKey == "" {
		panic("ui.New: AdminKey must not be empty")
	}
	if d.SessionTTL < 0 || d.PollInterval < 0 || d.PlatformKeyGrace < 0 {
		panic("ui.New: negative duration")
	}
	h := &Handler{
		store:    d.Store,
		lm:       d.Lifecycle,
		disc:     d.Discovery,
		rollouts: d.Rollouts,
		adminKey: d.AdminKey,
		grace:    d.PlatformKeyGrace,
		logs:     d.Logs,
		log:      cmp.Or(d.Logger, slog.Default()),
		now:      d.Now,
		base:     d.Context,
	}
	if h.now == nil {
		h.now = time.Now
	}
	if h.base == nil {
		h.base = context.Background()
	}
	var macKey [32]byte
	_, _ = rand.Read(macKey[:])
	h.sessions = newSessions(macKey[:], cmp.Or(d.SessionTTL, DefaultSessionTTL), h.now)
	h.signins = policy.NewLimiter(h.now)
	h.feed = newFeed(h.base, d.Store, cmp.Or(d.PollInterval, DefaultPollInterval), h.log)
	h.pages = parsePages()
	sub, err := fs.Sub(staticFiles, "static")
	if err != nil {
		panic("ui.New: " + err.Error())
	}
	h.static = http.StripPrefix(Path+"/static/", http.FileServerFS(sub))
	h.mux = h.routes()
	return h
}

// routes is every route of the dashboard on one screen.
func (h *Handler) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+Path, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, Path+"/", http.StatusSeeOther)
	})
	mux.HandleFunc("GET "+Path+"/static/", h.serveStatic)
	mux.HandleFunc("GET "+Path+"/signin", h.signinPage)
	mux.HandleFunc("POST "+Path+"/signin", h.signin)
	mux.Handle("POST "+Path+"/signout", h.action(h.signout))
	mux.HandleFunc("GET "+Path+"/events", h.events)

	mux.Handle("GET "+Path+"/{$}", h.page(h.overview))
	mux.Handle("GET "+Path+"/engines", h.page(h.enginesPage))
	mux.Handle("GET "+Path+"/engines/{engine_id}", h.page(h.enginePage))
	mux.Handle("POST "+Path+"/engines/{engine_id}/{action}", h.action(h.engineAction))
	mux.Handle("GET "+Path+"/products", h.page(h.productsPage))
	mux.Handle("GET "+Path+"/products/{product_id}", h.page(h.productPage))
	mux.Handle("POST "+Path+"/products/{product_id}/policy", h.action(h.updatePolicy))
	mux.Handle("POST "+Path+"/products/{product_id}/rotate-platform-key", h.action(h.rotatePlatformKey))
	mux.Handle("POST "+Path+"/products/{product_id}/rollouts", h.action(h.createRollout))
	mux.Handle("POST "+Path+"/products/{product_id}/rollouts/{rollout_id}/{op}", h.action(h.rolloutAction))

	mux.HandleFunc(Path+"/", h.notFound)
	return mux
}

// ServeHTTP serves the dashboard with its security headers.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "+
		"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "same-origin")
	h.mux.ServeHTTP(w, r)
}

// serveStatic serves the embedded assets; they change only with the binary.
func (h *Handler) serveStatic(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "public, max-age=3600")
	h.static.ServeHTTP(w, r)
}

// pageFunc serves one page for a signed-in viewer. A returned error is
// answered as an error page.
type pageFunc func(w http.ResponseWriter, r *http.Request, v *viewer) error

// page adapts a GET page: without a session it redirects to the sign-in,
// which comes back here afterwards.
func (h *Handler) page(fn pageFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, err := h.viewerOf(r)
		if err != nil {
			h.fail(w, r, nil, err)
			return
		}
		if v == nil {
			http.Redirect(w, r, signinURL(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		if err := fn(w, r, v); err != nil {
			h.fail(w, r, v, err)
		}
	})
}

// action adapts a POST: it needs a session and the session's CSRF token,
// else it answers 403 and does nothing.
func (h *Handler) action(fn pageFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
		v, err := h.viewerOf(r)
		if err != nil {
			h.fail(w, r, nil, err)
			return
		}
		if v == nil {
			h.fail(w, r, nil, errForbidden("Your session has ended. Sign in again, then retry."))
			return
		}
		if err := r.ParseForm(); err != nil {
			h.fail(w, r, v, errStatus(http.StatusBadRequest, "The form could not be read."))
			return
		}
		if !v.sess.checkCSRF(r.PostForm.Get(csrfField)) {
			h.fail(w, r, v, errForbidden("This form is out of date or did not come from this dashboard. Reload the page and retry."))
			return
		}
		if err := fn(w, r, v); err != nil {
			h.fail(w, r, v, err)
		}
	})
}

// maxFormBytes bounds a posted form (a policy is the largest).
const maxFormBytes = 64 << 10

// statusError is an error page of the dashboard's own.
type statusError struct {
	status int
	msg    string
}

func (e *statusError) Error() string { return e.msg }

func errStatus(status int, msg string) error { return &statusError{status: status, msg: msg} }
func errForbidden(msg string) error          { return errStatus(http.StatusForbidden, msg) }

// errNotFound is what a page answers for anything the viewer may not see.
var errNotFound = errStatus(http.StatusNotFound, "There is nothing here, or nothing you may see.")

// errorView is the body of the error page.
type errorView struct {
	Status  int
	Code    string
	Message string
}

// fail answers err as an error page: a dashboard error with its status, an
// API error (*bap.Error) with the API's status, code and message, anything
// else logged and shown as an internal error.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, v *viewer, err error) {
	ev := errorView{}
	var se *statusError
	if errors.As(err, &se) {
		ev.Status, ev.Message = se.status, se.msg
	} else {
		e, status, internal := api.PublicError(err)
		if internal {
			if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
				return // the client left
			}
			h.log.Error("dashboard: internal error", "method", r.Method, "path", r.URL.Path, "err", err)
		}
		ev.Status, ev.Code, ev.Message = status, e.Code, e.Message
	}
	h.render(w, r, v, ev.Status, "error", http.StatusText(ev.Status), ev)
}

// notFound answers any path the dashboard does not serve.
func (h *Handler) notFound(w http.ResponseWriter, r *http.Request) {
	v, _ := h.viewerOf(r)
	h.fail(w, r, v, errNotFound)
}

// layout is what every page's frame shows.
type layout struct {
	Title  string
	Nav    string // the active section
	Viewer *viewerView
	CSRF   string
	Flash  string
	// Live names what the page refreshes on: "any" change, "engine:<id>",
	// or "" for no live updates.
	Live string
	Body any
}

// viewerView is who is signed in, as pages show it.
type viewerView struct {
	Name  string
	Admin bool
}

// render executes page into a buffer first, so a template error never
// leaves half a page; pages are never cached (one may hold a key shown
// once).
func (h *Handler) render(w http.ResponseWriter, r *http.Request, v *viewer, status int, page, title string, body any) {
	t, ok := h.pages[page]
	if !ok {
		panic("ui: no page template " + page)
	}
	data := layout{Title: title, Nav: page, Body: body}
	if v != nil {
		data.Viewer = &viewerView{Name: v.name(), Admin: v.admin}
		data.CSRF = v.sess.csrf
		if r.Header.Get(liveRefreshHeader) == "" {
			// A page's own background refresh must not eat the message
			// meant for the page an action leads to.
			data.Flash = v.sess.takeFlash()
		}
		data.Live = liveOf(page, body)
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout", data); err != nil {
		h.log.Error("dashboard: render", "page", page, "err", err)
		http.Error(w, "Internal server error.", http.StatusInternalServerError)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", "text/html; charset=utf-8")
	hd.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(buf.Bytes())
	}
}

// liveOf is what a page refreshes on.
func liveOf(page string, body any) string {
	switch page {
	case "overview", "engines", "products", "product":
		return "any"
	case "engine":
		if ev, ok := body.(engineView); ok {
			return "engine:" + ev.Engine.ID
		}
	}
	return ""
}

// redirect answers a successful POST with a 303 to a page, carrying a
// message to show there once.
func (h *Handler) redirect(w http.ResponseWriter, r *http.Request, v *viewer, to, flash string) {
	v.sess.setFlash(flash)
	http.Redirect(w, r, to, http.StatusSeeOther)
}

// liveRefreshHeader marks the requests with which ui.js refreshes a page.
const liveRefreshHeader = "X-Live-Refresh"

// states is every engine state, in the order pages list them.
var states = bap.States
