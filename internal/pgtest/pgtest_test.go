package pgtest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/september/bap-engine/internal/pdeath"
)

// TestMain also checks that nothing is left running once the servers are
// stopped.
func TestMain(m *testing.M) {
	code := Main(m)
	if err := goleak.Find(GoleakOptions()...); err != nil && code == 0 {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func TestURLGivesMigratedEmptyIsolatedDatabases(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, b := connect(t, URL(t)), connect(t, URL(t))

	var tables int
	require.NoError(t, a.QueryRow(ctx, `SELECT count(*) FROM information_schema.tables
		WHERE table_schema = 'public' AND table_name IN ('products', 'engines', 'port_allocations', 'audit_log')`).Scan(&tables))
	require.Equal(t, 4, tables, "the database is migrated")
	var version int64
	require.NoError(t, a.QueryRow(ctx, `SELECT max(version_id) FROM goose_db_version`).Scan(&version))
	require.Positive(t, version)

	_, err := a.Exec(ctx, `INSERT INTO port_allocations (port, engine_id, created_at)
		VALUES (1, gen_random_uuid(), now())`)
	require.NoError(t, err)
	var n int
	require.NoError(t, b.QueryRow(ctx, `SELECT count(*) FROM port_allocations`).Scan(&n))
	require.Zero(t, n, "a row written to one test database is not in another")
	require.NoError(t, a.QueryRow(ctx, `SELECT count(*) FROM port_allocations`).Scan(&n))
	require.Equal(t, 1, n)
}

func TestDatabaseIsDroppedAfterTest(t *testing.T) {
	var name string
	t.Run("inner", func(t *testing.T) {
		u, err := url.Parse(URL(t))
		require.NoError(t, err)
		name = strings.TrimPrefix(u.Path, "/")
	})
	c := external
	if c == nil {
		s := Shared(t)
		s.mu.Lock()
		c = s.cluster
		s.mu.Unlock()
	}
	conn := connect(t, c.admin.String())
	var exists bool
	require.NoError(t, conn.QueryRow(context.Background(),
		`SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists))
	require.False(t, exists, "database %s is dropped when its test ends", name)
}

func TestServerStopAndStartKeepsPortAndData(t *testing.T) {
	s := NewServer(t)
	url := s.URL(t)
	ctx := context.Background()
	conn := connect(t, url)
	_, err := conn.Exec(ctx, `INSERT INTO port_allocations (port, engine_id, created_at) VALUES (7, gen_random_uuid(), now())`)
	require.NoError(t, err)
	port := s.Port()

	require.NoError(t, s.Stop())
	require.NoError(t, s.Stop(), "stopping a stopped server is a no-op")
	_, err = pgx.Connect(ctx, url)
	require.Error(t, err, "a stopped server refuses connections")

	require.NoError(t, s.Start())
	require.Equal(t, port, s.Port())
	conn = connect(t, url)
	var n int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM port_allocations WHERE port = 7`).Scan(&n))
	require.Equal(t, 1, n, "data survives the restart")

	// The admin connection reconnects: new databases can still be made.
	connect(t, s.URL(t))
}

func TestRemoveStaleDeletesDirectoriesOfDeadRuns(t *testing.T) {
	base := t.TempDir()
	dead := filepath.Join(base, dirPrefix+"dead")
	live := filepath.Join(base, dirPrefix+"live")
	for _, d := range []string{dead, live} {
		require.NoError(t, os.Mkdir(d, 0o755))
	}
	// A pid that cannot be running: above the kernel's pid_max limit.
	require.NoError(t, os.WriteFile(filepath.Join(dead, "owner"), []byte("2147483647"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(live, "owner"), []byte(strconv.Itoa(os.Getpid())), 0o644))

	pdeath.RemoveOrphaned(base, dirPrefix, stopStale)

	require.NoDirExists(t, dead)
	require.DirExists(t, live)
}

// BenchmarkDatabase measures what URL costs a test: cloning the template,
// and dropping the clone at cleanup (reported separately).
func BenchmarkDatabase(b *testing.B) {
	s := Shared(b)
	s.URL(b) // the template exists from here on
	c := s.cluster
	ctx := context.Background()
	var create, drop time.Duration
	for i := 0; b.Loop(); i++ {
		name := "bench_" + strconv.Itoa(i)
		start := time.Now()
		require.NoError(b, c.exec(ctx, "CREATE DATABASE "+name+" TEMPLATE "+c.template))
		mid := time.Now()
		require.NoError(b, c.exec(ctx, "DROP DATABASE "+name+" WITH (FORCE)"))
		create, drop = create+mid.Sub(start), drop+time.Since(mid)
	}
	b.ReportMetric(float64(create.Microseconds())/1000/float64(b.N), "create-ms/op")
	b.ReportMetric(float64(drop.Microseconds())/1000/float64(b.N), "drop-ms/op")
}
