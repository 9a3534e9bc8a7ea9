package docker

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/events"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/testclock"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want error
	}{
		{nil, nil},
		{fmt.Errorf("daemon: %w", cerrdefs.ErrNotFound), backend.ErrNotFound},
		{fmt.Errorf("daemon: %w", cerrdefs.ErrConflict), backend.ErrConflict},
		{fmt.Errorf("daemon: %w", cerrdefs.ErrUnavailable), backend.ErrUnavailable},
		{fmt.Errorf("call: %w", context.DeadlineExceeded), backend.ErrUnavailable},
		{fmt.Errorf("dial: %w", syscall.ECONNREFUSED), backend.ErrUnavailable},
		{fmt.Errorf("read: %w", syscall.ECONNRESET), backend.ErrUnavailable},
		{fmt.Errorf("daemon: %w", cerrdefs.ErrInvalidArgument), nil},
		{errors.New("something else"), nil},
		{context.Canceled, nil}, // the caller gave up: not the daemon's fault
	} {
		require.Equal(t, tc.want, classify(tc.err), "%v", tc.err)
	}
}

func TestWrapKeepsClassAndCause(t *testing.T) {
	t.Parallel()
	cause := fmt.Errorf("Error response from daemon: No such container: x: %w", cerrdefs.ErrNotFound)
	err := wrap(cause, "start container %s", "engine-x")
	require.ErrorIs(t, err, backend.ErrNotFound)
	require.ErrorIs(t, err, cerrdefs.ErrNotFound)
	require.ErrorContains(t, err, "start container engine-x")
	require.ErrorContains(t, err, "No such container")
	require.NoError(t, wrap(nil, "nothing"))

	plain := wrap(errors.New("boom"), "op")
	require.EqualError(t, plain, "op: boom")
}

func TestStatusMapping(t *testing.T) {
	t.Parallel()
	for in, want := range map[container.ContainerState]backend.Status{
		container.StateCreated:    backend.StatusCreated,
		container.StateRunning:    backend.StatusRunning,
		container.StatePaused:     backend.StatusPaused,
		container.StateExited:     backend.StatusExited,
		container.StateRestarting: backend.StatusExited,
		container.StateDead:       backend.StatusExited,
		container.StateRemoving:   backend.StatusExited,
	} {
		require.Equal(t, want, status(in), in)
	}
}

func TestExitCodeFromStatus(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int{
		"Exited (137) 5 seconds ago": 137,
		"Exited (0) About a minute":  0,
		"Exited (1)":                 1,
		"Up 3 minutes":               0,
		"Up 3 minutes (Paused)":      0,
		"Created":                    0,
		"Exited (x) garbage":         0,
		"Exited (12":                 0,
	} {
		require.Equal(t, want, exitCodeFromStatus(in), in)
	}
}

func TestNames(t *testing.T) {
	t.Parallel()
	id := "0d9f6e2a-1b2c-4d5e-8f90-123456789abc"
	require.Equal(t, "engine-"+id, ContainerName(id))
	require.Equal(t, "engine-data-0d9f6e2a-1b2", VolumeName(id))
	require.Equal(t, "engine-data-short", VolumeName("short"))
}

func TestEnvPassesOnlyTheContractAndPassthrough(t *testing.T) {
	t.Parallel()
	cfg, err := Config{
		Passthrough: []string{" LANG_MODEL ", "", "UNSET", "SQLITE_DB_PATH", "A=B", "CATALOG_DIR"},
		Getenv: func(k string) string {
			return map[string]string{"LANG_MODEL": "m1", "SQLITE_DB_PATH": "/evil", "SECRET": "s"}[k]
		},
	}.withDefaults()
	require.NoError(t, err)
	b := &Backend{cfg: cfg}
	require.Equal(t, []string{
		"ENGINE_KEY_HASH=h",
		"SQLITE_DB_PATH=/data/brain.sqlite",
		"CATALOG_DIR=/catalog",
		"LANG_MODEL=m1",
	}, b.env(backend.Spec{KeyHash: "h"}))
}

func TestOwnStops(t *testing.T) {
	t.Parallel()
	c := testclock.Fixed(time.Date(2026, 4, 27, 12, 0, 0, 0, time.UTC))
	o := newOwnStops()
	o.now = c.Now
	t0 := c.Now()

	require.False(t, o.expected("e1", t0), "nothing recorded")
	done := o.begin("e1")
	c.Advance(2 * time.Second)
	require.True(t, o.expected("e1", c.Now()), "in flight")
	require.False(t, o.expected("e2", c.Now()), "another engine")
	require.False(t, o.expected("e1", t0.Add(-2*time.Second)), "long before it began")
	require.True(t, o.expected("e1", t0.Add(-ownStopSlack/2)), "within the slack before")
	done()
	end := c.Now()
	require.True(t, o.expected("e1", end.Add(ownStopSlack/2)), "stamped just after it returned")
	require.False(t, o.expected("e1", end.Add(2*ownStopSlack)), "well after it returned")

	// A start cuts the span: a die after it is a crash even within the slack.
	c.Advance(ownStopSlack / 4)
	o.started("e1")
	cut := c.Now()
	require.True(t, o.expected("e1", end), "the stop's own die is still ours")
	require.False(t, o.expected("e1", cut), "a die of the new life is not")
	require.False(t, o.expected("e1", cut.Add(time.Millisecond)))

	// Finished spans are forgotten after ownStopKeep.
	c.Advance(ownStopKeep + time.Minute)
	_ = o.begin("e3")
	o.mu.Lock()
	_, kept := o.spans["e1"]
	o.mu.Unlock()
	require.False(t, kept)
}

func TestCursor(t *testing.T) {
	t.Parallel()
	start := time.Unix(1_800_000_000, 500)
	c := cursor{start: start}
	require.Equal(t, "1800000000.000000500", c.since(), "replays from the watch start until an event is seen")

	msg := func(id string, ns int64) events.Message {
		return events.Message{Actor: events.Actor{ID: id}, TimeNano: ns}
	}
	base := start.UnixNano() + 1000
	require.True(t, c.fresh(msg("a", base)))
	require.False(t, c.fresh(msg("a", base)), "the same event replayed")
	require.True(t, c.fresh(msg("b", base)), "another container at the same instant")
	require.False(t, c.fresh(msg("c", base-1)), "older than what was seen")
	require.True(t, c.fresh(msg("a", base+1)))
	require.Equal(t, fmt.Sprintf("%d.%09d", (base+1)/1e9, (base+1)%1e9), c.since())

	// An event stamped before the watch began (a daemon clock behind ours)
	// is still delivered when it is the first.
	early := cursor{start: start}
	require.True(t, early.fresh(msg("a", start.UnixNano()-int64(time.Hour))))
}

func TestNextBackoff(t *testing.T) {
	t.Parallel()
	for in, want := range map[time.Duration]time.Duration{
		0:                   watchBackoffMin,
		watchBackoffMin:     2 * watchBackoffMin,
		time.Second:         2 * time.Second,
		watchBackoffMax:     watchBackoffMax,
		watchBackoffMax - 1: watchBackoffMax,
		3 * time.Second:     watchBackoffMax,
		watchBackoffMin / 2: watchBackoffMin,
	} {
		require.Equal(t, want, nextBackoff(in), in)
	}
}

func TestEventTime(t *testing.T) {
	t.Parallel()
	require.Equal(t, time.Unix(0, 1_700_000_000_123456789), eventTime(events.Message{TimeNano: 1_700_000_000_123456789, Time: 1}))
	require.Equal(t, time.Unix(1_700_000_000, 0), eventTime(events.Message{Time: 1_700_000_000}))
	require.WithinDuration(t, time.Now(), eventTime(events.Message{}), time.Minute)
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := Config{}.withDefaults()
	require.NoError(t, err)
	require.Equal(t, DefaultNetwork, cfg.Network)
	require.Equal(t, DefaultDeployment, cfg.Deployment)
	require.Equal(t, URLModeHost, cfg.URLMode)
	require.Equal(t, DefaultEngineHost, cfg.EngineHost)
	require.Equal(t, DefaultCallTimeout, cfg.CallTimeout)
	require.Equal(t, DefaultImage, cfg.DefaultImage)
	require.NotNil(t, cfg.Getenv)
	require.NotNil(t, cfg.Logger)

	_, err = Config{URLMode: "both"}.withDefaults()
	require.Error(t, err)
	_, err = Config{CallTimeout: -time.Second}.withDefaults()
	require.Error(t, err)
}
