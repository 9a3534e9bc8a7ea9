package docker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/september/bap-engine/internal/backend"
)

// labels are put on an engine's container and volume.
func (b *Backend) labels(spec backend.Spec) map[string]string {
	return backend.Labels(spec, b.cfg.Deployment)
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
	}
	if err := spec.Check(); err != nil {
		return fmt.Errorf("docker backend: %w", err)
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
