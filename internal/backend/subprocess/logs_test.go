package subprocess

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/backend/backendtest"
)

// TestLogsFollowAcrossRotation writes an engine's log file by hand (as the
// engine would) and follows it through Logs while the file is rotated
// away at the engine's next start and a new one begins.
func TestLogsFollowAcrossRotation(t *testing.T) {
	root := t.TempDir()
	b, err := New(Config{Command: []string{"/bin/true"}, DataRoot: root})
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	id := uuid.NewString()
	dir := filepath.Join(root, id)
	require.NoError(t, os.MkdirAll(dir, 0o700))
	path := filepath.Join(dir, logFileName)
	require.NoError(t, os.WriteFile(path, []byte("one\ntwo\nthree"), 0o600))

	read := func(opts backend.LogOptions) string {
		rc, err := b.Logs(context.Background(), id, opts)
		require.NoError(t, err)
		defer rc.Close()
		got, err := io.ReadAll(rc)
		require.NoError(t, err)
		return string(got)
	}
	require.Equal(t, "three", read(backend.LogOptions{Tail: 1}), "a last line without its newline is a line")
	require.Equal(t, "two\nthree", read(backend.LogOptions{Tail: 2}))
	require.Equal(t, "one\ntwo\nthree", read(backend.LogOptions{Tail: 10}))
	require.Equal(t, "one\ntwo\nthree", read(backend.LogOptions{}))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rc, err := b.Logs(ctx, id, backend.LogOptions{Tail: 1, Follow: true})
	require.NoError(t, err)
	defer rc.Close()
	lines := backendtest.Lines(rc)
	next := func() string { return backendtest.Receive(t, lines, 10*time.Second, "line") }
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(t, err)
	_, err = f.WriteString(" (end of three)\nfour\n")
	require.NoError(t, err)
	require.Equal(t, "three (end of three)", next())
	require.Equal(t, "four", next())

	// The next start rotates the file away and writes a new one.
	_, err = f.WriteString("five, written as the old file goes\n")
	require.NoError(t, err)
	require.NoError(t, f.Close())
	require.NoError(t, os.Rename(path, path+".1"))
	require.NoError(t, os.WriteFile(path, []byte("six, in the new file\n"), 0o600))
	require.Equal(t, "five, written as the old file goes", next())
	require.Equal(t, "six, in the new file", next())

	cancel()
	select {
	case _, open := <-lines:
		require.False(t, open, "nothing more after the caller left")
	case <-time.After(10 * time.Second):
		t.Fatal("the followed log did not end with its ctx")
	}

	// An engine without a data directory has no log; a bad id names none.
	_, err = b.Logs(context.Background(), uuid.NewString(), backend.LogOptions{})
	require.ErrorIs(t, err, backend.ErrNotFound)
	_, err = b.Logs(context.Background(), "../escape", backend.LogOptions{})
	require.ErrorIs(t, err, backend.ErrNotFound)
}
