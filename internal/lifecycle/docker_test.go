package lifecycle_test

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/backend/docker"
	"github.com/september/bap-engine/internal/backend/docker/dockertest"
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
	prev := testImage
	testImage = dockertest.BuildEngineImage(t, dockerImage)
	t.Cleanup(func() { testImage = prev })
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
