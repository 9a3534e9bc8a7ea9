package registry_test

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/sqlite"
)

// TestPrunerDeletesOldRowsOnTheLeaderOnly: each pass deletes the audit rows
// older than the retention, and only while this process is the leader.
func TestPrunerDeletesOldRowsOnTheLeaderOnly(t *testing.T) {
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "registry.db"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	now := bap.Now()
	require.NoError(t, store.AppendAudit(ctx,
		audit.Entry{Timestamp: now.Add(-48 * time.Hour), Action: audit.Provision, Actor: audit.ActorSystem},
		audit.Entry{Timestamp: now.Add(-47 * time.Hour), Action: audit.Stop, Actor: audit.ActorSystem},
		audit.Entry{Timestamp: now.Add(-time.Hour), Action: audit.Start, Actor: audit.ActorSystem},
	))
	var leader atomic.Bool
	tick := make(chan time.Time)
	passes := make(chan int64)
	p := registry.NewPruner(store, registry.PrunerConfig{
		Retention: 24 * time.Hour,
		Tick:      tick,
		Leader:    leader.Load,
		Now:       func() time.Time { return now },
		OnPass: func(n int64, err error) {
			require.NoError(t, err)
			passes <- n
		},
	})
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- p.Run(runCtx) }()

	require.EqualValues(t, -1, <-passes, "not the leader: nothing pruned")
	leader.Store(true)
	tick <- time.Now()
	require.EqualValues(t, 2, <-passes, "the two rows older than a day")
	tick <- time.Now()
	require.EqualValues(t, 0, <-passes)
	cancel()
	require.NoError(t, <-done)
	_, total, err := store.ListAudit(ctx, registry.AuditFilter{})
	require.NoError(t, err)
	require.Equal(t, 1, total)
	require.Panics(t, func() { registry.NewPruner(store, registry.PrunerConfig{}) }, "a retention is required")
}
