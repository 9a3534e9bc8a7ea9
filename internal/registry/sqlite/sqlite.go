// Package sqlite is the embedded registry.Store on SQLite (modernc.org/sqlite,
// pure Go). It owns its SQL and its migrations; nothing outside this package
// imports the driver.
//
// SQLite has one writer, so the Store keeps two connection pools on the same
// file: a write pool of exactly one connection whose transactions begin
// IMMEDIATE (check-then-insert such as the quota check or the lowest free port
// is atomic because no other writer can interleave), and a read pool that runs
// concurrently thanks to WAL mode and is opened query-only.
package sqlite

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/pressly/goose/v3"
	msqlite "modernc.org/sqlite"
	sqlitelib "modernc.org/sqlite/lib"

	"github.com/september/bap-engine/internal/registry"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// busyTimeoutMS bounds how long a statement waits for a lock another process
// holds before failing with SQLITE_BUSY.
const busyTimeoutMS = 5000

// Store is the SQLite registry. The zero value is not usable; call Open.
type Store struct {
	w *sql.DB // one connection; every transaction is BEGIN IMMEDIATE
	r *sql.DB // query-only readers
	// tx is set on the Store handed to an InTx callback: every method then
	// runs in that transaction.
	tx *sql.Tx
	// migrations checks the schema for Ping, on the read pool.
	migrations *goose.Provider
	// hub reports this Store's changes to WatchChanges; changes collects
	// them in a transaction until it ends.
	hub     *registry.ChangeHub
	changes *registry.TxChanges
	// path is the database file; claim, once ClaimServing succeeded, the
	// open lock file that makes this the file's only orchestrator.
	path  string
	claim *os.File
	// sessions are the replicas registered through this Store.
	sessions *sessions
}

var (
	_ registry.Store  = (*Store)(nil)
	_ registry.Pooled = (*Store)(nil)
)

// querier is what *sql.DB and *sql.Tx have in common.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Open opens (creating if needed) the database file at path, in WAL mode with
// a busy timeout and foreign keys on, and applies pending migrations.
func Open(ctx context.Context, path string) (*Store, error) {
	if path == "" {
		return nil, errors.New("open sqlite: empty path")
	}
	if strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("open sqlite %s: path must not contain '?' or '#'", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	common := fmt.Sprintf("_busy_timeout=%d&_foreign_keys=on&_synchronous=NORMAL", busyTimeoutMS)
	w, err := sql.Open("sqlite", "file:"+path+"?"+common+"&_journal_mode=WAL&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)

	s := &Store{w: w, hub: &registry.ChangeHub{}, path: path, sessions: newSessions(absPath(path))}
	if err := s.Migrate(ctx); err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}

	// The read pool opens after migration so the file is already in WAL mode
	// (a persistent setting) and query-only connections never need to write.
	r, err := sql.Open("sqlite", "file:"+path+"?"+common+"&_query_only=on")
	if err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	n := max(4, runtime.NumCPU())
	r.SetMaxOpenConns(n)
	r.SetMaxIdleConns(n)
	s.r = r

	s.migrations, err = newMigrations(r)
	if err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	if err := s.Ping(ctx); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	return s, nil
}

func newMigrations(db *sql.DB) (*goose.Provider, error) {
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectSQLite3, db, sub,
		goose.WithDisableGlobalRegistry(true),
		goose.WithSlog(slog.New(slog.DiscardHandler)))
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	return p, nil
}

// Migrate applies every pending embedded migration. Open calls it; it is
// idempotent.
func (s *Store) Migrate(ctx context.Context) error {
	if s.tx != nil {
		return errors.New("migrate: not allowed inside a transaction")
	}
	p, err := newMigrations(s.w)
	if err != nil {
		return err
	}
	if _, err := p.Up(ctx); err != nil {
		return translate("migrate", err)
	}
	return nil
}

// Ping checks that the database answers and that no migration is pending.
func (s *Store) Ping(ctx context.Context) error {
	if s.tx != nil {
		var one int
		return translate("ping", s.tx.QueryRowContext(ctx, "SELECT 1").Scan(&one))
	}
	if err := s.r.PingContext(ctx); err != nil {
		return translate("ping", err)
	}
	pending, err := s.migrations.HasPending(ctx)
	if err != nil {
		return fmt.Errorf("ping: schema version: %w", translate("read migrations", err))
	}
	if pending {
		return fmt.Errorf("ping: migrations pending: %w", registry.ErrUnavailable)
	}
	return nil
}

// PoolStats reports both connection pools together: the one writer and the
// readers.
func (s *Store) PoolStats() registry.PoolStats {
	var out registry.PoolStats
	for _, db := range []*sql.DB{s.w, s.r} {
		if db == nil {
			continue
		}
		st := db.Stats()
		out.InUse += st.InUse
		out.Idle += st.Idle
		out.Max += st.MaxOpenConnections
	}
	return out
}

// Close releases both connection pools and the claim ClaimServing took. On
// the Store given to an InTx callback it does nothing: the transaction
// belongs to InTx.
func (s *Store) Close() error {
	if s.tx != nil {
		return nil
	}
	s.sessions.endAll()
	var errs []error
	if s.r != nil {
		errs = append(errs, s.r.Close())
	}
	errs = append(errs, s.w.Close())
	if s.claim != nil {
		errs = append(errs, s.claim.Close())
		s.claim = nil
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close sqlite: %w", err)
	}
	return nil
}

// InTx runs fn in one IMMEDIATE transaction on the write connection. Nested
// calls on the transaction's Store join it. fn must use the Store it is
// given: a write through the outer Store would wait for the one write
// connection that fn's own transaction holds.
func (s *Store) InTx(ctx context.Context, fn func(tx registry.Store) error) error {
	return s.inTx(ctx, func(tx *Store) error { return fn(tx) })
}

func (s *Store) inTx(ctx context.Context, fn func(tx *Store) error) error {
	if s.tx != nil {
		return fn(s)
	}
	// Waiting for the write connection honours ctx; the transaction itself
	// runs under a context that is never cancelled, so that only this
	// function ends it (database/sql would otherwise abort it, and drop the
	// connection, from another goroutine).
	conn, err := s.w.Conn(ctx)
	if err != nil {
		return translate("begin transaction", err)
	}
	defer conn.Close()
	// Runs last, once the transaction has ended either way.
	changes := &registry.TxChanges{}
	defer changes.Flush(s.hub)
	sqlTx, err := conn.BeginTx(context.WithoutCancel(ctx), nil)
	if err != nil {
		return translate("begin transaction", err)
	}
	// finished is false while fn runs: if it panics or calls runtime.Goexit
	// (t.FailNow in a test), the deferred rollback still ends the
	// transaction before the connection returns to the pool.
	finished := false
	defer func() {
		if !finished {
			_ = sqlTx.Rollback()
		}
	}()
	rollback := func(cause error) error {
		finished = true
		if rbErr := sqlTx.Rollback(); rbErr != nil && !errors.Is(rbErr, sql.ErrTxDone) {
			return errors.Join(cause, fmt.Errorf("rollback: %w", rbErr))
		}
		return cause
	}

	if err := fn(&Store{w: s.w, r: s.r, tx: sqlTx, migrations: s.migrations, hub: s.hub, changes: changes, sessions: s.sessions}); err != nil {
		return rollback(err)
	}
	if err := ctx.Err(); err != nil {
		return rollback(fmt.Errorf("commit: %w", err))
	}
	finished = true
	if err := sqlTx.Commit(); err != nil {
		return translate("commit", err)
	}
	return nil
}

// reader is where a read runs: the transaction, or the read pool.
func (s *Store) reader() querier {
	if s.tx != nil {
		return s.tx
	}
	return s.r
}

// writer is where a single-statement write runs: the transaction, or the
// write connection (autocommit).
func (s *Store) writer() querier {
	if s.tx != nil {
		return s.tx
	}
	return s.w
}

// readTx runs several reads against one snapshot (a deferred read-only
// transaction on the read pool), or in the current transaction.
func (s *Store) readTx(ctx context.Context, op string, fn func(q querier) error) error {
	if s.tx != nil {
		return fn(s.tx)
	}
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return translate(op, err)
	}
	defer func() { _ = tx.Rollback() }()
	return fn(tx)
}

// translate turns a driver or database/sql error into the registry's errors,
// wrapped with op, by the driver's result codes. It is the one place that
// knows SQLite's error codes. The driver's error stays in the chain as the
// cause.
func translate(op string, err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("%s: %w", op, registry.ErrNotFound)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: %w", op, err)
	case errors.Is(err, sql.ErrConnDone), errors.Is(err, errDBClosed):
		return fmt.Errorf("%s: %w: %w", op, registry.ErrUnavailable, err)
	}
	var se *msqlite.Error
	if !errors.As(err, &se) {
		return fmt.Errorf("%s: %w", op, err)
	}
	switch se.Code() {
	case sqlitelib.SQLITE_CONSTRAINT_UNIQUE, sqlitelib.SQLITE_CONSTRAINT_PRIMARYKEY:
		return fmt.Errorf("%s: %w: %w", op, registry.ErrConflict, err)
	case sqlitelib.SQLITE_CONSTRAINT_FOREIGNKEY:
		return fmt.Errorf("%s: referenced row: %w: %w", op, registry.ErrNotFound, err)
	}
	switch se.Code() & 0xff { // the primary result code of an extended one
	case sqlitelib.SQLITE_BUSY, sqlitelib.SQLITE_LOCKED, sqlitelib.SQLITE_CANTOPEN,
		sqlitelib.SQLITE_IOERR, sqlitelib.SQLITE_FULL, sqlitelib.SQLITE_NOTADB,
		sqlitelib.SQLITE_CORRUPT, sqlitelib.SQLITE_READONLY:
		return fmt.Errorf("%s: %w: %w", op, registry.ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// errDBClosed is database/sql's error for a call on a closed *sql.DB, which
// it does not export: taken once from a DB that is closed on purpose, so
// that translate can match it by identity rather than by its text.
var errDBClosed = func() error {
	db := sql.OpenDB(closedConnector{})
	_ = db.Close()
	return db.PingContext(context.Background())
}()

// closedConnector is a driver.Connector that is never connected.
type closedConnector struct{}

func (closedConnector) Connect(context.Context) (driver.Conn, error) { return nil, driver.ErrBadConn }
func (closedConnector) Driver() driver.Driver                        { return nil }

// WatchChanges reports the changes made through this Store (see
// registry.Watcher). SQLite has no notifications: changes other processes
// make to the same file go unreported, so an orchestrator claims the file
// first (ClaimServing).
func (s *Store) WatchChanges(ctx context.Context, fn func(registry.Change)) error {
	return registry.WatchLocal(ctx, s.hub, fn)
}

// changed records changes made in the transaction s runs in (every write
// method runs in one); they are reported when it ends.
func (s *Store) changed(changes ...registry.Change) {
	s.changes.Add(changes...)
}
