// Package pgtest gives tests real PostgreSQL databases: URL(t) returns a
// fresh, migrated, empty database of its own for each test, cloned from a
// migrated template (CREATE DATABASE ... TEMPLATE), so tests may run in
// parallel without seeing each other's rows.
//
// The server is the one at BAP_TEST_DATABASE_URL when that is set (the
// tests create and drop databases on it, so give them a server of their
// own); otherwise one throwaway PostgreSQL 15 per test binary, started on
// first use from /usr/lib/postgresql/15/bin with its data in /dev/shm and
// durability off. Without either, tests skip, or fail when CI=true.
//
// A package that uses pgtest calls Main from its TestMain, which stops the
// servers and removes their files after the tests:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
// A goroutine leak check goes after Main, once the servers are gone:
//
//	func TestMain(m *testing.M) {
//		code := pgtest.Main(m)
//		if err := goleak.Find(pgtest.GoleakOptions()...); err != nil && code == 0 {
//			fmt.Fprintln(os.Stderr, err)
//			code = 1
//		}
//		os.Exit(code)
//	}
//
// Tests that stop and restart PostgreSQL under a running component take a
// private server with NewServer, so that the restart does not disturb the
// package's other tests.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"

	"github.com/september/bap-engine/internal/registry/postgres"
)

// EnvURL names the variable that points the tests at an existing server.
const EnvURL = "BAP_TEST_DATABASE_URL"

var (
	sharedOnce sync.Once
	shared     *Server
	sharedErr  error

	externalOnce sync.Once
	external     *cluster
	externalErr  error

	logOnce sync.Once

	privateMu sync.Mutex
	private   = map[*Server]bool{}
)

// URL returns the URL of a new, migrated, empty database for this test; it
// is dropped when the test ends.
func URL(t testing.TB) string {
	t.Helper()
	if os.Getenv(EnvURL) == "" {
		return Shared(t).URL(t)
	}
	externalOnce.Do(func() {
		external, externalErr = newExternalCluster(os.Getenv(EnvURL))
	})
	if externalErr != nil {
		t.Fatal(externalErr)
	}
	logOnce.Do(func() { t.Logf("pgtest: using %s", external.desc) })
	return external.newDatabase(t)
}

// Shared returns the test binary's throwaway server, starting it on first
// use. Stopping it affects every test of the binary that uses it: prefer
// NewServer for restart tests. It needs the server binaries even when
// BAP_TEST_DATABASE_URL is set.
func Shared(t testing.TB) *Server {
	t.Helper()
	sharedOnce.Do(func() { shared, sharedErr = startServer() })
	if sharedErr != nil {
		fail(t, sharedErr)
	}
	logOnce.Do(func() { t.Logf("pgtest: using %s", shared.describe()) })
	return shared
}

// NewServer starts a private throwaway server for this test (about a second)
// and removes it when the test ends.
func NewServer(t testing.TB) *Server {
	t.Helper()
	s, err := startServer()
	if err != nil {
		fail(t, err)
	}
	privateMu.Lock()
	private[s] = true
	privateMu.Unlock()
	t.Cleanup(func() {
		privateMu.Lock()
		delete(private, s)
		privateMu.Unlock()
		if err := s.close(); err != nil {
			t.Errorf("pgtest: remove server: %v", err)
		}
	})
	return s
}

// fail ends the test: a missing installation skips, unless CI=true where
// it fails; any other error fails.
func fail(t testing.TB, err error) {
	t.Helper()
	if errors.Is(err, errNoBinaries) && os.Getenv("CI") != "true" {
		t.Skip(err.Error())
	}
	t.Fatal(err)
}

// URL returns the URL of a new, migrated, empty database on s for this test;
// it is dropped when the test ends.
func (s *Server) URL(t testing.TB) string {
	t.Helper()
	s.mu.Lock()
	if s.cluster == nil {
		c, err := newCluster(s.url("postgres"), "tmpl", "t", s.describe())
		if err != nil {
			s.mu.Unlock()
			t.Fatal(err)
		}
		s.cluster = c
	}
	c := s.cluster
	s.mu.Unlock()
	return c.newDatabase(t)
}

func (s *Server) describe() string {
	return fmt.Sprintf("throwaway PostgreSQL (%s) at 127.0.0.1:%d, data in %s", s.bin, s.port, s.dir)
}

// Main runs the tests, then stops every server pgtest started, removes their
// files and drops the template it made on a BAP_TEST_DATABASE_URL server. It
// returns the exit code for os.Exit. Goroutine leak checks belong after it
// (or use GoleakOptions while servers run).
func Main(m *testing.M) int {
	code := m.Run()
	if err := shutdown(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

func shutdown() error {
	var errs []error
	if external != nil {
		errs = append(errs, external.close())
	}
	if shared != nil {
		errs = append(errs, shared.close())
	}
	privateMu.Lock()
	for s := range private {
		errs = append(errs, s.close())
		delete(private, s)
	}
	privateMu.Unlock()
	return errors.Join(errs...)
}

// GoleakOptions ignore the goroutines a running server needs (its process
// reaper and the thread that started it), for goleak.VerifyNone in tests
// that run while pgtest servers are up.
func GoleakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("github.com/september/bap-engine/internal/pgtest.watch"),
		// The thread that starts servers lives as long as the process
		// (pdeath): pgtest's and kubetest's servers share it.
		goleak.IgnoreAnyFunction("github.com/september/bap-engine/internal/pdeath.loop"),
	}
}

// cluster is a server tests create databases on, and the migrated template
// they are cloned from.
type cluster struct {
	admin    *url.URL // the maintenance database
	template string
	prefix   string
	desc     string
	// ownTemplate: the template is dropped at close (an external server
	// outlives the binary; a throwaway one is deleted whole).
	ownTemplate bool
	n           atomic.Int64 // databases created

	mu   sync.Mutex
	conn *pgx.Conn // admin connection; reopened when lost
}

func newCluster(adminURL, template, prefix, desc string) (*cluster, error) {
	u, err := url.Parse(adminURL)
	if err != nil {
		return nil, errors.New("pgtest: database URL is not a URL")
	}
	c := &cluster{admin: u, template: template, prefix: prefix, desc: desc}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.exec(ctx, "CREATE DATABASE "+template); err != nil {
		return nil, fmt.Errorf("pgtest: create template database: %w", err)
	}
	if err := postgres.Migrate(ctx, c.url(template)); err != nil {
		return nil, fmt.Errorf("pgtest: migrate template database: %w", err)
	}
	// Nobody connects to the template again: a session on it would make
	// every clone fail.
	if err := c.exec(ctx, "ALTER DATABASE "+template+" WITH ALLOW_CONNECTIONS false"); err != nil {
		return nil, fmt.Errorf("pgtest: seal template database: %w", err)
	}
	return c, nil
}

// newExternalCluster uses the server at rawURL with names unique to this
// test binary, so that concurrent binaries share it safely.
func newExternalCluster(rawURL string) (*cluster, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, fmt.Errorf("pgtest: %s must be a postgres:// URL", EnvURL)
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	prefix := "bap_" + hex.EncodeToString(b)
	desc := fmt.Sprintf("the %s server at %s", EnvURL, u.Host)
	c, err := newCluster(rawURL, prefix+"_tmpl", prefix, desc)
	if err != nil {
		return nil, err
	}
	c.ownTemplate = true
	return c, nil
}

// url returns the URL of database name on the cluster's server.
func (c *cluster) url(name string) string {
	u := *c.admin
	u.Path = "/" + name
	return u.String()
}

// newDatabase clones the template into a database for t and drops it when t
// ends.
func (c *cluster) newDatabase(t testing.TB) string {
	t.Helper()
	name := c.prefix + "_" + strconv.FormatInt(c.n.Add(1), 10)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.exec(ctx, "CREATE DATABASE "+name+" TEMPLATE "+c.template); err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// WITH (FORCE) ends sessions a test left open. A server the test
		// stopped is not an error: its files go at Main.
		if err := c.exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil && !lost(err) {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	return c.url(name)
}

// exec runs a statement on the admin connection, reconnecting once when the
// connection was lost (the server was restarted since).
func (c *cluster) exec(ctx context.Context, sql string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for attempt := 0; ; attempt++ {
		if c.conn == nil || c.conn.IsClosed() {
			conn, err := pgx.Connect(ctx, c.admin.String())
			if err != nil {
				return err
			}
			c.conn = conn
		}
		_, err := c.conn.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol)
		if err == nil || attempt > 0 || !lost(err) {
			return err
		}
		_ = c.conn.Close(ctx)
		c.conn = nil
	}
}

// lost reports whether err means the connection or server is gone.
func lost(err error) bool {
	var connectErr *pgconn.ConnectError
	var pgErr *pgconn.PgError
	var netErr net.Error
	if errors.As(err, &pgErr) {
		return pgErr.Code == "57P01" || pgErr.Code == "57P03" // admin_shutdown, cannot_connect_now
	}
	return errors.As(err, &connectErr) || errors.As(err, &netErr) || pgconn.SafeToRetry(err) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// close drops the template if the cluster owns it and closes the admin
// connection.
func (c *cluster) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var err error
	if c.ownTemplate {
		err = c.exec(ctx, "DROP DATABASE IF EXISTS "+c.template)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		_ = c.conn.Close(ctx)
		c.conn = nil
	}
	return err
}
