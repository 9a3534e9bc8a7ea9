package docker_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/backend/docker"
	"github.com/september/bap-engine/internal/backend/docker/dockertest"
)

// engineImage is the tag the reference engine is built under for these tests.
const engineImage = "bap-engine-ref:test"

// sharedNetwork is the engine network of every backend in this test binary
// (one network per test would exhaust Docker's address pools when many run
// at once); TestMain removes it at the end.
var sharedNetwork = "bapt-" + uuid.NewString()[:8] + "-net"

func TestMain(m *testing.M) {
	code := m.Run()
	removeNetwork(sharedNetwork)
	// The conformance suite probes engines with http.DefaultClient.
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// removeNetwork deletes every network named name, if a daemon answers.
func removeNetwork(name string) {
	cli, err := client.New(client.FromEnv)
	if err != nil {
		return
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := cli.NetworkList(ctx, client.NetworkListOptions{Filters: make(client.Filters).Add("name", name)})
	if err != nil {
		return
	}
	for _, n := range res.Items {
		if n.Name == name {
			if _, err := cli.NetworkRemove(ctx, n.ID, client.NetworkRemoveOptions{}); err != nil {
				fmt.Fprintf(os.Stderr, "remove test network %s: %v\n", name, err)
			}
		}
	}
}

// fixture is one test's deployment: its own label value, torn down with
// everything in it when the test ends.
type fixture struct {
	cli        *client.Client
	b          *docker.Backend
	deployment string
	network    string
	image      string
}

func setup(t testing.TB, configure ...func(*docker.Config)) fixture {
	t.Helper()
	cli := dockertest.Client(t)
	image := dockertest.BuildEngineImage(t, engineImage)
	dep := "bapt-" + uuid.NewString()[:8]
	f := fixture{cli: cli, deployment: dep, network: sharedNetwork, image: image}
	dockertest.CleanupDeployment(t, cli, dep)
	f.b = newBackend(t, f, configure...)
	return f
}

// newBackend opens another backend on the fixture's deployment and network.
func newBackend(t testing.TB, f fixture, configure ...func(*docker.Config)) *docker.Backend {
	t.Helper()
	cfg := docker.Config{
		Network:      f.network,
		Deployment:   f.deployment,
		DefaultImage: f.image,
		HelperImage:  f.image,          // the engine image answers `snapshot` too
		CallTimeout:  30 * time.Second, // a busy CI daemon is slow, not down
		Getenv:       func(string) string { return "" },
	}
	for _, c := range configure {
		c(&cfg)
	}
	b, err := docker.New(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// engine is one test engine: its spec and plaintext key.
type engine struct {
	spec backend.Spec
	key  string
}

func newEngine(t testing.TB) engine {
	t.Helper()
	key := "sk-sept-" + uuid.NewString()
	return engine{
		key: key,
		spec: backend.Spec{
			EngineID:  uuid.NewString(),
			ProductID: uuid.NewString(),
			Port:      freePort(t),
			KeyHash:   hashKey(key),
		},
	}
}

func hashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// freePort is a loopback port nobody listens on right now, below the
// ephemeral range (an outgoing connection of a concurrent test holding it
// would make Docker's bind fail) and never handed out twice in this process.
func freePort(t testing.TB) int {
	t.Helper()
	port, _ := backendtest.PortRange(t, 1)
	return port
}

// noKeepAlive leaves no idle connection (nor its goroutines) behind.
var noKeepAlive = &http.Transport{DisableKeepAlives: true}

// waitHealthy polls the engine's /health through its published port.
func waitHealthy(t testing.TB, port int) {
	t.Helper()
	url := fmt.Sprintf("http://127.0.0.1:%d/health", port)
	hc := &http.Client{Timeout: time.Second, Transport: noKeepAlive}
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		resp, err := hc.Get(url)
		if err == nil {
			var body struct{ Status string }
			_ = json.NewDecoder(resp.Body).Decode(&body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK && body.Status == "ok" {
				return
			}
			last = fmt.Sprintf("status %d %q", resp.StatusCode, body.Status)
		} else {
			last = err.Error()
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("engine on port %d never became healthy: %s", port, last)
}

// engineCall makes an authenticated request to the engine and decodes its
// JSON answer into out; it returns the status code.
func engineCall(t *testing.T, port int, key, method, path, body string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, fmt.Sprintf("http://127.0.0.1:%d%s", port, path), strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("X-Engine-Key", key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 10 * time.Second, Transport: noKeepAlive}).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	if out != nil && resp.StatusCode == http.StatusOK {
		require.NoError(t, json.Unmarshal(data, out), "body: %s", data)
	}
	return resp.StatusCode
}

func inspect(t *testing.T, cli *client.Client, engineID string) container.InspectResponse {
	t.Helper()
	res, err := cli.ContainerInspect(context.Background(), docker.ContainerName(engineID), client.ContainerInspectOptions{})
	require.NoError(t, err)
	return res.Container
}

func volumeExists(t *testing.T, cli *client.Client, engineID string) bool {
	t.Helper()
	_, err := cli.VolumeInspect(context.Background(), docker.VolumeName(engineID), client.VolumeInspectOptions{})
	if err != nil {
		require.ErrorContains(t, err, "no such volume")
		return false
	}
	return true
}

// TestConformance runs the suite every backend passes, against the real
// reference engine image.
func TestConformance(t *testing.T) {
	cli := dockertest.Client(t)
	image := dockertest.BuildEngineImage(t, engineImage)
	newBackend := func(t *testing.T) backend.Backend {
		return setup(t).b
	}
	backendtest.Run(t, newBackend, image, backendtest.Options{
		Kill: func(t *testing.T, _ backend.Backend, engineID string) {
			t.Helper()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			require.NoError(t, dockertest.Kill(ctx, cli, docker.ContainerName(engineID)))
		},
	})
}

func TestConcurrentStartsShareOneNetwork(t *testing.T) {
	t.Parallel()
	cli := dockertest.Client(t)
	image := dockertest.BuildEngineImage(t, engineImage)
	dep := "bapt-" + uuid.NewString()[:8]
	name := dep + "-race"
	dockertest.CleanupDeployment(t, cli, dep)
	t.Cleanup(func() { removeNetwork(name) })

	// Several orchestrators start at once on a network nobody made yet,
	// then each creates an engine on it.
	const n = 4
	errs := make([]error, n)
	specs := make([]backend.Spec, n)
	for i := range n {
		specs[i] = newEngine(t).spec
	}
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			b, err := docker.New(context.Background(), docker.Config{
				Network: name, Deployment: dep, DefaultImage: image, Getenv: func(string) string { return "" },
			})
			if err != nil {
				errs[i] = err
				return
			}
			defer b.Close()
			_, errs[i] = b.Create(context.Background(), specs[i])
		})
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	res, err := cli.NetworkList(context.Background(), client.NetworkListOptions{Filters: make(client.Filters).Add("name", name)})
	require.NoError(t, err)
	count := 0
	for _, nw := range res.Items {
		if nw.Name == name {
			count++
		}
	}
	require.Equal(t, 1, count, "exactly one network of the name remains")
}

func TestCreateShapesTheContainer(t *testing.T) {
	t.Parallel()
	catalog := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(catalog, "menu.txt"), []byte("soup"), 0o644))
	env := map[string]string{
		"BAPT_PASS":       "passed-through",
		"BAPT_SECRET":     "orchestrator-only-secret", // set but not in the passthrough list
		"ENGINE_KEY_HASH": "must-not-override",
		"ORCH_MASTER_KEY": "orchestrator-master-key",
	}
	f := setup(t, func(c *docker.Config) {
		c.CatalogPath = catalog
		c.Passthrough = []string{"BAPT_PASS", "BAPT_UNSET", "ENGINE_KEY_HASH"}
		c.Getenv = func(k string) string { return env[k] }
	})
	ctx := context.Background()
	e := newEngine(t)
	e.spec.MemoryMB = 128
	e.spec.CPUs = 0.5

	inst, err := f.b.Create(ctx, e.spec)
	require.NoError(t, err)
	require.Equal(t, backend.StatusCreated, inst.Status)
	require.Equal(t, e.spec.EngineID, inst.EngineID)
	require.Equal(t, e.spec.ProductID, inst.ProductID)
	require.Equal(t, "engine-"+e.spec.EngineID, inst.Name)
	require.NotEmpty(t, inst.ID)
	require.WithinDuration(t, time.Now(), inst.CreatedAt, time.Minute)

	c := inspect(t, f.cli, e.spec.EngineID)
	require.Equal(t, "/engine-"+e.spec.EngineID, c.Name)
	img, err := f.cli.ImageInspect(ctx, f.image)
	require.NoError(t, err)
	labels := maps.Clone(c.Config.Labels)
	for k := range img.Config.Labels { // the image's own labels show too
		delete(labels, k)
	}
	require.Equal(t, map[string]string{
		backend.LabelManaged:    "true",
		backend.LabelEngineID:   e.spec.EngineID,
		backend.LabelProductID:  e.spec.ProductID,
		backend.LabelDeployment: f.deployment,
	}, labels)

	// The environment is the contract's variables and the passthrough list,
	// on top of what the image itself declares, and nothing else.
	var own []string
	for _, kv := range c.Config.Env {
		if !slices.Contains(img.Config.Env, kv) {
			own = append(own, kv)
		}
	}
	require.ElementsMatch(t, []string{
		"ENGINE_KEY_HASH=" + e.spec.KeyHash,
		"SQLITE_DB_PATH=/data/brain.sqlite",
		"CATALOG_DIR=/catalog",
		"BAPT_PASS=passed-through",
	}, own)
	for _, kv := range c.Config.Env {
		require.NotContains(t, kv, "orchestrator-only-secret")
		require.NotContains(t, kv, "orchestrator-master-key")
		require.NotContains(t, kv, "must-not-override")
	}

	require.Equal(t, container.RestartPolicyUnlessStopped, c.HostConfig.RestartPolicy.Name)
	binds := c.HostConfig.PortBindings[network.MustParsePort("8000/tcp")]
	require.Len(t, binds, 1)
	require.Equal(t, "127.0.0.1", binds[0].HostIP.String())
	require.Equal(t, strconv.Itoa(e.spec.Port), binds[0].HostPort)
	require.Equal(t, int64(128*1024*1024), c.HostConfig.Memory)
	require.Equal(t, int64(500_000_000), c.HostConfig.NanoCPUs)
	require.Equal(t, f.network, string(c.HostConfig.NetworkMode))

	var data, cat *container.MountPoint
	for i, m := range c.Mounts {
		switch m.Destination {
		case "/data":
			data = &c.Mounts[i]
		case "/catalog":
			cat = &c.Mounts[i]
		}
	}
	require.NotNil(t, data, "no /data mount in %+v", c.Mounts)
	require.Equal(t, mount.TypeVolume, data.Type)
	require.Equal(t, "engine-data-"+e.spec.EngineID[:12], data.Name)
	require.True(t, data.RW)
	require.NotNil(t, cat, "no /catalog mount in %+v", c.Mounts)
	require.Equal(t, mount.TypeBind, cat.Type)
	require.Equal(t, catalog, cat.Source)
	require.False(t, cat.RW)

	vol, err := f.cli.VolumeInspect(ctx, docker.VolumeName(e.spec.EngineID), client.VolumeInspectOptions{})
	require.NoError(t, err)
	require.Equal(t, e.spec.EngineID, vol.Volume.Labels[backend.LabelEngineID])
	require.Equal(t, f.deployment, vol.Volume.Labels[backend.LabelDeployment])
	require.Equal(t, "true", vol.Volume.Labels[backend.LabelManaged])

	// Running, the engine answers on 127.0.0.1:<port> and sees the catalog.
	require.NoError(t, f.b.Start(ctx, e.spec.EngineID))
	require.Equal(t, fmt.Sprintf("http://127.0.0.1:%d", e.spec.Port), f.b.URL(e.spec.EngineID, e.spec.Port))
	waitHealthy(t, e.spec.Port)
	var listing struct {
		Available bool `json:"available"`
		Files     []struct {
			Path string `json:"path"`
		} `json:"files"`
	}
	require.Equal(t, http.StatusOK, engineCall(t, e.spec.Port, e.key, http.MethodGet, "/catalog", "", &listing))
	require.True(t, listing.Available)
	require.Len(t, listing.Files, 1)
	require.Equal(t, "menu.txt", listing.Files[0].Path)
}

func TestCreateIsIdempotentAndReplacesAChangedSpec(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := context.Background()
	e := newEngine(t)

	first, err := f.b.Create(ctx, e.spec)
	require.NoError(t, err)
	again, err := f.b.Create(ctx, e.spec)
	require.NoError(t, err)
	require.Equal(t, first.ID, again.ID, "the same spec adopts the existing container")

	// The brain on the volume survives a replacement with a new key.
	require.NoError(t, f.b.Start(ctx, e.spec.EngineID))
	waitHealthy(t, e.spec.Port)
	var brain struct {
		Counter int `json:"counter"`
	}
	require.Equal(t, http.StatusOK, engineCall(t, e.spec.Port, e.key, http.MethodPost, "/execute", `{"input":"remember me"}`, nil))
	require.Equal(t, http.StatusOK, engineCall(t, e.spec.Port, e.key, http.MethodGet, "/brain", "", &brain))
	require.Equal(t, 1, brain.Counter)

	// An adopted running container is left running.
	adopted, err := f.b.Create(ctx, e.spec)
	require.NoError(t, err)
	require.Equal(t, first.ID, adopted.ID)
	require.Equal(t, backend.StatusRunning, adopted.Status)

	oldKey := e.key
	e.key = "sk-sept-" + uuid.NewString()
	e.spec.KeyHash = hashKey(e.key)
	rotated, err := f.b.Create(ctx, e.spec)
	require.NoError(t, err)
	require.NotEqual(t, first.ID, rotated.ID, "a new key hash replaces the container")
	require.Equal(t, backend.StatusCreated, rotated.Status)
	require.NoError(t, f.b.Start(ctx, e.spec.EngineID))
	waitHealthy(t, e.spec.Port)
	require.Equal(t, http.StatusOK, engineCall(t, e.spec.Port, e.key, http.MethodGet, "/brain", "", &brain))
	require.Equal(t, 1, brain.Counter, "the brain survived the replacement")
	require.Equal(t, http.StatusUnauthorized, engineCall(t, e.spec.Port, oldKey, http.MethodGet, "/brain", "", nil))

	// Changing the ceilings replaces it too.
	e.spec.MemoryMB = 64
	resized, err := f.b.Create(ctx, e.spec)
	require.NoError(t, err)
	require.NotEqual(t, rotated.ID, resized.ID)
	require.Equal(t, int64(64*1024*1024), inspect(t, f.cli, e.spec.EngineID).HostConfig.Memory)
}

func TestCreateConcurrentlyMakesOneContainer(t *testing.T) {
	t.Parallel()
	f := setup(t)
	e := newEngine(t)
	const n = 6
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			inst, err := f.b.Create(context.Background(), e.spec)
			ids[i], errs[i] = inst.ID, err
		})
	}
	wg.Wait()
	for i := range n {
		require.NoError(t, errs[i])
		require.Equal(t, ids[0], ids[i])
	}
	list, err := f.b.List(context.Background())
	require.NoError(t, err)
	require.Len(t, list, 1)
}

func TestCreateLeavesUnmanagedContainersAlone(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := context.Background()
	e := newEngine(t)
	name := docker.ContainerName(e.spec.EngineID)
	res, err := f.cli.ContainerCreate(ctx, client.ContainerCreateOptions{Name: name, Image: f.image})
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = f.cli.ContainerRemove(context.Background(), res.ID, client.ContainerRemoveOptions{Force: true})
	})

	_, err = f.b.Create(ctx, e.spec)
	require.ErrorIs(t, err, backend.ErrConflict)
	require.Equal(t, res.ID, inspect(t, f.cli, e.spec.EngineID).ID, "the unmanaged container is untouched")
}

func TestCreateWithMissingImage(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := context.Background()
	e := newEngine(t)
	e.spec.Image = "bap-engine-missing-" + uuid.NewString()[:8] + ":none"

	_, err := f.b.Create(ctx, e.spec)
	require.ErrorIs(t, err, backend.ErrImageNotFound)
	require.ErrorContains(t, err, e.spec.Image)

	_, err = f.b.Inspect(ctx, e.spec.EngineID)
	require.ErrorIs(t, err, backend.ErrNotFound)
	require.False(t, volumeExists(t, f.cli, e.spec.EngineID), "nothing is left behind")
}

func TestFailedCreateLeavesNothingBehind(t *testing.T) {
	t.Parallel()
	f := setup(t, func(c *docker.Config) { c.CatalogPath = filepath.Join(t.TempDir(), "missing") })
	ctx := context.Background()
	e := newEngine(t)
	_, err := f.b.Create(ctx, e.spec)
	require.Error(t, err)
	_, err = f.b.Inspect(ctx, e.spec.EngineID)
	require.ErrorIs(t, err, backend.ErrNotFound)
	require.False(t, volumeExists(t, f.cli, e.spec.EngineID), "the volume it made is gone")
}

func TestVolumesOfCollidingEnginesStaySeparate(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := context.Background()
	a, b := newEngine(t), newEngine(t)
	// Two ids with the same first 12 characters map to one volume name.
	b.spec.EngineID = a.spec.EngineID[:12] + "-collides"
	_, err := f.b.Create(ctx, a.spec)
	require.NoError(t, err)
	_, err = f.b.Create(ctx, b.spec)
	require.ErrorIs(t, err, backend.ErrConflict)
	require.NoError(t, f.b.Destroy(ctx, b.spec.EngineID))
	require.True(t, volumeExists(t, f.cli, a.spec.EngineID), "destroying one engine never deletes another's data")
}

func TestCreateRejectsBadSpecs(t *testing.T) {
	t.Parallel()
	f := setup(t)
	good := newEngine(t).spec
	for name, mutate := range map[string]func(*backend.Spec){
		"empty id":       func(s *backend.Spec) { s.EngineID = "" },
		"id with slash":  func(s *backend.Spec) { s.EngineID = "../etc" },
		"id with equals": func(s *backend.Spec) { s.EngineID = "a=b" },
		"port 0":         func(s *backend.Spec) { s.Port = 0 },
		"port too big":   func(s *backend.Spec) { s.Port = 70000 },
		"no key hash":    func(s *backend.Spec) { s.KeyHash = "" },
		"negative mem":   func(s *backend.Spec) { s.MemoryMB = -1 },
	} {
		spec := good
		mutate(&spec)
		_, err := f.b.Create(context.Background(), spec)
		require.Error(t, err, name)
	}
	list, err := f.b.List(context.Background())
	require.NoError(t, err)
	require.Empty(t, list)
}

func TestLifecycleOperations(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := context.Background()
	e := newEngine(t)
	id := e.spec.EngineID
	status := func() backend.Status {
		t.Helper()
		inst, err := f.b.Inspect(ctx, id)
		require.NoError(t, err)
		return inst.Status
	}
	timed := func(what string, fn func() error) {
		t.Helper()
		start := time.Now()
		require.NoError(t, fn(), what)
		t.Logf("%-8s %v", what, time.Since(start).Round(100*time.Microsecond))
	}

	timed("create", func() error { _, err := f.b.Create(ctx, e.spec); return err })
	timed("start", func() error { return f.b.Start(ctx, id) })
	require.NoError(t, f.b.Start(ctx, id), "starting a running engine is success")
	waitHealthy(t, e.spec.Port)
	require.Equal(t, backend.StatusRunning, status())

	timed("pause", func() error { return f.b.Pause(ctx, id) })
	require.Equal(t, backend.StatusPaused, status())
	require.NoError(t, f.b.Pause(ctx, id), "pausing a paused engine is success")
	timed("unpause", func() error { return f.b.Unpause(ctx, id) })
	// Docker 20.10 can apply a late containerd "paused" event after an
	// unpause; the state settles on running.
	require.Eventually(t, func() bool { return status() == backend.StatusRunning }, 10*time.Second, 20*time.Millisecond)
	require.NoError(t, f.b.Unpause(ctx, id), "unpausing a running engine is success")
	waitHealthy(t, e.spec.Port)

	require.NoError(t, f.b.Pause(ctx, id))
	require.NoError(t, f.b.Start(ctx, id), "starting a paused engine resumes it")
	require.Equal(t, backend.StatusRunning, status())

	timed("stop", func() error { return f.b.Stop(ctx, id, 10*time.Second) })
	inst, err := f.b.Inspect(ctx, id)
	require.NoError(t, err)
	require.Equal(t, backend.StatusExited, inst.Status)
	require.Equal(t, 0, inst.ExitCode, "the engine exits cleanly on SIGTERM")
	require.NoError(t, f.b.Stop(ctx, id, time.Second), "stopping a stopped engine is success")
	require.ErrorIs(t, f.b.Pause(ctx, id), backend.ErrConflict)
	require.ErrorIs(t, f.b.Unpause(ctx, id), backend.ErrConflict)

	timed("restart", func() error { return f.b.Start(ctx, id) })
	waitHealthy(t, e.spec.Port)
	require.NoError(t, f.b.Pause(ctx, id))
	require.NoError(t, f.b.Stop(ctx, id, 5*time.Second), "a paused engine can be stopped")
	require.Equal(t, backend.StatusExited, status())

	timed("remove", func() error { return f.b.Remove(ctx, id) })
	_, err = f.b.Inspect(ctx, id)
	require.ErrorIs(t, err, backend.ErrNotFound)
	require.True(t, volumeExists(t, f.cli, id), "remove keeps the data")
	require.NoError(t, f.b.Remove(ctx, id), "removing a missing engine is success")
	require.NoError(t, f.b.Stop(ctx, id, time.Second), "stopping a missing engine is success")
	require.ErrorIs(t, f.b.Start(ctx, id), backend.ErrNotFound)
	require.ErrorIs(t, f.b.Pause(ctx, id), backend.ErrNotFound)
	require.ErrorIs(t, f.b.Unpause(ctx, id), backend.ErrNotFound)

	timed("create", func() error { _, err := f.b.Create(ctx, e.spec); return err })
	timed("destroy", func() error { return f.b.Destroy(ctx, id) })
	_, err = f.b.Inspect(ctx, id)
	require.ErrorIs(t, err, backend.ErrNotFound)
	require.False(t, volumeExists(t, f.cli, id), "destroy removes the data")
	require.NoError(t, f.b.Destroy(ctx, id), "destroy is idempotent")
}

func TestListIsScopedToTheDeployment(t *testing.T) {
	t.Parallel()
	a := setup(t)
	b := setup(t)
	ctx := context.Background()
	ea, eb := newEngine(t), newEngine(t)
	_, err := a.b.Create(ctx, ea.spec)
	require.NoError(t, err)
	_, err = b.b.Create(ctx, eb.spec)
	require.NoError(t, err)
	require.NoError(t, b.b.Start(ctx, eb.spec.EngineID))

	la, err := a.b.List(ctx)
	require.NoError(t, err)
	require.Len(t, la, 1)
	require.Equal(t, ea.spec.EngineID, la[0].EngineID)
	require.Equal(t, ea.spec.ProductID, la[0].ProductID)
	require.Equal(t, backend.StatusCreated, la[0].Status)
	require.Equal(t, docker.ContainerName(ea.spec.EngineID), la[0].Name)

	lb, err := b.b.List(ctx)
	require.NoError(t, err)
	require.Len(t, lb, 1)
	require.Equal(t, eb.spec.EngineID, lb[0].EngineID)
	require.Equal(t, backend.StatusRunning, lb[0].Status)

	// The list reports the same exit code as inspect.
	require.NoError(t, b.b.Stop(ctx, eb.spec.EngineID, 0))
	insp, err := b.b.Inspect(ctx, eb.spec.EngineID)
	require.NoError(t, err)
	lb, err = b.b.List(ctx)
	require.NoError(t, err)
	require.Equal(t, backend.StatusExited, lb[0].Status)
	require.Equal(t, insp.ExitCode, lb[0].ExitCode)

	require.NoError(t, b.b.Start(ctx, eb.spec.EngineID))
	require.NoError(t, b.b.Pause(ctx, eb.spec.EngineID))
	lb, err = b.b.List(ctx)
	require.NoError(t, err)
	require.Equal(t, backend.StatusPaused, lb[0].Status)
}

func TestURL(t *testing.T) {
	t.Parallel()
	f := setup(t, func(c *docker.Config) { c.EngineHost = "10.1.2.3" })
	require.Equal(t, "http://10.1.2.3:9001", f.b.URL("e1", 9001))
	n := newBackend(t, f, func(c *docker.Config) { c.URLMode = docker.URLModeNetwork })
	require.Equal(t, "http://engine-e1:8000", n.URL("e1", 9001))
}

func TestNewErrors(t *testing.T) {
	t.Parallel()
	_, err := docker.New(context.Background(), docker.Config{URLMode: "sideways"})
	require.ErrorContains(t, err, "sideways")

	// Nothing listens on port 1: the daemon is unreachable, not the engine broken.
	_, err = docker.New(context.Background(), docker.Config{Host: "tcp://127.0.0.1:1", CallTimeout: 2 * time.Second})
	require.ErrorIs(t, err, backend.ErrUnavailable)
}

// nextEvent waits for the next event or fails after a generous bound (the
// test asserts order, not speed; the latency is logged).
func nextEvent(t *testing.T, ch <-chan backend.Event) backend.Event {
	t.Helper()
	return backendtest.Receive(t, ch, 20*time.Second, "event")
}

func TestEventsReportCrashesButNotOwnStops(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := f.b.Events(ctx)

	ours, victim := newEngine(t), newEngine(t)
	for _, e := range []engine{ours, victim} {
		_, err := f.b.Create(ctx, e.spec)
		require.NoError(t, err)
		require.NoError(t, f.b.Start(ctx, e.spec.EngineID))
		waitHealthy(t, e.spec.Port)
	}
	// Everything the orchestrator does to "ours" makes it die or freeze;
	// none of it may be reported.
	id := ours.spec.EngineID
	require.NoError(t, f.b.Stop(ctx, id, 5*time.Second))
	require.NoError(t, f.b.Start(ctx, id))
	require.NoError(t, f.b.Pause(ctx, id))
	require.NoError(t, f.b.Unpause(ctx, id))
	require.NoError(t, f.b.Stop(ctx, id, 0)) // straight to SIGKILL
	require.NoError(t, f.b.Start(ctx, id))
	require.NoError(t, f.b.Remove(ctx, id)) // kills the running container
	_, err := f.b.Create(ctx, ours.spec)
	require.NoError(t, err)
	require.NoError(t, f.b.Start(ctx, id))
	waitHealthy(t, ours.spec.Port)

	// A kill from outside is a crash. Events arrive in order, so had any of
	// the above been reported, it would come first.
	killed := time.Now()
	require.NoError(t, dockertest.Kill(ctx, f.cli, docker.ContainerName(victim.spec.EngineID)))
	ev := nextEvent(t, events)
	t.Logf("die event for an external kill after %v", time.Since(killed).Round(time.Millisecond))
	require.Equal(t, victim.spec.EngineID, ev.EngineID)
	require.Equal(t, 137, ev.ExitCode)
	require.WithinDuration(t, killed, ev.At, 10*time.Second)

	// Right after our own removal and re-creation, a crash of the new
	// container is still reported.
	require.NoError(t, dockertest.Kill(ctx, f.cli, docker.ContainerName(id)))
	ev = nextEvent(t, events)
	require.Equal(t, id, ev.EngineID)
	require.Equal(t, 137, ev.ExitCode)

	cancel()
	for range events {
	}
}

// socketProxy forwards TCP connections to the Docker daemon and can cut
// them, to break the event stream the way a daemon restart would.
type socketProxy struct {
	ln       net.Listener
	upstream func() (net.Conn, error)
	mu       sync.Mutex
	refuse   bool
	conns    map[net.Conn]bool
	wg       sync.WaitGroup
}

func newSocketProxy(t *testing.T, cli *client.Client) *socketProxy {
	t.Helper()
	u, err := client.ParseHostURL(cli.DaemonHost())
	require.NoError(t, err)
	proto, addr := u.Scheme, u.Host // for unix, Host is the socket path
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &socketProxy{ln: ln, conns: map[net.Conn]bool{}, upstream: func() (net.Conn, error) {
		return net.DialTimeout(proto, addr, 5*time.Second)
	}}
	p.wg.Go(p.serve)
	t.Cleanup(func() {
		_ = ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *socketProxy) addr() string { return "tcp://" + p.ln.Addr().String() }

func (p *socketProxy) serve() {
	for {
		down, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refuse := p.refuse
		p.mu.Unlock()
		if refuse {
			_ = down.Close()
			continue
		}
		up, err := p.upstream()
		if err != nil {
			_ = down.Close()
			continue
		}
		p.mu.Lock()
		p.conns[down], p.conns[up] = true, true
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			_ = dst.Close()
			_ = src.Close()
		}
		p.wg.Go(func() { pipe(up, down) })
		p.wg.Go(func() { pipe(down, up) })
	}
}

// cut closes every open connection.
func (p *socketProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		_ = c.Close()
	}
	clear(p.conns)
}

func (p *socketProxy) setRefuse(v bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = v
}

func TestEventsSurviveABrokenStream(t *testing.T) {
	t.Parallel()
	f := setup(t)
	proxy := newSocketProxy(t, f.cli)
	b := newBackend(t, f, func(c *docker.Config) { c.Host = proxy.addr() })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := b.Events(ctx)

	e := newEngine(t)
	_, err := b.Create(ctx, e.spec)
	require.NoError(t, err)
	require.NoError(t, b.Start(ctx, e.spec.EngineID))
	waitHealthy(t, e.spec.Port)

	// The daemon becomes unreachable, the engine crashes meanwhile, then the
	// daemon is back: the crash is replayed on the new stream.
	proxy.setRefuse(true)
	proxy.cut()
	require.NoError(t, dockertest.Kill(ctx, f.cli, docker.ContainerName(e.spec.EngineID)))
	_, err = b.Inspect(ctx, e.spec.EngineID)
	require.ErrorIs(t, err, backend.ErrUnavailable, "the daemon is unreachable through the proxy")
	proxy.setRefuse(false)

	ev := nextEvent(t, events)
	require.Equal(t, e.spec.EngineID, ev.EngineID)
	require.Equal(t, 137, ev.ExitCode)

	// And the new stream is live. (Docker's restart policy does not bring
	// back a container killed through the API: start it ourselves.)
	require.NoError(t, b.Start(ctx, e.spec.EngineID))
	waitHealthy(t, e.spec.Port)
	require.NoError(t, dockertest.Kill(ctx, f.cli, docker.ContainerName(e.spec.EngineID)))
	ev = nextEvent(t, events)
	require.Equal(t, e.spec.EngineID, ev.EngineID)

	cancel()
	for range events {
	}
}

func TestErrorsAreClassified(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := context.Background()
	_, err := f.b.Inspect(ctx, "no-such-engine")
	require.ErrorIs(t, err, backend.ErrNotFound)
	require.False(t, errors.Is(err, backend.ErrUnavailable))

	expired, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancel()
	_, err = f.b.List(expired)
	require.ErrorIs(t, err, backend.ErrUnavailable)
}
