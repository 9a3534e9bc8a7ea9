package docker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/september/bap-engine/internal/backend"
)

// Defaults applied by New to a zero Config field.
const (
	DefaultNetwork     = "engine_net"              // ORCH_ENGINE_NETWORK's default
	DefaultDeployment  = "default"                 // ORCH_DEPLOYMENT_ID's default
	DefaultImage       = "september-engine:latest" // ORCH_ENGINE_IMAGE's default
	DefaultEngineHost  = "127.0.0.1"               // ORCH_ENGINE_HOST's default
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
	enginePort  = 8000
	dataDir     = "/data"
	catalogDir  = "/catalog"
	dbPath      = dataDir + "/brain.sqlite"
	publishIP   = "127.0.0.1"
	namePrefix  = "engine-"
	volumePref  = "engine-data-"
	volumeIDLen = 12
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

// VolumeName is the data volume of an engine: engine-data-<first 12
// characters of engine_id>, the original's naming, so existing volumes are
// found again.
func VolumeName(engineID string) string {
	id := engineID
	if len(id) > volumeIDLen {
		id = id[:volumeIDLen]
	}
	return volumePref + id
}

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

// ensureNetwork creates the engine network unless it exists.
//
// Daemons before API 1.44 accept two networks of one name, after which
// attaching by name fails as ambiguous for good. So a creator that then sees
// another network of the name removes its own: the last to finish always
// sees the earlier ones, so two never remain. Should racers remove each
// other's at once, the next round (or the next Create, which calls this
// again when the network is missing) creates it anew.
func (b *Backend) ensureNetwork(ctx context.Context) error {
	// Within one process, creators take turns, so no transient duplicate
	// makes a concurrent create or start fail as ambiguous.
	unlock := lockNetwork(b.cli.DaemonHost() + " " + b.cfg.Network)
	defer unlock()
	for round := range networkRounds {
		if round > 0 {
			if err := sleepCtx(ctx, time.Duration(10+mrand.IntN(90))*time.Millisecond); err != nil {
				return fmt.Errorf("create network %s: %w", b.cfg.Network, err)
			}
		}
		exists, err := b.createNetwork(ctx)
		if err != nil || exists {
			return err
		}
	}
	return fmt.Errorf("create network %s: %w: it keeps being created and removed concurrently", b.cfg.Network, backend.ErrConflict)
}

// networkRounds bounds ensureNetwork's create/check rounds.
const networkRounds = 4

// networkLocks serializes network creation per daemon and name in this
// process.
var networkLocks sync.Map // string → *sync.Mutex

func lockNetwork(key string) (unlock func()) {
	v, _ := networkLocks.LoadOrStore(key, &sync.Mutex{})
	mu := v.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// createNetwork is one round of ensureNetwork: true when the network exists
// (found, or made and unique).
func (b *Backend) createNetwork(ctx context.Context) (bool, error) {
	cctx, cancel := b.call(ctx)
	defer cancel()
	_, err := b.cli.NetworkInspect(cctx, b.cfg.Network, client.NetworkInspectOptions{})
	switch {
	case err == nil:
		return true, nil
	case !errors.Is(classify(err), backend.ErrNotFound):
		return false, wrap(err, "inspect network %s", b.cfg.Network)
	}
	res, err := b.cli.NetworkCreate(cctx, b.cfg.Network, client.NetworkCreateOptions{
		Driver: "bridge",
		Labels: map[string]string{backend.LabelManaged: "true"},
	})
	switch {
	case errors.Is(classify(err), backend.ErrConflict):
		return true, nil // a daemon that refuses duplicates: someone else made it
	case err != nil:
		return false, wrap(err, "create network %s", b.cfg.Network)
	}
	list, err := b.cli.NetworkList(cctx, client.NetworkListOptions{Filters: make(client.Filters).Add("name", b.cfg.Network)})
	if err != nil {
		return false, wrap(err, "list networks named %s", b.cfg.Network)
	}
	for _, n := range list.Items {
		if n.Name == b.cfg.Network && n.ID != res.ID { // the name filter matches substrings
			_, err := b.cli.NetworkRemove(cctx, res.ID, client.NetworkRemoveOptions{})
			if err != nil && !errors.Is(classify(err), backend.ErrNotFound) {
				return false, wrap(err, "remove duplicate network %s", b.cfg.Network)
			}
			return false, nil
		}
	}
	return true, nil
}

// labels are put on an engine's container and volume.
func (b *Backend) labels(spec backend.Spec) map[string]string {
	l := map[string]string{
		backend.LabelManaged:    "true",
		backend.LabelEngineID:   spec.EngineID,
		backend.LabelProductID:  spec.ProductID,
		backend.LabelDeployment: b.cfg.Deployment,
	}
	if spec.Replica != "" {
		l[backend.LabelReplica] = spec.Replica
	}
	return l
}

// env is the engine's whole environment: the contract's variables and the
// passthrough list, never anything else of the orchestrator's.
func (b *Backend) env(spec backend.Spec) []string {
	env := []string{
		"ENGINE_KEY_HASH=" + spec.KeyHash,
		"SQLITE_DB_PATH=" + dbPath,
		"CATALOG_DIR=" + catalogDir,
	}
	for _, name := range b.cfg.Passthrough {
		name = strings.TrimSpace(name)
		if name == "" || strings.Contains(name, "=") || slices.Contains(reservedEnv, name) {
			continue
		}
		if v := b.cfg.Getenv(name); v != "" {
			env = append(env, name+"="+v)
		}
	}
	return env
}

// portKey is the container port every engine listens on.
var portKey = network.MustParsePort(strconv.Itoa(enginePort) + "/tcp")

// resources turns the spec's ceilings into Docker's units (0: no ceiling).
func resources(spec backend.Spec) container.Resources {
	return container.Resources{
		Memory:   int64(spec.MemoryMB) * 1024 * 1024,
		NanoCPUs: int64(math.Round(spec.CPUs * 1e9)),
	}
}

func validateSpec(spec backend.Spec) error {
	switch {
	case !validEngineID.MatchString(spec.EngineID):
		return fmt.Errorf("docker backend: engine id %q is not a valid container name part", spec.EngineID)
	case spec.Port < 1 || spec.Port > 65535:
		return fmt.Errorf("docker backend: engine %s: port %d out of range", spec.EngineID, spec.Port)
	case spec.KeyHash == "":
		return fmt.Errorf("docker backend: engine %s: empty key hash", spec.EngineID)
	case spec.MemoryMB < 0 || spec.CPUs < 0 || math.IsNaN(spec.CPUs) || math.IsInf(spec.CPUs, 0):
		return fmt.Errorf("docker backend: engine %s: negative resource ceiling", spec.EngineID)
	}
	return nil
}

// Create makes the engine's volume and container without starting it. An
// existing container of this deployment with the same engine, image, key
// hash, port and ceilings is adopted; a different one is removed and
// recreated on the same volume. A container of that name that this
// deployment does not manage is never touched (ErrConflict).
func (b *Backend) Create(ctx context.Context, spec backend.Spec) (backend.Instance, error) {
	if err := validateSpec(spec); err != nil {
		return backend.Instance{}, err
	}
	image := cmp.Or(spec.Image, b.cfg.DefaultImage)
	if err := b.ensureImage(ctx, image); err != nil {
		return backend.Instance{}, err
	}
	madeVolume, err := b.ensureVolume(ctx, spec)
	if err != nil {
		return backend.Instance{}, err
	}
	name := ContainerName(spec.EngineID)
	if err := b.createOrAdopt(ctx, spec, image); err != nil {
		if madeVolume {
			// Leave nothing half-made; a volume that existed before holds
			// data and stays.
			rctx, cancel := b.call(context.WithoutCancel(ctx))
			_, _ = b.cli.VolumeRemove(rctx, VolumeName(spec.EngineID), client.VolumeRemoveOptions{})
			cancel()
		}
		return backend.Instance{}, err
	}
	inst, err := b.Inspect(ctx, spec.EngineID)
	if err != nil {
		return backend.Instance{}, fmt.Errorf("inspect created container %s: %w", name, err)
	}
	return inst, nil
}

// ensureImage makes sure image is present, pulling it when missing.
func (b *Backend) ensureImage(ctx context.Context, image string) error {
	ictx, cancel := b.call(ctx)
	_, err := b.cli.ImageInspect(ictx, image)
	cancel()
	if err == nil {
		return nil
	}
	if !errors.Is(classify(err), backend.ErrNotFound) {
		return wrap(err, "inspect image %s", image)
	}
	pctx, cancel := context.WithTimeout(ctx, b.cfg.PullTimeout)
	defer cancel()
	resp, err := b.cli.ImagePull(pctx, image, client.ImagePullOptions{})
	if err == nil {
		err = resp.Wait(pctx)
		_ = resp.Close()
	}
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("pull image %s: %w", image, ctx.Err())
	case client.IsErrConnectionFailed(err):
		return wrap(err, "pull image %s", image)
	}
	return fmt.Errorf("image %s is not present and cannot be pulled: %w: %w", image, backend.ErrImageNotFound, err)
}

// ensureVolume creates the engine's data volume unless it exists and
// reports whether it made it. A volume labelled for another engine (two ids
// sharing the 12-character prefix) is a conflict: one engine must never see
// another's brain.
func (b *Backend) ensureVolume(ctx context.Context, spec backend.Spec) (made bool, err error) {
	name := VolumeName(spec.EngineID)
	cctx, cancel := b.call(ctx)
	defer cancel()
	existing, err := b.cli.VolumeInspect(cctx, name, client.VolumeInspectOptions{})
	switch {
	case err == nil:
		if owner := existing.Volume.Labels[backend.LabelEngineID]; owner != "" && owner != spec.EngineID {
			return false, fmt.Errorf("volume %s for engine %s: %w: it belongs to engine %s", name, spec.EngineID, backend.ErrConflict, owner)
		}
		return false, nil
	case !errors.Is(classify(err), backend.ErrNotFound):
		return false, wrap(err, "inspect volume %s", name)
	}
	res, err := b.cli.VolumeCreate(cctx, client.VolumeCreateOptions{Name: name, Labels: b.labels(spec)})
	if err != nil {
		return false, wrap(err, "create volume %s", name)
	}
	// Created concurrently by another creator of a colliding engine?
	if owner := res.Volume.Labels[backend.LabelEngineID]; owner != "" && owner != spec.EngineID {
		return false, fmt.Errorf("volume %s for engine %s: %w: it belongs to engine %s", name, spec.EngineID, backend.ErrConflict, owner)
	}
	return true, nil
}

// createContainer issues one ContainerCreate for spec.
func (b *Backend) createContainer(ctx context.Context, spec backend.Spec, image string) error {
	name := ContainerName(spec.EngineID)
	mounts := []mount.Mount{{Type: mount.TypeVolume, Source: VolumeName(spec.EngineID), Target: dataDir}}
	if b.cfg.CatalogPath != "" {
		mounts = append(mounts, mount.Mount{Type: mount.TypeBind, Source: b.cfg.CatalogPath, Target: catalogDir, ReadOnly: true})
	}
	cctx, cancel := b.call(ctx)
	defer cancel()
	_, err := b.cli.ContainerCreate(cctx, client.ContainerCreateOptions{
		Name:  name,
		Image: image,
		Config: &container.Config{
			Env:          b.env(spec),
			Labels:       b.labels(spec),
			ExposedPorts: network.PortSet{portKey: {}},
		},
		HostConfig: &container.HostConfig{
			NetworkMode:   container.NetworkMode(b.cfg.Network),
			RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyUnlessStopped},
			PortBindings: network.PortMap{portKey: {{
				HostIP:   netip.MustParseAddr(publishIP),
				HostPort: strconv.Itoa(spec.Port),
			}}},
			Mounts:    mounts,
			Resources: resources(spec),
		},
		NetworkingConfig: &network.NetworkingConfig{
			EndpointsConfig: map[string]*network.EndpointSettings{b.cfg.Network: {}},
		},
	})
	return wrap(err, "create container %s", name)
}

// createOrAdopt creates the container, or settles a name conflict: adopt
// the existing one if it is what spec asks for, else remove and create
// again. Docker reserves a name before the container can be inspected, so a
// conflict followed by "not found" means a concurrent create: retry, with
// backoff, for up to CallTimeout.
func (b *Backend) createOrAdopt(ctx context.Context, spec backend.Spec, image string) error {
	name := ContainerName(spec.EngineID)
	deadline := time.Now().Add(b.cfg.CallTimeout)
	var err error
	for delay := time.Duration(0); ; delay = min(max(2*delay, 10*time.Millisecond), 200*time.Millisecond) {
		if delay > 0 {
			if time.Now().Add(delay).After(deadline) {
				return err
			}
			if werr := sleepCtx(ctx, delay); werr != nil {
				return fmt.Errorf("create container %s: %w", name, werr)
			}
		}
		err = b.createContainer(ctx, spec, image)
		if errors.Is(err, backend.ErrNotFound) {
			// The network or the image vanished since they were checked:
			// put them back.
			if err := b.ensureNetwork(ctx); err != nil {
				return err
			}
			if err := b.ensureImage(ctx, image); err != nil {
				return err
			}
			continue
		}
		if !errors.Is(err, backend.ErrConflict) {
			return err
		}
		cctx, cancel := b.call(ctx)
		res, ierr := b.cli.ContainerInspect(cctx, name, client.ContainerInspectOptions{})
		cancel()
		switch {
		case errors.Is(classify(ierr), backend.ErrNotFound):
			continue // being created or removed right now
		case ierr != nil:
			return wrap(ierr, "inspect existing container %s", name)
		}
		existing := res.Container
		var labels map[string]string
		if existing.Config != nil {
			labels = existing.Config.Labels
		}
		if labels[backend.LabelManaged] != "true" || labels[backend.LabelDeployment] != b.cfg.Deployment ||
			labels[backend.LabelEngineID] != spec.EngineID {
			return fmt.Errorf("create container %s: %w: a container of that name exists and is not managed by deployment %q",
				name, backend.ErrConflict, b.cfg.Deployment)
		}
		if b.matches(existing, spec, image) {
			return nil
		}
		if err := b.Remove(ctx, spec.EngineID); err != nil {
			return fmt.Errorf("replace container %s: %w", name, err)
		}
	}
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// matches reports whether an existing container is what Create would make
// for spec.
func (b *Backend) matches(c container.InspectResponse, spec backend.Spec, image string) bool {
	if c.Config == nil || c.HostConfig == nil {
		return false
	}
	for k, v := range b.labels(spec) {
		if k != backend.LabelReplica && c.Config.Labels[k] != v {
			return false
		}
	}
	if c.Config.Image != image {
		return false
	}
	for _, kv := range b.env(spec) {
		if !slices.Contains(c.Config.Env, kv) {
			return false
		}
	}
	binds := c.HostConfig.PortBindings[portKey]
	if len(binds) != 1 || binds[0].HostIP.String() != publishIP || binds[0].HostPort != strconv.Itoa(spec.Port) {
		return false
	}
	want := resources(spec)
	return c.HostConfig.Memory == want.Memory && c.HostConfig.NanoCPUs == want.NanoCPUs
}

// Start starts the engine's container; running is success, paused is
// unpaused. ErrNotFound when there is no container (the caller recreates).
func (b *Backend) Start(ctx context.Context, engineID string) error {
	name := ContainerName(engineID)
	b.own.started(engineID)
	cctx, cancel := b.call(ctx)
	_, err := b.cli.ContainerStart(cctx, name, client.ContainerStartOptions{})
	cancel()
	if err == nil {
		return nil
	}
	werr := wrap(err, "start container %s", name)
	if class := classify(err); class == backend.ErrNotFound || class == backend.ErrUnavailable {
		return werr
	}
	// A paused container refuses to start although it is up: resume it.
	cctx, cancel = b.call(ctx)
	res, ierr := b.cli.ContainerInspect(cctx, name, client.ContainerInspectOptions{})
	cancel()
	if ierr == nil && res.Container.State != nil && res.Container.State.Paused {
		return b.Unpause(ctx, engineID)
	}
	return werr
}

// Stop asks the engine to stop (SIGTERM), and Docker kills it after grace.
// A stopped or missing container is success; the volume is kept.
func (b *Backend) Stop(ctx context.Context, engineID string, grace time.Duration) error {
	name := ContainerName(engineID)
	done := b.own.begin(engineID)
	defer done()
	secs := max(0, int(math.Ceil(grace.Seconds())))
	cctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+b.cfg.CallTimeout)
	defer cancel()
	_, err := b.cli.ContainerStop(cctx, name, client.ContainerStopOptions{Timeout: &secs})
	if errors.Is(classify(err), backend.ErrNotFound) {
		return nil
	}
	return wrap(err, "stop container %s", name)
}

// Pause freezes the engine's container; paused is success. ErrConflict when
// it is not running, ErrNotFound when it is gone.
func (b *Backend) Pause(ctx context.Context, engineID string) error {
	name := ContainerName(engineID)
	done := b.own.begin(engineID)
	defer done()
	cctx, cancel := b.call(ctx)
	_, err := b.cli.ContainerPause(cctx, name, client.ContainerPauseOptions{})
	cancel()
	paused := func(st container.State) bool { return st.Paused }
	if err == nil {
		return b.await(ctx, name, "pause", paused)
	}
	return b.settle(ctx, name, err, "pause", paused)
}

// Unpause resumes the engine's container; running is success. ErrNotFound
// when it is gone, ErrConflict when it is not running at all.
func (b *Backend) Unpause(ctx context.Context, engineID string) error {
	name := ContainerName(engineID)
	cctx, cancel := b.call(ctx)
	_, err := b.cli.ContainerUnpause(cctx, name, client.ContainerUnpauseOptions{})
	cancel()
	resumed := func(st container.State) bool { return st.Running && !st.Paused }
	if err == nil {
		return b.await(ctx, name, "unpause", resumed)
	}
	return b.settle(ctx, name, err, "unpause", resumed)
}

// await polls the container until its state shows what op did. Some daemons
// (20.10) answer pause and unpause before they record the new state, which
// they learn from containerd a moment later; waiting here means an Inspect
// right after Pause or Unpause tells the truth.
func (b *Backend) await(ctx context.Context, name, op string, reached func(container.State) bool) error {
	cctx, cancel := b.call(ctx)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		res, err := b.cli.ContainerInspect(cctx, name, client.ContainerInspectOptions{})
		switch {
		case err != nil:
			return wrap(err, "%s container %s: inspect", op, name)
		case res.Container.State != nil && reached(*res.Container.State):
			return nil
		}
		select {
		case <-cctx.Done():
			return wrap(cctx.Err(), "%s container %s: state not updated", op, name)
		case <-tick.C:
		}
	}
}

// settle decides what a failed pause or unpause means. Daemons disagree on
// the status of "already paused" or "not paused" (409 or 500), so the
// container's state decides: already where we wanted it is success, not
// running at all is ErrConflict.
func (b *Backend) settle(ctx context.Context, name string, err error, op string, reached func(container.State) bool) error {
	if class := classify(err); class == backend.ErrNotFound || class == backend.ErrUnavailable {
		return wrap(err, "%s container %s", op, name)
	}
	st, ierr := b.state(ctx, name)
	switch {
	case ierr != nil:
		return ierr
	case reached(st):
		return nil
	case !st.Running:
		return fmt.Errorf("%s container %s: %w: it is %s: %w", op, name, backend.ErrConflict, st.Status, err)
	}
	return wrap(err, "%s container %s", op, name)
}

// state inspects a container's state.
func (b *Backend) state(ctx context.Context, name string) (container.State, error) {
	cctx, cancel := b.call(ctx)
	defer cancel()
	res, err := b.cli.ContainerInspect(cctx, name, client.ContainerInspectOptions{})
	if err != nil {
		return container.State{}, wrap(err, "inspect container %s", name)
	}
	if res.Container.State == nil {
		return container.State{}, fmt.Errorf("inspect container %s: daemon returned no state", name)
	}
	return *res.Container.State, nil
}

// Remove deletes the engine's container (killing it if running) and keeps
// its volume. Missing is success.
func (b *Backend) Remove(ctx context.Context, engineID string) error {
	name := ContainerName(engineID)
	done := b.own.begin(engineID)
	defer done()
	cctx, cancel := b.call(ctx)
	defer cancel()
	_, err := b.cli.ContainerRemove(cctx, name, client.ContainerRemoveOptions{Force: true})
	switch classify(err) {
	case backend.ErrNotFound:
		return nil
	case backend.ErrConflict:
		// Another removal is under way: done when the container is gone.
		if b.waitGone(cctx, name) {
			return nil
		}
	}
	return wrap(err, "remove container %s", name)
}

// waitGone polls until the container no longer exists or ctx ends.
func (b *Backend) waitGone(ctx context.Context, name string) bool {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		_, err := b.cli.ContainerInspect(ctx, name, client.ContainerInspectOptions{})
		if errors.Is(classify(err), backend.ErrNotFound) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

// Destroy deletes the engine's container and its data volume. Idempotent.
// A volume labelled for another engine is left alone: it is not this
// engine's data.
func (b *Backend) Destroy(ctx context.Context, engineID string) error {
	if err := b.Remove(ctx, engineID); err != nil {
		return err
	}
	name := VolumeName(engineID)
	cctx, cancel := b.call(ctx)
	defer cancel()
	res, err := b.cli.VolumeInspect(cctx, name, client.VolumeInspectOptions{})
	switch {
	case errors.Is(classify(err), backend.ErrNotFound):
		return nil
	case err != nil:
		return wrap(err, "inspect volume %s", name)
	}
	if owner := res.Volume.Labels[backend.LabelEngineID]; owner != "" && owner != engineID {
		return nil
	}
	_, err = b.cli.VolumeRemove(cctx, name, client.VolumeRemoveOptions{})
	if errors.Is(classify(err), backend.ErrNotFound) {
		return nil
	}
	return wrap(err, "remove volume %s", name)
}

// Inspect describes the engine's container. ErrNotFound when there is none.
func (b *Backend) Inspect(ctx context.Context, engineID string) (backend.Instance, error) {
	name := ContainerName(engineID)
	cctx, cancel := b.call(ctx)
	defer cancel()
	res, err := b.cli.ContainerInspect(cctx, name, client.ContainerInspectOptions{})
	if err != nil {
		return backend.Instance{}, wrap(err, "inspect container %s", name)
	}
	c := res.Container
	inst := backend.Instance{
		ID:   c.ID,
		Name: strings.TrimPrefix(c.Name, "/"),
	}
	if c.Config != nil {
		inst.EngineID = c.Config.Labels[backend.LabelEngineID]
		inst.ProductID = c.Config.Labels[backend.LabelProductID]
		inst.Replica = c.Config.Labels[backend.LabelReplica]
	}
	if c.State != nil {
		inst.Status = status(c.State.Status)
		inst.ExitCode = c.State.ExitCode
	}
	if t, err := time.Parse(time.RFC3339Nano, c.Created); err == nil {
		inst.CreatedAt = t.UTC()
	}
	return inst, nil
}

// List returns every container labelled as managed by this deployment,
// whatever its state.
func (b *Backend) List(ctx context.Context) ([]backend.Instance, error) {
	cctx, cancel := b.call(ctx)
	defer cancel()
	res, err := b.cli.ContainerList(cctx, client.ContainerListOptions{All: true, Filters: b.labelFilter()})
	if err != nil {
		return nil, wrap(err, "list containers of deployment %s", b.cfg.Deployment)
	}
	out := make([]backend.Instance, 0, len(res.Items))
	for _, c := range res.Items {
		inst := backend.Instance{
			ID:        c.ID,
			EngineID:  c.Labels[backend.LabelEngineID],
			ProductID: c.Labels[backend.LabelProductID],
			Replica:   c.Labels[backend.LabelReplica],
			Status:    status(c.State),
			CreatedAt: time.Unix(c.Created, 0).UTC(),
			ExitCode:  exitCodeFromStatus(c.Status),
		}
		if len(c.Names) > 0 {
			inst.Name = strings.TrimPrefix(c.Names[0], "/")
		}
		out = append(out, inst)
	}
	return out, nil
}

// labelFilter selects this deployment's managed containers.
func (b *Backend) labelFilter() client.Filters {
	return make(client.Filters).Add("label",
		backend.LabelManaged+"=true",
		backend.LabelDeployment+"="+b.cfg.Deployment)
}

// status maps Docker's container states onto backend statuses. A container
// that is restarting, being removed or dead has no running process: exited.
func status(s container.ContainerState) backend.Status {
	switch s {
	case container.StateCreated:
		return backend.StatusCreated
	case container.StateRunning:
		return backend.StatusRunning
	case container.StatePaused:
		return backend.StatusPaused
	}
	return backend.StatusExited
}

// exitCodeFromStatus reads the exit code from a list entry's human status
// ("Exited (137) 5 seconds ago"), the only place the list API reports it.
func exitCodeFromStatus(s string) int {
	rest, ok := strings.CutPrefix(s, "Exited (")
	if !ok {
		return 0
	}
	code, _, ok := strings.Cut(rest, ")")
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(code)
	if err != nil {
		return 0
	}
	return n
}
