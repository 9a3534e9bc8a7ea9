package sqlite_test

import (
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/pressly/goose/v3"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	msqlite "modernc.org/sqlite"
	sqlitelib "modernc.org/sqlite/lib"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/registrytest"
	"github.com/september/bap-engine/internal/registry/sqlite"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func openStore(t *testing.T, path string) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(t.Context(), path)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	t.Parallel()
	registrytest.Run(t, func(t *testing.T) registry.Store {
		return openStore(t, filepath.Join(t.TempDir(), "registry.db"))
	})
}

func TestReopenKeepsDataAndMigrationIsIdempotent(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sub", "dir", "registry.db")
	s, err := sqlite.Open(t.Context(), path)
	require.NoError(t, err)
	p := registrytest.NewProduct(t, s)
	e := registrytest.NewEngine(t, s, p.ID, "u1")
	require.NoError(t, s.Migrate(t.Context()))
	require.NoError(t, s.Close())

	s = openStore(t, path)
	got, err := s.GetEngine(t.Context(), e.ID)
	require.NoError(t, err)
	require.Equal(t, e.Port, got.Port)
	require.NoError(t, s.Ping(t.Context()))
}

func TestPragmas(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "registry.db")
	openStore(t, path)
	db, err := sql.Open("sqlite", "file:"+path)
	require.NoError(t, err)
	defer db.Close()
	var mode string
	require.NoError(t, db.QueryRow("PRAGMA journal_mode").Scan(&mode))
	require.Equal(t, "wal", mode)
}

func TestForeignKeyToProduct(t *testing.T) {
	t.Parallel()
	s := openStore(t, filepath.Join(t.TempDir(), "registry.db"))
	now := bap.Now()
	err := registrytest.StepsOf(s).InsertEngine(t.Context(), bap.Engine{
		ID: "e1", ProductID: "no-such-product", UserID: "u1", Status: bap.StateProvisioning,
		Port: 9001, CreatedAt: now, UpdatedAt: now,
	}, registry.Quota{})
	require.ErrorIs(t, err, registry.ErrNotFound)
	requireDriverCode(t, err, sqlitelib.SQLITE_CONSTRAINT_FOREIGNKEY)
}

func TestConflictKeepsTheDriverError(t *testing.T) {
	t.Parallel()
	s := openStore(t, filepath.Join(t.TempDir(), "registry.db"))
	p := registrytest.NewProduct(t, s)
	p.ID = "another-product"
	err := s.CreateProduct(t.Context(), p, audit.Entry{ProductID: p.ID, Action: audit.PolicyRegister, Actor: audit.ActorAdmin})
	require.ErrorIs(t, err, registry.ErrConflict, "the slug is taken")
	requireDriverCode(t, err, sqlitelib.SQLITE_CONSTRAINT_UNIQUE)
}

// requireDriverCode checks that err keeps the driver's error, of code, in
// its chain.
func requireDriverCode(t *testing.T, err error, code int) {
	t.Helper()
	var cause *msqlite.Error
	require.ErrorAs(t, err, &cause, "the driver's error stays in the chain")
	require.Equal(t, code, cause.Code())
}

func TestAuditEntryWithoutActionRefused(t *testing.T) {
	t.Parallel()
	s := openStore(t, filepath.Join(t.TempDir(), "registry.db"))
	require.Error(t, s.AppendAudit(t.Context(), audit.Entry{Actor: audit.ActorSystem}))
	es, total, err := s.ListAudit(t.Context(), registry.AuditFilter{})
	require.NoError(t, err)
	require.Zero(t, total)
	require.Empty(t, es)
}

func TestPingReportsPendingMigrations(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "registry.db")
	s := openStore(t, path)
	require.NoError(t, s.Ping(t.Context()))

	db, err := sql.Open("sqlite", "file:"+path)
	require.NoError(t, err)
	defer db.Close()
	_, err = db.Exec("DELETE FROM " + goose.DefaultTablename + " WHERE version_id > 0")
	require.NoError(t, err)

	err = s.Ping(t.Context())
	require.ErrorIs(t, err, registry.ErrUnavailable)
}

func TestClosedStoreIsUnavailable(t *testing.T) {
	t.Parallel()
	s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "registry.db"))
	require.NoError(t, err)
	require.NoError(t, s.Close())
	require.ErrorIs(t, s.Ping(t.Context()), registry.ErrUnavailable)
	_, err = s.GetProduct(t.Context(), "x")
	require.ErrorIs(t, err, registry.ErrUnavailable)
	err = s.InTx(t.Context(), func(registry.Store) error { return nil })
	require.ErrorIs(t, err, registry.ErrUnavailable)
}

func TestOpenRejectsBadPath(t *testing.T) {
	t.Parallel()
	_, err := sqlite.Open(t.Context(), "")
	require.Error(t, err)
	_, err = sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "x.db?mode=ro"))
	require.Error(t, err)
}

// TestClaimServing: one Store at a time serves a file; the claim names its
// holder's pid, is kept by repeated claims and is given back by Close.
func TestClaimServing(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "registry.db")
	a, b := openStore(t, path), openStore(t, path)
	require.NoError(t, a.ClaimServing())
	require.NoError(t, a.ClaimServing(), "claiming again is a no-op")

	err := b.ClaimServing()
	require.ErrorIs(t, err, sqlite.ErrServedElsewhere)
	require.ErrorContains(t, err, fmt.Sprintf("(pid %d)", os.Getpid()))
	require.ErrorContains(t, err, path)

	_, err = b.ListProducts(t.Context())
	require.NoError(t, err, "a refused claim leaves the Store usable for tools such as migrate")
	require.NoError(t, a.Close())
	require.NoError(t, b.ClaimServing(), "the claim is free once its holder closed")
}

func TestReplicaGoneAfterItsStoreCloses(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "registry.db")
	first, err := sqlite.Open(t.Context(), path)
	require.NoError(t, err)
	registrytest.GoneAfterItsStoreCloses(t, first, openStore(t, path))
}
