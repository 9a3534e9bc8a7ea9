package backendtest

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/backend"
)

func (s *suite) testName(t *testing.T) {
	t.Parallel()
	require.NotEmpty(t, s.newBackend(t).Name())
}

func (s *suite) testMissingEngine(t *testing.T) {
	t.Parallel()
	b := s.newBackend(t)
	ctx := ctxFor(t, time.Minute)
	id := uuid.NewString()
	_, err := b.Inspect(ctx, id)
	require.ErrorIs(t, err, backend.ErrNotFound)
	require.ErrorIs(t, b.Start(ctx, id), backend.ErrNotFound)
	require.ErrorIs(t, b.Pause(ctx, id), backend.ErrNotFound)
	require.ErrorIs(t, b.Unpause(ctx, id), backend.ErrNotFound)
	require.NoError(t, b.Stop(ctx, id, time.Second), "stopping a missing engine is success")
	require.NoError(t, b.Remove(ctx, id), "removing a missing engine is success")
	require.NoError(t, b.Destroy(ctx, id), "destroying a missing engine is success")
	list, err := b.List(ctx)
	require.NoError(t, err)
	for _, inst := range list {
		require.NotEqual(t, id, inst.EngineID)
	}
}

func (s *suite) testCreateIdempotent(t *testing.T) {
	t.Parallel()
	b := s.newBackend(t)
	e := s.newEngine(t, b)
	first := s.create(t, e)
	require.Equal(t, e.spec.EngineID, first.EngineID)
	require.Equal(t, e.spec.ProductID, first.ProductID)
	require.Equal(t, backend.StatusCreated, first.Status)
	require.NotEmpty(t, first.ID)
	require.False(t, first.CreatedAt.IsZero())

	again := s.create(t, e)
	require.Equal(t, first.ID, again.ID, "the same spec adopts the existing instance")
	require.Equal(t, backend.StatusCreated, s.inspect(t, e).Status)

	// Created but never started: pausing it is a conflict.
	require.ErrorIs(t, b.Pause(ctxFor(t, time.Minute), e.spec.EngineID), backend.ErrConflict)

	// A running instance is adopted as is by the same spec.
	s.start(t, e)
	running := s.create(t, e)
	require.Equal(t, first.ID, running.ID)
	require.Equal(t, backend.StatusRunning, running.Status)
	require.NoError(t, probe(context.Background(), e.url, 5*time.Second), "adopting does not restart")

	// A different spec replaces it: the new instance exists, not started.
	e.spec.Port = FreePort(t)
	e.url = b.URL(e.spec.EngineID, e.spec.Port)
	replaced := s.create(t, e)
	require.Equal(t, backend.StatusCreated, replaced.Status)
	list, err := b.List(ctxFor(t, time.Minute))
	require.NoError(t, err)
	n := 0
	for _, inst := range list {
		if inst.EngineID == e.spec.EngineID {
			n++
		}
	}
	require.Equal(t, 1, n, "one instance per engine")
	s.start(t, e)
	require.Equal(t, backend.StatusRunning, s.inspect(t, e).Status)
}

func (s *suite) testStartStopKeepsBrain(t *testing.T) {
	t.Parallel()
	b, e := s.running(t)
	require.Equal(t, backend.StatusRunning, s.inspect(t, e).Status)

	require.Equal(t, 0, counter(t, e, e.key))
	status, _ := call(t, http.MethodGet, e.url+"/brain", "sk-sept-wrong", nil)
	require.Equal(t, http.StatusUnauthorized, status)
	status, _ = call(t, http.MethodGet, e.url+"/brain", "", nil)
	require.Equal(t, http.StatusUnauthorized, status)
	require.Equal(t, 1, execute(t, e, "remember me"))

	// Starting a running engine is success and leaves it serving.
	require.NoError(t, b.Start(ctxFor(t, time.Minute), e.spec.EngineID))
	require.NoError(t, WaitHealthy(ctxFor(t, s.opts.BootTimeout), e.url))

	s.stop(t, e)
	requireNotAnswering(t, e.url)
	require.Equal(t, backend.StatusExited, s.inspect(t, e).Status)
	s.stop(t, e) // stopping a stopped engine is success

	s.start(t, e)
	require.Equal(t, backend.StatusRunning, s.inspect(t, e).Status)
	require.Equal(t, 1, counter(t, e, e.key), "the brain survives stop and start")
	require.Equal(t, 2, execute(t, e, "again"))
}

func (s *suite) testPauseUnpause(t *testing.T) {
	t.Parallel()
	b, e := s.running(t)
	ctx := ctxFor(t, time.Minute)
	require.Equal(t, 1, execute(t, e, "before sleep"))

	require.NoError(t, b.Pause(ctx, e.spec.EngineID))
	require.Equal(t, backend.StatusPaused, s.inspect(t, e).Status)
	requireNotAnswering(t, e.url)

	require.NoError(t, b.Unpause(ctx, e.spec.EngineID))
	e.refreshURL()
	require.NoError(t, WaitHealthy(ctxFor(t, s.opts.BootTimeout), e.url))
	require.Equal(t, backend.StatusRunning, s.inspect(t, e).Status)
	require.NoError(t, b.Unpause(ctx, e.spec.EngineID), "unpausing a running engine is success")
	require.Equal(t, 1, counter(t, e, e.key))

	// A paused engine can be stopped, and a stopped one cannot be paused.
	require.NoError(t, b.Pause(ctx, e.spec.EngineID))
	s.stop(t, e)
	require.Equal(t, backend.StatusExited, s.inspect(t, e).Status)
	requireNotAnswering(t, e.url)
	require.ErrorIs(t, b.Pause(ctx, e.spec.EngineID), backend.ErrConflict)
}

func (s *suite) testRemoveKeepsData(t *testing.T) {
	t.Parallel()
	b, e := s.running(t)
	ctx := ctxFor(t, time.Minute)
	require.Equal(t, 1, execute(t, e, "keep this"))

	requireGone(t, b, e, b.Remove)
	require.ErrorIs(t, b.Start(ctx, e.spec.EngineID), backend.ErrNotFound, "a removed instance must be recreated")

	// Recreate with a new key on the same data (what rotate-key does).
	oldKey := e.key
	e.key, e.spec.KeyHash = NewKey()
	s.create(t, e)
	s.start(t, e)
	status, _ := call(t, http.MethodGet, e.url+"/brain", oldKey, nil)
	require.Equal(t, http.StatusUnauthorized, status, "the old key no longer works")
	require.Equal(t, 1, counter(t, e, e.key), "the brain survives remove and recreate")
}

// requireGone removes e's instance with remove (Remove or Destroy): it no
// longer answers nor exists, and removing it again is success.
func requireGone(t *testing.T, b backend.Backend, e *engine, remove func(context.Context, string) error) {
	t.Helper()
	ctx := ctxFor(t, time.Minute)
	require.NoError(t, remove(ctx, e.spec.EngineID))
	requireNotAnswering(t, e.url)
	_, err := b.Inspect(ctx, e.spec.EngineID)
	require.ErrorIs(t, err, backend.ErrNotFound)
	require.NoError(t, remove(ctx, e.spec.EngineID), "removing twice is success")
}

func (s *suite) testDestroyDeletesData(t *testing.T) {
	t.Parallel()
	b, e := s.running(t)
	ctx := ctxFor(t, time.Minute)
	require.Equal(t, 1, execute(t, e, "forget this"))

	requireGone(t, b, e, b.Destroy)
	list, err := b.List(ctx)
	require.NoError(t, err)
	for _, inst := range list {
		require.NotEqual(t, e.spec.EngineID, inst.EngineID)
	}

	// Same id again: a fresh brain.
	s.create(t, e)
	s.start(t, e)
	require.Equal(t, 0, counter(t, e, e.key), "destroy deleted the data")
}

func (s *suite) testListScoped(t *testing.T) {
	t.Parallel()
	mine, theirs := s.newBackend(t), s.newBackend(t)
	a := s.newEngine(t, mine)
	b1 := s.newEngine(t, theirs)
	b2 := s.newEngine(t, theirs)
	s.create(t, a)
	s.create(t, b1)
	s.create(t, b2)
	s.start(t, b1)

	ids := func(bk backend.Backend) map[string]backend.Instance {
		list, err := bk.List(ctxFor(t, time.Minute))
		require.NoError(t, err)
		out := map[string]backend.Instance{}
		for _, inst := range list {
			out[inst.EngineID] = inst
		}
		return out
	}
	got := ids(mine)
	require.Contains(t, got, a.spec.EngineID)
	require.NotContains(t, got, b1.spec.EngineID)
	require.NotContains(t, got, b2.spec.EngineID)
	require.Equal(t, a.spec.ProductID, got[a.spec.EngineID].ProductID)
	require.Equal(t, backend.StatusCreated, got[a.spec.EngineID].Status)

	got = ids(theirs)
	require.NotContains(t, got, a.spec.EngineID)
	require.Contains(t, got, b1.spec.EngineID)
	require.Contains(t, got, b2.spec.EngineID)
	require.Equal(t, backend.StatusRunning, got[b1.spec.EngineID].Status)
	require.Equal(t, backend.StatusCreated, got[b2.spec.EngineID].Status)
}

func (s *suite) testEvents(t *testing.T) {
	t.Parallel()
	b := s.newBackend(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := b.Events(ctx)

	stopped, killed := s.newEngine(t, b), s.newEngine(t, b)
	for _, e := range []*engine{stopped, killed} {
		s.create(t, e)
		s.start(t, e)
	}
	// An exit the orchestrator asked for is no event ...
	s.stop(t, stopped)
	// ... an outside kill is.
	s.opts.Kill(t, b, killed.spec.EngineID)

	timeout := time.After(s.opts.EventTimeout)
	for got := false; !got; {
		select {
		case ev, ok := <-events:
			require.True(t, ok, "events closed early")
			require.NotEqual(t, stopped.spec.EngineID, ev.EngineID, "Stop must not be reported as a crash")
			if ev.EngineID == killed.spec.EngineID {
				require.False(t, ev.At.IsZero())
				got = true
			}
		case <-timeout:
			t.Fatalf("no event for the killed engine %s", killed.spec.EngineID)
		}
	}
	require.Eventually(t, func() bool {
		inst, err := b.Inspect(context.Background(), killed.spec.EngineID)
		return err == nil && inst.Status == backend.StatusExited
	}, s.opts.EventTimeout, 20*time.Millisecond)
	requireNotAnswering(t, killed.url)

	// The killed engine starts again on its data.
	s.start(t, killed)

	cancel()
	select {
	case _, ok := <-drain(events):
		require.False(t, ok)
	case <-time.After(s.opts.EventTimeout):
		t.Fatal("Events channel not closed after its context ended")
	}
}

// drain forwards nothing and closes when events closes: it reports the
// close of a channel that may still hold undelivered events.
func drain(events <-chan backend.Event) <-chan backend.Event {
	out := make(chan backend.Event)
	go func() {
		for range events {
		}
		close(out)
	}()
	return out
}

// readLogs returns the whole of a Logs answer.
func readLogs(t *testing.T, b backend.Backend, engineID string, opts backend.LogOptions) string {
	t.Helper()
	rc, err := b.Logs(ctxFor(t, 30*time.Second), engineID, opts)
	require.NoError(t, err)
	defer rc.Close()
	data, err := io.ReadAll(rc)
	require.NoError(t, err)
	return string(data)
}

func (s *suite) testLogs(t *testing.T) {
	b := s.newBackend(t)
	_, err := b.Logs(ctxFor(t, 30*time.Second), uuid.NewString(), backend.LogOptions{})
	require.ErrorIs(t, err, backend.ErrNotFound)

	e := s.newEngine(t, b)
	s.create(t, e)
	s.start(t, e)
	execute(t, e, "remember me")
	var all string
	require.Eventually(t, func() bool {
		all = readLogs(t, b, e.spec.EngineID, backend.LogOptions{})
		return strings.Contains(all, `"/execute"`)
	}, 10*time.Second, 50*time.Millisecond, "the engine's own request log reaches Logs")
	require.NotContains(t, all, e.key, "the engine's key is never in its log")
	lines := strings.Split(strings.TrimSuffix(all, "\n"), "\n")
	require.Greater(t, len(lines), 1)
	require.Equal(t, lines[len(lines)-1]+"\n", readLogs(t, b, e.spec.EngineID, backend.LogOptions{Tail: 1}))
	require.Equal(t, strings.Join(lines[len(lines)-2:], "\n")+"\n", readLogs(t, b, e.spec.EngineID, backend.LogOptions{Tail: 2}))

	// Follow: the last line, then what the engine writes next, until ctx ends.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rc, err := b.Logs(ctx, e.spec.EngineID, backend.LogOptions{Tail: 1, Follow: true})
	require.NoError(t, err)
	defer rc.Close()
	got := Lines(rc)
	require.Equal(t, lines[len(lines)-1], waitLine(t, got))
	call(t, http.MethodGet, e.url+"/brain", e.key, nil)
	for line := waitLine(t, got); !strings.Contains(line, `"/brain"`); line = waitLine(t, got) {
	}
	cancel()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-got:
			if !ok {
				// A stopped engine's log stays readable.
				s.stop(t, e)
				require.Contains(t, readLogs(t, b, e.spec.EngineID, backend.LogOptions{}), `"/brain"`)
				return
			}
		case <-deadline:
			t.Fatal("a followed log did not end with its ctx")
		}
	}
}

// waitLine is the next line of a followed log, within 10 s.
func waitLine(t *testing.T, lines <-chan string) string {
	t.Helper()
	return Receive(t, lines, 10*time.Second, "line of the followed log")
}

// testSnapshots: a snapshot copies the brain of a stopped engine, a restore
// brings it back after the brain changed, prune keeps the newest, and
// destroy deletes them all.
func (s *suite) testSnapshots(t *testing.T) {
	t.Parallel()
	b := s.newBackend(t)
	e := s.newEngine(t, b)
	ctx := ctxFor(t, 2*time.Minute)
	id := e.spec.EngineID
	_, err := b.Snapshot(ctx, id)
	require.ErrorIs(t, err, backend.ErrNotFound, "no data, no snapshot")
	s.create(t, e)
	s.start(t, e)
	require.Equal(t, 1, execute(t, e, "before the snapshot"))
	_, err = b.Snapshot(ctx, id)
	require.ErrorIs(t, err, backend.ErrConflict, "a running engine is not snapshotted")
	s.stop(t, e)

	first, err := b.Snapshot(ctx, id)
	require.NoError(t, err)
	s.start(t, e)
	require.Equal(t, 2, execute(t, e, "after the snapshot"))
	s.stop(t, e)
	second, err := b.Snapshot(ctx, id)
	require.NoError(t, err)
	require.NotEqual(t, first, second)

	require.NoError(t, b.Restore(ctx, id, first))
	s.start(t, e)
	require.Equal(t, 1, counter(t, e, e.key), "restored to the first snapshot")
	require.Equal(t, 2, execute(t, e, "again"))
	s.stop(t, e)
	require.ErrorIs(t, b.Restore(ctx, id, "snap-999"), backend.ErrNotFound)

	third, err := b.Snapshot(ctx, id)
	require.NoError(t, err)
	kept, err := b.PruneSnapshots(ctx, id, 2)
	require.NoError(t, err)
	require.Equal(t, []string{second, third}, kept, "the newest are kept, oldest first")
	require.ErrorIs(t, b.Restore(ctx, id, first), backend.ErrNotFound, "pruned")
	require.NoError(t, b.Restore(ctx, id, second))
	s.start(t, e)
	require.Equal(t, 2, counter(t, e, e.key))

	require.NoError(t, b.Destroy(ctx, id))
	kept, err = b.PruneSnapshots(ctx, id, 5)
	require.NoError(t, err)
	require.Empty(t, kept, "destroy deletes the snapshots")
}
