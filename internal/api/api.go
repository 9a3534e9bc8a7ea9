package api

import (
	"cmp"
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/september/bap-engine/internal/discovery"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/metrics"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/rollout"
)

// UIPath is where Deps.UI is served.
const UIPath = "/ui"

// DefaultMaxBodyBytes bounds request bodies when Deps.MaxBodyBytes is 0.
const DefaultMaxBodyBytes int64 = 1 << 20

// Deps is what the API needs. Store, Lifecycle, Discovery and AdminKey are
// required.
type Deps struct {
	Store     registry.Store
	Lifecycle *lifecycle.Manager
	Discovery *discovery.Service
	// Rollouts serves /products/{product}/rollouts; nil answers them 404.
	Rollouts *rollout.Service
	// Metrics records request and admit metrics and serves
	// /metrics/prometheus; nil disables both (that route answers 404).
	Metrics *metrics.Metrics
	// AdminKey is ORCH_ADMIN_KEY. It must not be empty.
	AdminKey string
	// PlatformKeyGrace is how long a rotated-out platform key keeps
	// working (ORCH_PLATFORM_KEY_GRACE_S); 0 ends it at once.
	PlatformKeyGrace time.Duration
	// Logger receives the access log and internal errors (default
	// slog.Default()).
	Logger *slog.Logger
	// MaxBodyBytes bounds request bodies (default DefaultMaxBodyBytes);
	// larger bodies are 413 PAYLOAD_TOO_LARGE.
	MaxBodyBytes int64
	// Now is the clock for key grace and /metrics windows (default
	// time.Now).
	Now func() time.Time
	// UI, when set, serves /ui and everything under it (the dashboard)
	// behind the same request id, access log, metrics and panic recovery
	// as the API; its answers are its own (HTML), not the error envelope.
	UI http.Handler
	// WriteTimeout is how long a client has to take an answer once it
	// begins (and each piece of a Stream); a client that stops reading is
	// cut off then, so it holds no handler. 0 leaves answers unbounded.
	WriteTimeout time.Duration
	// MetricsToken, when set, is a bearer token GET /metrics/prometheus
	// accepts besides the admin key (ORCH_METRICS_TOKEN).
	MetricsToken string
	// Build names this build for GET /version.
	Build BuildInfo
	// Ready, when set, is what GET /readyz checks besides the database:
	// that the engine backend is reachable.
	Ready func(ctx context.Context) error
	// Context, when set, ends the streamed answers (engine logs followed)
	// when it ends, so a graceful shutdown is not held by them.
	Context context.Context
}

// server holds the dependencies the handlers share.
type server struct {
	store     registry.Store
	lifecycle *lifecycle.Manager
	discovery *discovery.Service
	rollouts  *rollout.Service
	metrics   *metrics.Metrics
	promHTTP  http.Handler // metrics.Handler(), built once
	adminKey  string
	grace     time.Duration
	log       *slog.Logger
	maxBody   int64
	now       func() time.Time
	// writeTimeout is Deps.WriteTimeout.
	writeTimeout time.Duration
	// ctx is Deps.Context (nil: streams end with their client only).
	ctx          context.Context
	build        BuildInfo
	ready        func(ctx context.Context) error
	metricsToken string
}

// New returns the HTTP handler of the whole API. It panics when a required
// dependency is missing: that is a wiring mistake, not a runtime condition.
func New(d Deps) http.Handler {
	if d.Store == nil || d.Lifecycle == nil || d.Discovery == nil {
		panic("api.New: Store, Lifecycle and Discovery are required")
	}
	if d.AdminKey == "" {
		panic("api.New: AdminKey must not be empty")
	}
	if d.PlatformKeyGrace < 0 || d.WriteTimeout < 0 {
		panic("api.New: negative PlatformKeyGrace or WriteTimeout")
	}
	s := &server{
		store:     d.Store,
		lifecycle: d.Lifecycle,
		discovery: d.Discovery,
		rollouts:  d.Rollouts,
		metrics:   d.Metrics,
		adminKey:  d.AdminKey,
		grace:     d.PlatformKeyGrace,
		log:       cmp.Or(d.Logger, slog.Default()),
		maxBody:   cmp.Or(d.MaxBodyBytes, DefaultMaxBodyBytes),
		now:       d.Now,

		writeTimeout: d.WriteTimeout,
		ctx:          d.Context,
		build:        d.Build,
		ready:        d.Ready,
		metricsToken: d.MetricsToken,
	}
	if s.metrics != nil {
		s.promHTTP = s.metrics.Handler()
	}
	if s.now == nil {
		s.now = time.Now
	}
	mux := http.NewServeMux()
	for _, rt := range s.routes() {
		mux.Handle(rt.pattern(), s.handle(rt))
	}
	if d.UI != nil {
		ui := s.mount(d.UI)
		mux.Handle(UIPath, ui)
		mux.Handle(UIPath+"/", ui)
	}
	return s.middleware(mux)
}
