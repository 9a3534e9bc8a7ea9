package docker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"time"

	"github.com/moby/moby/client"

	"github.com/september/bap-engine/internal/backend"
)

// Defaults applied by New to a zero Config field.
const (
	DefaultNetwork     = "engine_net"              // ORCH_ENGINE_NETWORK's default
	DefaultDeployment  = "default"                 // ORCH_DEPLOYMENT_ID's default
	DefaultImage       = "september-engine:latest" // ORCH_ENGINE_IMAGE's default
	DefaultEngineHost  = "127.0.0.1"               // ORCH_ENGINE_HOST's default
	DefaultHelperImage = "bap-engine:latest"       // ORCH_HELPER_IMAGE's default
	DefaultCallTimeout = 10 * time.Second          // bound of one daemon call
	DefaultPullTimeout = 5 * time.Minute           // bound of pulling a missing image
)

// URL modes (ORCH_ENGINE_URL_MODE).
const (
	URLModeHost    = "host"    // http://<EngineHost>:<published port>
	URLModeNetwork = "network" // http://engine-<engine_id>:8000 on the engine network
)

// What every engine container looks like from the inside (SPEC §3, §10).
const (
	enginePort = 8000
	dataDir    = "/data"
	catalogDir = "/catalog"
	dbPath     = dataDir + "/brain.sqlite"
	publishIP  = "127.0.0.1"
	namePrefix = "engine-"
)

// reservedEnv are the variables the backend sets itself; a passthrough entry
// must never override them.
var reservedEnv = []string{"ENGINE_KEY_HASH", "SQLITE_DB_PATH", "CATALOG_DIR"}

// validEngineID keeps engine ids inside container, volume and label names.
var validEngineID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// Config configures a docker Backend. Zero fields take the defaults above.
type Config struct {
	// Network is the Docker network engines join (ORCH_ENGINE_NETWORK); New
	// creates it when missing.
	Network string
	// CatalogPath is the host directory mounted read-only at /catalog
	// (ORCH_CATALOG_MOUNT_PATH); empty mounts nothing.
	CatalogPath string
	// Passthrough names the orchestrator variables handed to engines
	// (ORCH_ENGINE_ENV_PASSTHROUGH); unset or empty ones are left out.
	Passthrough []string
	// Getenv reads the passthrough values; nil means os.Getenv.
	Getenv func(string) string
	// Deployment is the bap-engine.deployment label value (ORCH_DEPLOYMENT_ID).
	Deployment string
	// URLMode is URLModeHost or URLModeNetwork (ORCH_ENGINE_URL_MODE).
	URLMode string
	// EngineHost is the host part of engine URLs in host mode (ORCH_ENGINE_HOST).
	EngineHost string
	// CallTimeout bounds every daemon call (Stop adds the grace period).
	CallTimeout time.Duration
	// PullTimeout bounds pulling a missing image.
	PullTimeout time.Duration
	// DefaultImage is used when a Spec names no image (ORCH_ENGINE_IMAGE).
	DefaultImage string
	// HelperImage is the orchestrator's own image (ORCH_HELPER_IMAGE): its
	// /bap-engine binary copies brain snapshots in a short-lived container.
	HelperImage string
	// Host is the daemon address (DOCKER_HOST); empty uses the client's
	// environment (DOCKER_HOST, DOCKER_TLS_VERIFY, ...) or the local socket.
	Host string
	// Logger receives event-stream reconnects; nil discards.
	Logger *slog.Logger
}

// withDefaults fills zero fields and rejects impossible values.
func (c Config) withDefaults() (Config, error) {
	c.Network = cmp.Or(c.Network, DefaultNetwork)
	c.Deployment = cmp.Or(c.Deployment, DefaultDeployment)
	c.URLMode = cmp.Or(c.URLMode, URLModeHost)
	c.EngineHost = cmp.Or(c.EngineHost, DefaultEngineHost)
	c.CallTimeout = cmp.Or(c.CallTimeout, DefaultCallTimeout)
	c.PullTimeout = cmp.Or(c.PullTimeout, DefaultPullTimeout)
	c.DefaultImage = cmp.Or(c.DefaultImage, DefaultImage)
	c.HelperImage = cmp.Or(c.HelperImage, DefaultHelperImage)
	if c.Getenv == nil {
		c.Getenv = os.Getenv
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.URLMode != URLModeHost && c.URLMode != URLModeNetwork:
		return c, fmt.Errorf("docker backend: URL mode %q: want %q or %q", c.URLMode, URLModeHost, URLModeNetwork)
	case c.CallTimeout < 0 || c.PullTimeout < 0:
		return c, errors.New("docker backend: negative timeout")
	}
	return c, nil
}

// Backend runs each engine as a labelled Docker container with a named
// volume. It implements backend.Backend.
type Backend struct {
	cfg Config
	cli *client.Client
	own *ownStops
}

var _ backend.Backend = (*Backend)(nil)

// New connects to the Docker daemon, negotiates the API version and creates
// the engine network if it is missing. An unreachable daemon is
// backend.ErrUnavailable.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	opts := []client.Opt{client.FromEnv}
	if cfg.Host != "" {
		opts = append(opts, client.WithHost(cfg.Host))
	}
	cli, err := client.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	b := &Backend{cfg: cfg, cli: cli, own: newOwnStops()}
	pctx, cancel := b.call(ctx)
	_, err = cli.Ping(pctx, client.PingOptions{NegotiateAPIVersion: true})
	cancel()
	if err != nil {
		_ = cli.Close()
		return nil, wrap(err, "connect to docker daemon at %s", cli.DaemonHost())
	}
	if err := b.ensureNetwork(ctx); err != nil {
		_ = cli.Close()
		return nil, err
	}
	return b, nil
}

// Close releases the client's idle connections.
func (b *Backend) Close() error { return b.cli.Close() }

// APIVersion is the Docker API version negotiated with the daemon.
func (b *Backend) APIVersion() string { return b.cli.ClientVersion() }

// Name reports "docker".
func (b *Backend) Name() string { return "docker" }

// ContainerName is the container name of an engine: engine-<engine_id>.
func ContainerName(engineID string) string { return namePrefix + engineID }

// VolumeName is the data volume of an engine (backend.DataName).
func VolumeName(engineID string) string { return backend.DataName(engineID) }

// URL is http://<EngineHost>:<port> in host mode and
// http://engine-<engine_id>:8000 in network mode.
func (b *Backend) URL(engineID string, port int) string {
	if b.cfg.URLMode == URLModeNetwork {
		return fmt.Sprintf("http://%s:%d", ContainerName(engineID), enginePort)
	}
	return fmt.Sprintf("http://%s:%d", b.cfg.EngineHost, port)
}

// call gives one daemon call its own deadline.
func (b *Backend) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, b.cfg.CallTimeout)
}
