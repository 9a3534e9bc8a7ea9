package servertest

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/client"
	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/discovery"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/metrics"
	"github.com/september/bap-engine/internal/policy"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/requestid"
	"github.com/september/bap-engine/internal/rollout"
	"github.com/september/bap-engine/internal/secret"
	"github.com/september/bap-engine/internal/testlog"
)

// Server is a World served whole over HTTP: real discovery and rollouts,
// the API handler (with the dashboard, if given) on httptest, and a client
// with the admin key. Everything logs, at debug level, to Logs; a key the
// server was told of (Remember) or shaped like a platform or engine key
// found there fails the test when it ends.
type Server struct {
	*World
	// Discovery admits on the world's clock.
	Discovery *discovery.Service
	// Rollouts is nil with NoRollouts.
	Rollouts *rollout.Service
	// Metrics is nil without WithMetrics.
	Metrics *metrics.Metrics
	// Logs is everything logged, as JSON lines.
	Logs *testlog.Buffer
	// Log writes to Logs with the request id; give it to what a Dashboard
	// builds.
	Log *slog.Logger
	// Context ends when the test does, before the server closes (as at a
	// shutdown), for what streams: give it to the dashboard.
	Context context.Context
	// AdminKey is the server's ORCH_ADMIN_KEY.
	AdminKey string
	// HTTP serves the API handler.
	HTTP *httptest.Server
	// Admin is a client of HTTP with the admin key.
	Admin *client.Client

	t         testing.TB
	secretsMu sync.Mutex
	secrets   []string
}

// WithMetrics records metrics (Server.Metrics, the Manager's observer and
// the API's /metrics/prometheus).
func WithMetrics() Option { return func(s *settings) { s.metrics = true } }

// RunLoops runs the discovery and rollout loops until the test ends.
// Without it, nothing runs in the background: a rollout stays as the test
// leaves it.
func RunLoops() Option { return func(s *settings) { s.runLoops = true } }

// NoRollouts serves no rollouts (api.Deps.Rollouts nil).
func NoRollouts() Option { return func(s *settings) { s.noRollouts = true } }

// Dashboard mounts the handler fn builds at api.UIPath. fn is called once
// the server's services exist, before it serves.
func Dashboard(fn func(*Server) http.Handler) Option {
	return func(s *settings) { s.dashboard = fn }
}

// API adjusts the API handler's dependencies before it is built.
func API(fn func(*api.Deps)) Option { return func(s *settings) { s.api = append(s.api, fn) } }

// Serve builds a World on store and serves it. The server closes, and the
// loops stop, when the test ends.
func Serve(t testing.TB, store registry.Store, opts ...Option) *Server {
	t.Helper()
	set := apply(opts)
	srv := &Server{t: t, Logs: &testlog.Buffer{}}
	srv.Log = slog.New(requestid.Handler(slog.NewJSONHandler(srv.Logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if set.metrics {
		srv.Metrics = newMetrics(store, srv.Log)
	}
	set.lifecycle = append([]func(*lifecycle.Config){func(c *lifecycle.Config) {
		c.Logger = srv.Log
		if srv.Metrics != nil {
			c.Observer = srv.Metrics
		}
	}}, set.lifecycle...)
	srv.World = newWorld(t, store, set)
	clk := srv.Clock

	srv.Discovery = discovery.New(store, srv.Manager, policy.NewLimiter(clk.Now), discovery.Config{Now: clk.Now, Logger: srv.Log})
	if !set.noRollouts {
		srv.Rollouts = rollout.New(rollout.Config{Store: store, Lifecycle: srv.Manager, Replica: srv.Manager.Replica(),
			Every: 20 * time.Millisecond, ProductChanged: srv.Discovery.ForgetProduct, Logger: srv.Log})
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv.Context = ctx
	if set.runLoops {
		srv.runLoops(t, ctx, cancel)
	}

	srv.AdminKey = "admin-" + srv.FernetKey[:16]
	deps := api.Deps{
		Store:     store,
		Lifecycle: srv.Manager,
		Discovery: srv.Discovery,
		Rollouts:  srv.Rollouts,
		Metrics:   srv.Metrics,
		AdminKey:  srv.AdminKey,
		Logger:    srv.Log,
		Now:       clk.Now,
	}
	if set.dashboard != nil {
		deps.UI = set.dashboard(srv)
	}
	for _, fn := range set.api {
		fn(&deps)
	}
	srv.HTTP = httptest.NewServer(api.New(deps))
	t.Cleanup(srv.HTTP.Close)
	// Streams end with Context before the server closes.
	t.Cleanup(cancel)
	srv.Admin = client.New(srv.HTTP.URL, client.WithAdminKey(srv.AdminKey), client.WithHTTPClient(srv.HTTP.Client()))
	srv.Remember(srv.AdminKey)
	t.Cleanup(func() { srv.RequireNoSecret(srv.Logs.String(), "the logs") })
	return srv
}

func (s *Server) runLoops(t testing.TB, ctx context.Context, cancel context.CancelFunc) {
	loops := []func(context.Context) error{s.Discovery.Run}
	if s.Rollouts != nil {
		loops = append(loops, s.Rollouts.Run)
	}
	done := make(chan struct{}, len(loops))
	for _, run := range loops {
		go func() {
			defer func() { done <- struct{}{} }()
			_ = run(ctx)
		}()
	}
	t.Cleanup(func() {
		cancel()
		for range loops {
			<-done
		}
	})
}

// newMetrics is the metrics the orchestrator keeps, counting store's
// engines.
func newMetrics(store registry.Store, log *slog.Logger) *metrics.Metrics {
	return metrics.New(metrics.Config{
		Engines: registry.EngineCounts(store),
		Slug: func(ctx context.Context, id string) (string, error) {
			p, err := store.GetProduct(ctx, id)
			return p.Slug, err
		},
		States: registry.StateNames(),
		Logger: log,
	})
}

// Remember adds keys to those that must never be logged or shown.
func (s *Server) Remember(keys ...string) {
	s.secretsMu.Lock()
	s.secrets = append(s.secrets, keys...)
	s.secretsMu.Unlock()
}

// RequireNoSecret fails the test when text holds a remembered key, or
// anything shaped like a platform or engine key; where names the text.
// The message never repeats the key.
func (s *Server) RequireNoSecret(text, where string) {
	s.t.Helper()
	s.secretsMu.Lock()
	defer s.secretsMu.Unlock()
	for _, k := range s.secrets {
		if k != "" && strings.Contains(text, k) {
			s.t.Fatalf("a key appeared in %s", where)
		}
	}
	for _, prefix := range []string{secret.PlatformKeyPrefix, secret.EngineKeyPrefix} {
		if strings.Contains(text, prefix) {
			s.t.Fatalf("a %s key appeared in %s", prefix, where)
		}
	}
}

// Product registers a product with a real platform key (World.Product)
// and remembers the key.
func (s *Server) Product(t testing.TB, mods ...func(*bap.Product)) (bap.Product, string) {
	t.Helper()
	p, key := s.World.Product(t, mods...)
	s.Remember(key)
	return p, key
}

// Platform is a client with a platform key.
func (s *Server) Platform(key string) *client.Client {
	return client.New(s.HTTP.URL, client.WithPlatformKey(key), client.WithHTTPClient(s.HTTP.Client()))
}

// Provisioned provisions userID's engine of p through the Manager and
// remembers its key.
func (s *Server) Provisioned(t testing.TB, p bap.Product, userID string) lifecycle.Result {
	t.Helper()
	res, err := s.Manager.Provision(t.Context(), p, bap.UserID(userID), "", p.Slug)
	require.NoError(t, err)
	s.Remember(res.APIKey)
	return res
}
