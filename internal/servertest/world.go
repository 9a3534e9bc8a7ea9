package servertest

import (
	"context"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/registrytest"
	"github.com/september/bap-engine/internal/replica"
	"github.com/september/bap-engine/internal/secret"
	"github.com/september/bap-engine/internal/testclock"
)

// Test defaults of the lifecycle Manager; options override them.
const (
	DefaultPorts       = 100
	DefaultBootTimeout = 10 * time.Second
	DefaultStopGrace   = time.Second
	DefaultImage       = "september-engine:test"
)

// World is one test's orchestrator below the HTTP layer.
type World struct {
	// Store is the caller's store, as given.
	Store registry.Store
	// Fake is the fake backend; nil when Backend replaced it.
	Fake *backendtest.Fake
	// Backend is the backend engines run on (Fake unless replaced), as the
	// test sees it: without the wrapper of WrapBackend.
	Backend backend.Backend
	// FernetKey is the key Sealer seals with.
	FernetKey string
	// Sealer seals the engines' keys, as the Manager does.
	Sealer *secret.Sealer
	// Config is what Manager was built with (before lifecycle's defaults),
	// for a second Manager standing for another process.
	Config lifecycle.Config
	// Manager is the lifecycle under test or serving the test.
	Manager *lifecycle.Manager
	// Clock is the test's clock (default: fixed at the world's creation).
	Clock *testclock.Clock
}

// Option tunes a World (and a Server).
type Option func(*settings)

type settings struct {
	ports       int
	bootTimeout time.Duration
	clock       *testclock.Clock
	backend     backend.Backend
	wrap        func(backend.Backend) backend.Backend
	registered  bool
	lifecycle   []func(*lifecycle.Config)
	// Server only.
	metrics    bool
	runLoops   bool
	noRollouts bool
	dashboard  func(*Server) http.Handler
	api        []func(*api.Deps)
}

// Ports sizes the engine port range (default DefaultPorts).
func Ports(n int) Option { return func(s *settings) { s.ports = n } }

// BootTimeout sets the Manager's boot timeout; 0 keeps DefaultBootTimeout.
func BootTimeout(d time.Duration) Option {
	return func(s *settings) {
		if d != 0 {
			s.bootTimeout = d
		}
	}
}

// Clock sets the world's clock.
func Clock(c *testclock.Clock) Option { return func(s *settings) { s.clock = c } }

// Backend runs engines on b instead of a fake backend.
func Backend(b backend.Backend) Option { return func(s *settings) { s.backend = b } }

// WrapBackend hands the Manager wrap(backend) instead of the backend, for a
// test that watches or alters the calls.
func WrapBackend(wrap func(backend.Backend) backend.Backend) Option {
	return func(s *settings) { s.wrap = wrap }
}

// Registered makes the Manager act as a replica registered on the store
// and heartbeating until the test ends (RegisteredReplica), instead of the
// solo replica, as one of several orchestrator processes would.
func Registered() Option { return func(s *settings) { s.registered = true } }

// Lifecycle adjusts the Manager's configuration after the defaults.
func Lifecycle(fn func(*lifecycle.Config)) Option {
	return func(s *settings) { s.lifecycle = append(s.lifecycle, fn) }
}

// New builds a World on store. The fake backend is closed and the port
// range given back when the test ends.
func New(t testing.TB, store registry.Store, opts ...Option) *World {
	t.Helper()
	return newWorld(t, store, apply(opts))
}

func apply(opts []Option) *settings {
	s := &settings{ports: DefaultPorts, bootTimeout: DefaultBootTimeout}
	for _, o := range opts {
		o(s)
	}
	return s
}

func newWorld(t testing.TB, store registry.Store, s *settings) *World {
	t.Helper()
	w := &World{Store: store, Backend: s.backend, Clock: s.clock}
	if w.Backend == nil {
		w.Fake = backendtest.NewFake()
		t.Cleanup(w.Fake.Close)
		w.Backend = w.Fake
	}
	if w.Clock == nil {
		w.Clock = testclock.Fixed(time.Now())
	}
	var err error
	w.FernetKey, err = secret.NewFernetKey()
	require.NoError(t, err)
	w.Sealer, err = secret.NewSealer(w.FernetKey)
	require.NoError(t, err)
	portMin, portMax := backendtest.PortRange(t, s.ports)
	w.Config = lifecycle.Config{
		PortMin:      portMin,
		PortMax:      portMax,
		BootTimeout:  s.bootTimeout,
		StopGrace:    DefaultStopGrace,
		DefaultImage: DefaultImage,
	}
	for _, fn := range s.lifecycle {
		fn(&w.Config)
	}
	if s.registered {
		w.Config.Replica = RegisteredReplica(t, store)
	}
	be := w.Backend
	if s.wrap != nil {
		be = s.wrap(be)
	}
	w.Manager = lifecycle.New(store, be, w.Sealer, w.Config)
	return w
}

// RegisteredReplica is a replica registered on store and heartbeating until
// the test ends: each Manager standing for an orchestrator process of its
// own needs one, so that the others see its claims as a live replica's.
func RegisteredReplica(t testing.TB, store registry.Store) *replica.Replica {
	t.Helper()
	r := replica.New(store, replica.Config{TTL: 10 * time.Second, Host: "servertest-" + uuid.NewString()[:8],
		Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, r.Start(context.Background()))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		r.Deregister(context.Background())
	})
	return r
}

// Product registers a product (registrytest.NewProduct, adjusted by mods)
// with a real platform key and returns it with the key.
func (w *World) Product(t testing.TB, mods ...func(*bap.Product)) (bap.Product, string) {
	t.Helper()
	key, err := secret.NewPlatformKey()
	require.NoError(t, err)
	mods = append([]func(*bap.Product){func(p *bap.Product) { p.APIKeyHash = secret.Hash(key) }}, mods...)
	return registrytest.NewProduct(t, w.Store, mods...), key
}
