// Package postgres is the PostgreSQL registry.Store: pgx v5 over a pgxpool,
// its own SQL, and embedded goose migrations applied by Open and Migrate.
//
// It sits on the admit hot path, so every method is one round trip where the
// contract allows it: writes that must also append audit rows are single
// statements with data-modifying CTEs, and multi-statement operations that
// need a lock first (InsertEngine under a quota) are sent as one pipelined
// batch, which PostgreSQL runs as one implicit transaction.
//
// Nothing outside this package imports pgx; driver errors are translated to
// the registry errors in one place (translate).
package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/september/bap-engine/internal/registry"
)

// idleTxParam is the server setting that ends a transaction left idle;
// idleTxTimeout its value when the URL does not set it (milliseconds).
const (
	idleTxParam   = "idle_in_transaction_session_timeout"
	idleTxTimeout = "5000"
)

// defaultMaxConns is the pool size when the URL does not set pool_max_conns:
// pgx's own default (4 on small machines) is too few for concurrent admits.
const defaultMaxConns = 16

// Store is the PostgreSQL registry. The zero value is not usable; call Open.
type Store struct {
	pool *pgxpool.Pool
	db   querier
	// inTx is true for the Store handed to an InTx callback.
	inTx bool
	// hub reports this Store's changes to WatchChanges; changes collects
	// them in a transaction until it ends.
	hub     *registry.ChangeHub
	changes *registry.TxChanges
	// sessions are the replica sessions opened through this Store.
	sessions *sessions
}

// querier is what *pgxpool.Pool and pgx.Tx have in common.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

var (
	_ registry.Store  = (*Store)(nil)
	_ registry.Pooled = (*Store)(nil)
)

// Open connects to the database at url (postgres:// or postgresql://),
// applies pending migrations and returns the Store. An unreachable database is
// reported as registry.ErrUnavailable.
func Open(ctx context.Context, url string) (*Store, error) {
	cfg, err := parseURL(url)
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", translate(err))
	}
	s := &Store{pool: pool, db: pool, hub: &registry.ChangeHub{}, sessions: newSessions(cfg.ConnConfig)}
	version, err := s.schemaVersion(ctx)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("open database: %w", err)
	}
	if version < latestVersion {
		if err := migrateConfig(ctx, cfg.ConnConfig); err != nil {
			pool.Close()
			return nil, err
		}
	}
	return s, nil
}

// parseURL parses a postgres:// or postgresql:// URL into a pool config. The
// error never repeats the URL: it may hold a password.
func parseURL(url string) (*pgxpool.Config, error) {
	if !strings.HasPrefix(url, "postgres://") && !strings.HasPrefix(url, "postgresql://") {
		return nil, errors.New("parse database url: want a postgres:// or postgresql:// URL")
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, errors.New("parse database url: not a valid PostgreSQL connection URL")
	}
	if !strings.Contains(url, "pool_max_conns") {
		cfg.MaxConns = defaultMaxConns
	}
	// A process frozen in a transaction (SIGSTOP, a long pause, a cut-off
	// network) would hold its row locks forever and stall other replicas'
	// operations on those engines; the server ends such a transaction.
	// Every transaction here is short and never spans a backend call.
	if _, set := cfg.ConnConfig.RuntimeParams[idleTxParam]; !set {
		cfg.ConnConfig.RuntimeParams[idleTxParam] = idleTxTimeout
	}
	return cfg, nil
}

// InTx runs fn in one transaction; see registry.Store. Nested calls join the
// outer transaction. Rollback runs under context.WithoutCancel so that a
// cancelled ctx still ends the transaction on the server.
func (s *Store) InTx(ctx context.Context, fn func(tx registry.Store) error) error {
	if s.inTx {
		return fn(s)
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", translate(err))
	}
	// Deferred first, so it runs once the transaction has ended either way.
	changes := &registry.TxChanges{}
	defer changes.Flush(s.hub)
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := fn(&Store{pool: s.pool, db: tx, inTx: true, hub: s.hub, changes: changes, sessions: s.sessions}); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit transaction: %w", translate(err))
	}
	return nil
}

// Ping checks the database is reachable and migrated to this build's schema.
func (s *Store) Ping(ctx context.Context) error {
	version, err := s.schemaVersion(ctx)
	if err != nil {
		return fmt.Errorf("ping database: %w", err)
	}
	if version < latestVersion {
		return fmt.Errorf("ping database: schema version %d, want %d: migrations not applied", version, latestVersion)
	}
	return nil
}

// PoolStats reports the connection pool (not the change feed's listening
// connection, which is its own).
func (s *Store) PoolStats() registry.PoolStats {
	st := s.pool.Stat()
	return registry.PoolStats{InUse: int(st.AcquiredConns()), Idle: int(st.IdleConns()), Max: int(st.MaxConns())}
}

// Close releases the pool. On the Store of an InTx callback it does nothing:
// the transaction belongs to InTx.
func (s *Store) Close() error {
	if !s.inTx {
		s.sessions.closeAll()
		s.pool.Close()
	}
	return nil
}

// schemaVersion returns the highest applied migration version, 0 when the
// database has never been migrated.
func (s *Store) schemaVersion(ctx context.Context) (int64, error) {
	var version int64
	err := s.db.QueryRow(ctx,
		`SELECT COALESCE((SELECT max(version_id) FROM goose_db_version WHERE is_applied), 0)`).Scan(&version)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == pgerrcode.UndefinedTable {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read schema version: %w", translate(err))
	}
	return version, nil
}
