package lifecycle_test

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/backend/docker"
	"github.com/september/bap-engine/internal/backend/docker/dockertest"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/lifecycle"
)

// dockerImage is the reference engine image these tests build locally.
const dockerImage = "bap-engine-ref:lifecycle-test"

func newDockerBackend(t testing.TB, cli *client.Client) backend.Backend {
	t.Helper()
	image := dockertest.BuildEngineImage(t, dockerImage)
	dep := "bapl-" + uuid.NewString()[:8]
	dockertest.CleanupDeployment(t, cli, dep, dep+"-net")
	b, err := docker.New(context.Background(), docker.Config{
		Network:      dep + "-net",
		Deployment:   dep,
		DefaultImage: image,
		// The engine image holds the bap-engine binary too: it serves as
		// the snapshot helper, as the orchestrator's own image would.
		HelperImage: image,
	})
	require.NoError(t, err)
	t.Cleanup(func() { b.Close() })
	return b
}

// containerGone reports whether an engine's container and volume are gone.
func containerGone(t *testing.T, cli *client.Client, engineID string) bool {
	ctx := context.Background()
	if _, err := cli.ContainerInspect(ctx, docker.ContainerName(engineID), client.ContainerInspectOptions{}); err == nil {
		return false
	}
	if _, err := cli.VolumeInspect(ctx, docker.VolumeName(engineID), client.VolumeInspectOptions{}); err == nil {
		return false
	}
	return true
}

func TestLifecycleDocker(t *testing.T) {
	cli := dockertest.Client(t)
	prev, prevUp, prevRefused := testImage, upgradeImage, refusedImage
	testImage = dockertest.BuildEngineImage(t, dockerImage)
	upgradeImage = dockertest.DeriveImage(t, testImage, dockerImage+"-next", map[string]string{"ENGINE_VERSION": "next"})
	refusedImage = dockertest.DeriveImage(t, testImage, dockerImage+"-refused",
		map[string]string{"ENGINE_VERSION": "refused", "ENGINE_REFUSE_VERSIONS": "refused"})
	t.Cleanup(func() { testImage, upgradeImage, refusedImage = prev, prevUp, prevRefused })
	lifecycleSuite(t, func(t testing.TB) backend.Backend { return newDockerBackend(t, cli) },
		func(t *testing.T, engineID string) bool { return containerGone(t, cli, engineID) })
}

// BenchmarkDockerProvision, BenchmarkDockerWake and BenchmarkDockerRotateKey
// are the Docker counterparts of the subprocess benchmarks.
func BenchmarkDockerProvision(b *testing.B) {
	cli := dockertest.Client(b)
	testImage = dockertest.BuildEngineImage(b, dockerImage)
	benchProvision(b, func(t testing.TB) backend.Backend { return newDockerBackend(t, cli) })
}

func BenchmarkDockerWake(b *testing.B) {
	cli := dockertest.Client(b)
	testImage = dockertest.BuildEngineImage(b, dockerImage)
	for _, mode := range []string{"mark", "pause", "stop"} {
		b.Run(mode, func(b *testing.B) {
			benchWake(b, mode, func(t testing.TB) backend.Backend { return newDockerBackend(t, cli) })
		})
	}
}

func BenchmarkDockerRotateKey(b *testing.B) {
	cli := dockertest.Client(b)
	testImage = dockertest.BuildEngineImage(b, dockerImage)
	benchRotate(b, func(t testing.TB) backend.Backend { return newDockerBackend(t, cli) })
}

// dockerProxy forwards a unix socket to the Docker daemon's, and can be
// taken down and up again to make the daemon unreachable for a backend.
type dockerProxy struct {
	path string
	mu   sync.Mutex
	ln   net.Listener
	conn []net.Conn
}

func newDockerProxy(t *testing.T) *dockerProxy {
	p := &dockerProxy{path: filepath.Join(t.TempDir(), "docker.sock")}
	p.up(t)
	t.Cleanup(p.down)
	return p
}

func (p *dockerProxy) up(t *testing.T) {
	ln, err := net.Listen("unix", p.path)
	require.NoError(t, err)
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			d, err := net.Dial("unix", "/var/run/docker.sock")
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conn = append(p.conn, c, d)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(d, c); d.Close() }()
			go func() { _, _ = io.Copy(c, d); c.Close() }()
		}
	}()
}

// down closes the listener and every open connection.
func (p *dockerProxy) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for _, c := range p.conn {
		c.Close()
	}
	p.conn = nil
	_ = os.Remove(p.path)
}

// TestDockerUnreachableFailsNoEngine makes the Docker daemon unreachable
// under running, stopped and failed engines: operations answer
// BACKEND_UNAVAILABLE, reconciliation and auto-restart back off, and no
// engine is marked failed or loses a restart attempt because of it.
func TestDockerUnreachableFailsNoEngine(t *testing.T) {
	cli := dockertest.Client(t)
	testImage = dockertest.BuildEngineImage(t, dockerImage)
	proxy := newDockerProxy(t)
	dep := "bapu-" + uuid.NewString()[:8]
	dockertest.CleanupDeployment(t, cli, dep, dep+"-net")
	be, err := docker.New(context.Background(), docker.Config{
		Network: dep + "-net", Deployment: dep, DefaultImage: testImage,
		Host: "unix://" + proxy.path,
	})
	require.NoError(t, err)
	t.Cleanup(func() { be.Close() })
	en := newEnv(t, be, envOptions{restart: lifecycle.RestartPolicy{MaxAttempts: 3}})
	ctx := context.Background()

	running, err := en.lm.Provision(ctx, en.product, "runs", "", "test")
	require.NoError(t, err)
	stopped, err := en.lm.Provision(ctx, en.product, "stopped", "", "test")
	require.NoError(t, err)
	_, err = en.lm.Stop(ctx, stopped.Engine.ID, "test")
	require.NoError(t, err)
	broken, err := en.lm.Provision(ctx, en.product, "broken", "", "test")
	require.NoError(t, err)
	marked, err := en.lm.MarkFailed(ctx, broken.Engine.ID, audit.HealthFailed, "test", nil)
	require.NoError(t, err)
	require.True(t, marked)

	crashCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go en.lm.WatchCrashes(crashCtx, nil)

	proxy.down()

	_, err = en.lm.Reconcile(ctx)
	require.Error(t, err, "reconciliation cannot list instances")
	_, err = en.lm.Start(ctx, stopped.Engine.ID, "test")
	require.Equal(t, bap.CodeBackendUnavailable, errCode(err))
	out, err := en.lm.AutoRestart(ctx, broken.Engine.ID)
	require.NoError(t, err)
	require.Equal(t, lifecycle.RestartDeferred, out)
	require.True(t, answers(running.Engine.URL), "engines keep serving without the daemon")

	states := map[string]bap.State{}
	for _, r := range []lifecycle.Result{running, stopped, broken} {
		e, err := en.store.GetEngine(ctx, r.Engine.ID)
		require.NoError(t, err)
		states[r.Engine.UserID] = e.Status
		if r.Engine.UserID == "broken" {
			require.Zero(t, e.RestartAttempts, "a deferred attempt is not counted")
		}
	}
	require.Equal(t, map[string]bap.State{"runs": bap.StateRunning, "stopped": bap.StateStopped, "broken": bap.StateFailed}, states)

	proxy.up(t)
	_, err = en.lm.Start(ctx, stopped.Engine.ID, "test")
	require.NoError(t, err)
	out, err = en.lm.AutoRestart(ctx, broken.Engine.ID)
	require.NoError(t, err)
	require.Equal(t, lifecycle.RestartSucceeded, out)
	st, err := en.lm.Reconcile(ctx)
	require.NoError(t, err)
	require.Zero(t, st.RunningLost)
}
