// Package storetest opens fresh, migrated stores for tests, closed when the
// test ends: SQLite in the test's temporary directory, PostgreSQL as a
// database of pgtest's cluster (one per test binary; the binary's TestMain
// runs pgtest.Main or testmain.Run). Each runs a test once per store.
package storetest

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/pgtest"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/postgres"
	"github.com/september/bap-engine/internal/registry/sqlite"
)

// SQLite returns a fresh SQLite store in t's temporary directory.
func SQLite(t testing.TB) registry.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "registry.db"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Postgres returns a fresh PostgreSQL store: a database of its own, cloned
// from the migrated template (skipped without PostgreSQL, failed when
// CI=true).
func Postgres(t testing.TB) registry.Store {
	t.Helper()
	s, err := postgres.Open(context.Background(), pgtest.URL(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Opener names a store kind and opens a fresh one.
type Opener struct {
	Name string
	Open func(t testing.TB) registry.Store
}

// Both are SQLite and PostgreSQL, in that order.
var Both = []Opener{{"sqlite", SQLite}, {"postgres", Postgres}}

// Each runs fn once per store kind, as parallel subtests named sqlite and
// postgres; fn opens as many stores of that kind as it needs.
func Each(t *testing.T, fn func(t *testing.T, open func(testing.TB) registry.Store)) {
	t.Helper()
	for _, o := range Both {
		t.Run(o.Name, func(t *testing.T) {
			t.Parallel()
			fn(t, o.Open)
		})
	}
}
