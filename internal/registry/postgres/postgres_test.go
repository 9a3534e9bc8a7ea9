package postgres_test

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/pgtest"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/postgres"
	"github.com/september/bap-engine/internal/registry/registrytest"
	"github.com/september/bap-engine/internal/testmain"
)

// TestMain also checks that nothing is left running once the servers are
// stopped.
func TestMain(m *testing.M) {
	os.Exit(testmain.Run(m, testmain.Goroutines()))
}

func open(t *testing.T, url string) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(t.Context(), url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	t.Parallel()
	registrytest.Run(t, func(t *testing.T) registry.Store {
		return open(t, pgtest.URL(t))
	})
}

// TestOpenMigratesAndAcceptsBothSchemes: Open migrates an empty database,
// accepts postgresql:// as well as postgres://, and migrating again is a
// no-op.
func TestOpenMigratesAndAcceptsBothSchemes(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	url := emptyDatabase(t)
	s := open(t, strings.Replace(url, "postgres://", "postgresql://", 1))
	require.NoError(t, s.Ping(ctx))
	p := registrytest.NewProduct(t, s)

	require.NoError(t, postgres.Migrate(ctx, url))
	s2 := open(t, url)
	got, err := s2.GetProduct(ctx, p.ID)
	require.NoError(t, err)
	require.Equal(t, p, got)
}

// emptyDatabase returns a database with no tables: a pgtest database with
// the schema dropped.
func emptyDatabase(t *testing.T) string {
	t.Helper()
	url := pgtest.URL(t)
	conn, err := pgx.Connect(t.Context(), url)
	require.NoError(t, err)
	defer conn.Close(t.Context())
	_, err = conn.Exec(t.Context(), `DROP SCHEMA public CASCADE; CREATE SCHEMA public`)
	require.NoError(t, err)
	return url
}

func TestPingReportsMissingMigrations(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	url := pgtest.URL(t)
	s := open(t, url)
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, `DELETE FROM goose_db_version WHERE version_id > 0`)
	require.NoError(t, err)
	require.ErrorContains(t, s.Ping(ctx), "migrations not applied")
}

func TestOpenRejectsBadURLWithoutEchoingIt(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	for _, url := range []string{
		"mysql://user:s3cret@localhost/db",
		"postgres://user:s3cret@localhost:notaport/db",
	} {
		_, err := postgres.Open(ctx, url)
		require.Error(t, err)
		require.NotContains(t, err.Error(), "s3cret")
		require.ErrorContains(t, postgres.Migrate(ctx, url), "database url")
	}
}

// TestUnavailable: with the server down every call reports
// registry.ErrUnavailable, and the same Store works again once the server is
// back.
func TestUnavailable(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	srv := pgtest.NewServer(t)
	s := open(t, srv.URL(t))
	p := registrytest.NewProduct(t, s)

	require.NoError(t, srv.Stop())
	_, err := s.GetProduct(ctx, p.ID)
	require.ErrorIs(t, err, registry.ErrUnavailable)
	require.ErrorIs(t, s.Ping(ctx), registry.ErrUnavailable)
	err = s.InTx(ctx, func(tx registry.Store) error { return nil })
	require.ErrorIs(t, err, registry.ErrUnavailable)
	_, err = postgres.Open(ctx, "postgres://postgres@127.0.0.1:"+strconv.Itoa(srv.Port())+"/postgres?sslmode=disable")
	require.ErrorIs(t, err, registry.ErrUnavailable)

	require.NoError(t, srv.Start())
	got, err := s.GetProduct(ctx, p.ID)
	require.NoError(t, err)
	require.Equal(t, p, got)
}

// TestConflictInsideTxKeepsTxUsable: a unique violation inside InTx is
// ErrConflict and, as with SQLite, the transaction goes on.
func TestConflictInsideTxKeepsTxUsable(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := open(t, pgtest.URL(t))
	p := registrytest.NewProduct(t, s)
	registrytest.NewEngine(t, s, p.ID, "u1")
	var second bap.Engine
	err := s.InTx(ctx, func(tx registry.Store) error {
		dup := engine(p.ID, "u1")
		if err := registrytest.StepsOf(tx).InsertEngine(ctx, dup, registry.Quota{MaxEngines: 5}); !errors.Is(err, registry.ErrConflict) {
			return errors.New("want conflict, got " + errString(err))
		}
		dupProduct := p
		dupProduct.ID = uuid.NewString()
		if err := tx.CreateProduct(ctx, dupProduct, audit.Entry{Action: audit.PolicyRegister, Actor: audit.ActorAdmin}); !errors.Is(err, registry.ErrConflict) {
			return errors.New("want conflict, got " + errString(err))
		}
		second = engine(p.ID, "u2")
		return registrytest.StepsOf(tx).InsertEngine(ctx, second, registry.Quota{MaxEngines: 5})
	})
	require.NoError(t, err)
	_, err = s.GetEngine(ctx, second.ID)
	require.NoError(t, err, "the insert after the conflicts committed")
}

// TestWritesWithAuditAreAllOrNothing: an update or delete of a missing engine
// is ErrNotFound and appends none of its audit entries.
func TestWritesWithAuditAreAllOrNothing(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := open(t, pgtest.URL(t))
	p := registrytest.NewProduct(t, s)
	ghost := engine(p.ID, "ghost")
	entry := audit.Entry{ProductID: p.ID, EngineID: ghost.ID, Action: audit.Stop, Actor: audit.ActorSystem}
	require.ErrorIs(t, s.UpdateEngine(ctx, ghost, entry), registry.ErrNotFound)
	require.ErrorIs(t, s.DeleteEngine(ctx, ghost.ID, entry), registry.ErrNotFound)
	_, err := s.UpdatePolicy(ctx, uuid.NewString(), bap.Policy{}, entry)
	require.ErrorIs(t, err, registry.ErrNotFound)
	require.ErrorIs(t, s.RotateProductKey(ctx, uuid.NewString(), "h", time.Now(), entry), registry.ErrNotFound)
	_, total, err := s.ListAudit(ctx, registry.AuditFilter{EngineID: ghost.ID})
	require.NoError(t, err)
	require.Zero(t, total)
}

// TestIDsThatCannotExist: ids that are not UUIDs are simply not found, also
// inside a transaction, which stays usable.
func TestIDsThatCannotExist(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := open(t, pgtest.URL(t))
	require.NoError(t, s.InTx(ctx, func(tx registry.Store) error {
		_, err := tx.GetEngine(ctx, "not-a-uuid")
		require.ErrorIs(t, err, registry.ErrNotFound)
		_, err = tx.GetProduct(ctx, "x")
		require.ErrorIs(t, err, registry.ErrNotFound)
		entries, total, err := tx.ListAudit(ctx, registry.AuditFilter{ProductID: "x"})
		require.NoError(t, err)
		require.Empty(t, entries)
		require.Zero(t, total)
		return tx.Ping(ctx)
	}))
}

// TestRecordHealthFoldsRepeatedResults: several results for one engine in a
// batch count as if applied one by one.
func TestRecordHealthFoldsRepeatedResults(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := open(t, pgtest.URL(t))
	p := registrytest.NewProduct(t, s)
	a := registrytest.NewEngine(t, s, p.ID, "a")
	b := registrytest.NewEngine(t, s, p.ID, "b")
	t0 := bap.Now().Add(-time.Minute)
	require.NoError(t, s.RecordHealth(ctx, []registry.HealthResult{
		{EngineID: a.ID, OK: false, At: t0},
		{EngineID: a.ID, OK: true, At: t0.Add(time.Second)},
		{EngineID: a.ID, OK: false, At: t0.Add(2 * time.Second)},
		{EngineID: b.ID, OK: false, At: t0},
		{EngineID: b.ID, OK: false, At: t0.Add(time.Second)},
		{EngineID: uuid.NewString(), OK: true, At: t0}, // vanished
	}))
	gotA, err := s.GetEngine(ctx, a.ID)
	require.NoError(t, err)
	require.Equal(t, 1, gotA.HealthFailures)
	require.Equal(t, t0.Add(time.Second), *gotA.LastHealthAt)
	gotB, err := s.GetEngine(ctx, b.ID)
	require.NoError(t, err)
	require.Equal(t, 2, gotB.HealthFailures)
	require.Nil(t, gotB.LastHealthAt)
}

// TestConcurrentAllocateAndInsertInTx: the provisioning pattern (allocate a
// port and insert the engine under quota in one transaction) stays exact when
// many run at once.
func TestConcurrentAllocateAndInsertInTx(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := open(t, pgtest.URL(t))
	p := registrytest.NewProduct(t, s)
	const n, limit = 30, 12
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			errs[i] = s.InTx(ctx, func(tx registry.Store) error {
				e := engine(p.ID, "user-"+uuid.NewString()[:8])
				port, err := registrytest.StepsOf(tx).AllocatePort(ctx, e.ID, 30000, 30099)
				if err != nil {
					return err
				}
				e.Port = port
				return registrytest.StepsOf(tx).InsertEngine(ctx, e, registry.Quota{MaxEngines: limit})
			})
		})
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
			continue
		}
		require.ErrorIs(t, err, registry.ErrQuotaExceeded)
	}
	require.Equal(t, limit, ok)
	allocs, err := s.ListPortAllocations(ctx)
	require.NoError(t, err)
	require.Len(t, allocs, limit, "refused inserts rolled their port back")
	engines, _, err := s.ListEngines(ctx, registry.EngineFilter{ProductID: p.ID})
	require.NoError(t, err)
	for i, e := range engines {
		require.Equal(t, allocs[i].Port, 30000+i)
		require.Contains(t, portsOf(allocs), e.Port)
	}
}

func portsOf(allocs []registry.PortAllocation) []int {
	ports := make([]int, len(allocs))
	for i, a := range allocs {
		ports[i] = a.Port
	}
	return ports
}

func engine(productID, userID string) bap.Engine {
	now := bap.Now()
	return bap.Engine{ID: uuid.NewString(), ProductID: productID, UserID: userID,
		Status: bap.StateProvisioning, CreatedAt: now, UpdatedAt: now}
}

func errString(err error) string {
	if err == nil {
		return "nil"
	}
	return err.Error()
}

// BenchmarkAdmitLookup measures the admit hot path: key hash and user to
// product and engine, one query.
func BenchmarkAdmitLookup(b *testing.B) {
	s, err := postgres.Open(b.Context(), pgtest.URL(b))
	require.NoError(b, err)
	b.Cleanup(func() { _ = s.Close() })
	p := registrytest.NewProduct(b, s)
	registrytest.NewEngine(b, s, p.ID, "u1")
	now := time.Now()
	for b.Loop() {
		_, e, err := s.AdmitLookup(b.Context(), p.APIKeyHash, "u1", now)
		if err != nil || e == nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkProvisionWrites measures the provisioning writes: allocate a port
// in the default range, half full, and insert the engine under a quota, in
// one transaction; then release the port (timed too) to keep the fill level.
func BenchmarkProvisionWrites(b *testing.B) {
	s, err := postgres.Open(b.Context(), pgtest.URL(b))
	require.NoError(b, err)
	b.Cleanup(func() { _ = s.Close() })
	p := registrytest.NewProduct(b, s)
	ctx := b.Context()
	const lo, hi = 9001, 9999
	for range (hi - lo) / 2 {
		_, err := registrytest.StepsOf(s).AllocatePort(ctx, uuid.NewString(), lo, hi)
		require.NoError(b, err)
	}
	for b.Loop() {
		var port int
		err := s.InTx(ctx, func(tx registry.Store) error {
			e := engine(p.ID, uuid.NewString())
			var err error
			if port, err = registrytest.StepsOf(tx).AllocatePort(ctx, e.ID, lo, hi); err != nil {
				return err
			}
			e.Port = port
			return registrytest.StepsOf(tx).InsertEngine(ctx, e, registry.Quota{MaxEngines: 1 << 30})
		})
		if err == nil {
			err = registrytest.StepsOf(s).ReleasePort(ctx, port)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

func TestReplicaGoneAfterItsStoreCloses(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	first, err := postgres.Open(t.Context(), url)
	require.NoError(t, err)
	registrytest.GoneAfterItsStoreCloses(t, first, open(t, url))
}
