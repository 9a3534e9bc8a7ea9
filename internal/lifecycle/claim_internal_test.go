package lifecycle

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/registrytest"
	"github.com/september/bap-engine/internal/registry/sqlite"
)

// TestWriteEngineEnforcesTheTransitionTable: the one commit path refuses a
// state change the table does not allow, and writes the allowed ones.
func TestWriteEngineEnforcesTheTransitionTable(t *testing.T) {
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "registry.db"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	p := registrytest.NewProduct(t, store)
	for _, tc := range []struct {
		from, to bap.State
		ok       bool
	}{
		{bap.StateStopped, bap.StateProvisioning, false},
		{bap.StateStopped, bap.StateSleeping, false},
		{bap.StateDestroying, bap.StateRunning, false},
		{bap.StateProvisioning, bap.StateStopped, false},
		{bap.StateStopped, bap.StateRunning, true},
		{bap.StateRunning, bap.StateDestroying, true},
		{bap.StateFailed, bap.StateFailed, true},
	} {
		e := registrytest.NewEngine(t, store, p.ID, "u-"+string(tc.from)+"-"+string(tc.to), registrytest.WithStatus(tc.from))
		err := store.InTx(ctx, func(tx registry.Store) error {
			cur, err := tx.LockEngine(ctx, e.ID)
			require.NoError(t, err)
			next := cur
			next.Status = tc.to
			return writeEngine(ctx, tx, cur, next, nil)
		})
		got, gerr := store.GetEngine(ctx, e.ID)
		require.NoError(t, gerr)
		if tc.ok {
			require.NoError(t, err, "%s → %s", tc.from, tc.to)
			require.Equal(t, tc.to, got.Status)
		} else {
			require.ErrorContains(t, err, "not in the transition table", "%s → %s", tc.from, tc.to)
			require.Equal(t, tc.from, got.Status, "nothing written")
		}
	}
}
