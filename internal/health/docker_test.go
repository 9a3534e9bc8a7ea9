package health_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/september/bap-engine/internal/registry/storetest"

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

// failingStarts makes Start fail while fail is set: an engine that never
// comes back.
type failingStarts struct {
	backend.Backend
	fail atomic.Bool
}

func (f *failingStarts) Start(ctx context.Context, id string) error {
	if f.fail.Load() {
		return errors.New("engine cannot start (injected)")
	}
	return f.Backend.Start(ctx, id)
}

// TestDockerEngineHungKilledAndGivenUp runs the healing paths on real
// containers of the reference engine, on both stores: a frozen container
// fails its probes, goes failed and is restarted with its brain; a killed
// container is noticed by its die event and restarted; one that cannot
// start again ends failed with auto_restart_gave_up.
func TestDockerEngineHungKilledAndGivenUp(t *testing.T) {
	cli := dockertest.Client(t)
	image := dockertest.BuildEngineImage(t, "bap-engine-ref:health-test")
	for _, st := range storetest.Both {
		t.Run(st.Name, func(t *testing.T) {
			ctx := context.Background()
			dep := "baph-" + uuid.NewString()[:8]
			dockertest.CleanupDeployment(t, cli, dep, dep+"-net")
			be, err := docker.New(ctx, docker.Config{Network: dep + "-net", Deployment: dep, DefaultImage: image})
			require.NoError(t, err)
			t.Cleanup(func() { _ = be.Close() })
			flaky := &failingStarts{Backend: be}
			e := newEnv(t, envOptions{store: st.Open(t), backend: flaky, image: image, bootTimeout: 20 * time.Second,
				restart: lifecycle.RestartPolicy{MaxAttempts: 2, BackoffBase: 100 * time.Millisecond, BackoffMax: 400 * time.Millisecond}})
			en, key := e.provision(t, "boxed")
			require.Equal(t, 1, execute(t, en, key))
			cfg := fastConfig()
			cfg.Timeout = 300 * time.Millisecond
			c := startChecker(t, e, cfg, true, true)
			require.Equal(t, 1, c.sweep(t).Probed)
			name := docker.ContainerName(en.ID)

			// Frozen from outside: probes fail, failed, restarted, same brain.
			_, err = cli.ContainerPause(ctx, name, client.ContainerPauseOptions{})
			require.NoError(t, err)
			for range 2 {
				require.Equal(t, 1, c.sweep(t).Failed)
			}
			require.Equal(t, 1, c.sweep(t).MarkedFailed)
			c.restartUntil(t, lifecycle.RestartSucceeded, 3)
			got := e.engine(t, en.ID)
			require.Equal(t, bap.StateRunning, got.Status)
			require.Equal(t, 1, brain(t, got, key))
			requireInOrder(t, e.actions(t, en.ID), audit.HealthFailed, audit.AutoRestartStart, audit.AutoRestartSuccess)

			// Killed from outside: the die event puts it on the restart path.
			require.Equal(t, 2, execute(t, en, key))
			e.awaitWatching(t)
			require.NoError(t, dockertest.Kill(ctx, cli, name))
			r := c.restart(t)
			require.Equal(t, lifecycle.RestartSucceeded, r.Outcome)
			require.Equal(t, 2, brain(t, e.engine(t, en.ID), key))
			actions := e.actions(t, en.ID)
			requireInOrder(t, actions[len(actions)-3:], audit.EngineDied, audit.AutoRestartStart, audit.AutoRestartSuccess)

			// Killed and unable to start again: gives up after the attempts.
			flaky.fail.Store(true)
			require.NoError(t, dockertest.Kill(ctx, cli, name))
			c.restartUntil(t, lifecycle.RestartGaveUp, 3)
			got = e.engine(t, en.ID)
			require.Equal(t, bap.StateFailed, got.Status)
			require.Equal(t, 2, got.RestartAttempts)
			actions = e.actions(t, en.ID)
			require.Equal(t, audit.AutoRestartGaveUp, actions[len(actions)-1])
			c.stop()
		})
	}
}
