package backendtest

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/september/bap-engine/internal/backend"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newFake(t *testing.T) *Fake {
	f := NewFake()
	t.Cleanup(f.Close)
	return f
}

func TestFakeConformance(t *testing.T) {
	Run(t, func(t *testing.T) backend.Backend { return newFake(t) }, "", Options{
		Kill: func(t *testing.T, b backend.Backend, engineID string) {
			require.NoError(t, b.(*Fake).Crash(engineID, 137))
		},
	})
}

// fakeEngine sets up one created engine on f.
func setupFakeEngine(t *testing.T, f *Fake) (backend.Spec, string, string) {
	t.Helper()
	key, hash := NewKey()
	spec := backend.Spec{EngineID: uuid.NewString(), ProductID: "p", Port: FreePort(t), KeyHash: hash}
	_, err := f.Create(context.Background(), spec)
	require.NoError(t, err)
	return spec, key, f.URL(spec.EngineID, spec.Port)
}

func healthStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url + "/health")
	require.NoError(t, err)
	_ = resp.Body.Close()
	return resp.StatusCode
}

func TestFakeErrorKnobsAndCounters(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	ctx := context.Background()
	boom := errors.New("boom")

	f.SetCreateError(backend.ErrUnavailable)
	_, err := f.Create(ctx, backend.Spec{EngineID: "e1", Port: FreePort(t), KeyHash: "h"})
	require.ErrorIs(t, err, backend.ErrUnavailable)
	_, err = f.Inspect(ctx, "e1")
	require.ErrorIs(t, err, backend.ErrNotFound, "a failed create leaves nothing")
	f.SetCreateError(nil)

	spec, _, url := setupFakeEngine(t, f)
	f.SetStartError(boom)
	require.ErrorIs(t, f.Start(ctx, spec.EngineID), boom)
	require.ErrorIs(t, f.Start(ctx, spec.EngineID), boom)
	f.SetStartError(nil)

	f.FailNext(MethodStart, backend.ErrUnavailable)
	require.ErrorIs(t, f.Start(ctx, spec.EngineID), backend.ErrUnavailable)
	require.NoError(t, f.Start(ctx, spec.EngineID), "FailNext fails one call only")
	require.NoError(t, WaitHealthy(ctx, url))

	require.Equal(t, 2, f.Calls(MethodCreate))
	require.Equal(t, 4, f.Calls(MethodStart))
	require.Equal(t, 1, f.Calls(MethodInspect))
	require.Zero(t, f.Calls(MethodStop))
}

func TestFakeBootDelayAndUnhealthy(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	ctx := context.Background()
	spec, _, url := setupFakeEngine(t, f)
	f.SetBootDelay(time.Hour)
	require.NoError(t, f.Start(ctx, spec.EngineID))
	require.Equal(t, http.StatusServiceUnavailable, healthStatus(t, url), "still booting")
	f.SetBootDelay(0)
	require.Equal(t, http.StatusOK, healthStatus(t, url))

	f.SetUnhealthy(spec.EngineID, true)
	require.Equal(t, http.StatusServiceUnavailable, healthStatus(t, url))
	f.SetUnhealthy(AllEngines, false)
	require.Equal(t, http.StatusServiceUnavailable, healthStatus(t, url), "the engine's own setting wins")
	f.SetUnhealthy(spec.EngineID, false)
	require.Equal(t, http.StatusOK, healthStatus(t, url))
	require.Equal(t, 2, f.Probes(spec.EngineID), "only successful probes count")

	other, _, otherURL := setupFakeEngine(t, f)
	f.SetUnhealthy(AllEngines, true)
	require.NoError(t, f.Start(ctx, other.EngineID))
	require.Equal(t, http.StatusServiceUnavailable, healthStatus(t, otherURL))
}

func TestFakeCrashAfterProbes(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := f.Events(ctx)
	spec, key, url := setupFakeEngine(t, f)
	f.CrashAfterProbes(AllEngines, 2)
	require.NoError(t, f.Start(ctx, spec.EngineID))
	require.Equal(t, http.StatusOK, healthStatus(t, url))
	require.Equal(t, http.StatusOK, healthStatus(t, url))

	select {
	case ev := <-events:
		require.Equal(t, spec.EngineID, ev.EngineID)
		require.Equal(t, CrashExitCode, ev.ExitCode)
	case <-time.After(10 * time.Second):
		t.Fatal("no crash event")
	}
	inst, err := f.Inspect(ctx, spec.EngineID)
	require.NoError(t, err)
	require.Equal(t, backend.StatusExited, inst.Status)
	require.Equal(t, CrashExitCode, inst.ExitCode)
	_, err = http.Get(url + "/health")
	require.Error(t, err, "a crashed engine does not answer")
	require.ErrorIs(t, f.Crash(spec.EngineID, 1), backend.ErrConflict)
	require.ErrorIs(t, f.Crash("missing", 1), backend.ErrNotFound)

	// Disabled for this engine, it stays up; the brain survived the crash.
	f.CrashAfterProbes(spec.EngineID, 0)
	require.NoError(t, f.Start(ctx, spec.EngineID))
	for range 3 {
		require.Equal(t, http.StatusOK, healthStatus(t, url))
	}
	e := &engine{b: f, spec: spec, key: key, url: url}
	require.Equal(t, 1, execute(t, e, "x"))
}

func TestFakeChosenPort(t *testing.T) {
	t.Parallel()
	f := newFake(t)
	ctx := context.Background()
	_, hash := NewKey()
	spec := backend.Spec{EngineID: uuid.NewString(), KeyHash: hash}
	_, err := f.Create(ctx, spec)
	require.NoError(t, err)
	url := f.URL(spec.EngineID, 0)
	require.NotEqual(t, "http://127.0.0.1:0", url)
	require.NoError(t, f.Start(ctx, spec.EngineID))
	require.NoError(t, WaitHealthy(ctx, url))
}
