package engine

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver (pure Go, no cgo)
)

// schema is the brain's layout; user_version tracks it.
const schema = `
CREATE TABLE IF NOT EXISTS counter (
	id    INTEGER PRIMARY KEY CHECK (id = 1),
	value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counter (id, value) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS notes (
	id         INTEGER PRIMARY KEY AUTOINCREMENT,
	input      TEXT NOT NULL,
	output     TEXT NOT NULL,
	created_at TEXT NOT NULL
);
PRAGMA user_version = 1;
`

// brain is the engine's persistent memory: a counter and the notes that
// /execute stores.
type brain struct {
	db *sql.DB
}

// note is one stored /execute exchange.
type note struct {
	ID        int64  `json:"id"`
	Input     string `json:"input"`
	Output    string `json:"output"`
	CreatedAt string `json:"created_at"`
}

// openBrain opens (creating if needed) the SQLite brain at path.
func openBrain(ctx context.Context, path string) (*brain, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create brain directory: %w", err)
	}
	// WAL lets /brain read while /execute writes; immediate transactions
	// take the write lock up front so concurrent writers queue on
	// busy_timeout instead of failing on a lock upgrade.
	dsn := path + "?_txlock=immediate&_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open brain %s: %w", path, err)
	}
	db.SetMaxOpenConns(4)
	db.SetConnMaxIdleTime(time.Minute)
	if _, err := db.ExecContext(ctx, schema); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("initialise brain %s: %w", path, err)
	}
	return &brain{db: db}, nil
}

// close closes the database.
func (b *brain) close() error { return b.db.Close() }

// ping reports whether the database answers.
func (b *brain) ping(ctx context.Context) error { return b.db.PingContext(ctx) }

// remember increments the counter and stores the exchange as a note, in one
// transaction; it returns the new counter and the answer.
func (b *brain) remember(ctx context.Context, input string) (int64, string, error) {
	tx, err := b.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, "", fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	var n int64
	if err := tx.QueryRowContext(ctx, `UPDATE counter SET value = value + 1 WHERE id = 1 RETURNING value`).Scan(&n); err != nil {
		return 0, "", fmt.Errorf("increment counter: %w", err)
	}
	output := answer(n, input)
	now := time.Now().UTC().Format(time.RFC3339Nano)
	if _, err := tx.ExecContext(ctx, `INSERT INTO notes (input, output, created_at) VALUES (?, ?, ?)`, input, output, now); err != nil {
		return 0, "", fmt.Errorf("store note: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, "", fmt.Errorf("commit: %w", err)
	}
	return n, output, nil
}

// answer is the engine's (deterministic) reply to input.
func answer(n int64, input string) string {
	return fmt.Sprintf("Noted #%d: %s", n, input)
}

// recall returns the counter, the number of notes and the newest limit notes.
func (b *brain) recall(ctx context.Context, limit int) (int64, int64, []note, error) {
	var counter, total int64
	if err := b.db.QueryRowContext(ctx, `SELECT value FROM counter WHERE id = 1`).Scan(&counter); err != nil {
		return 0, 0, nil, fmt.Errorf("read counter: %w", err)
	}
	if err := b.db.QueryRowContext(ctx, `SELECT count(*) FROM notes`).Scan(&total); err != nil {
		return 0, 0, nil, fmt.Errorf("count notes: %w", err)
	}
	rows, err := b.db.QueryContext(ctx, `SELECT id, input, output, created_at FROM notes ORDER BY id DESC LIMIT ?`, limit)
	if err != nil {
		return 0, 0, nil, fmt.Errorf("read notes: %w", err)
	}
	defer rows.Close()
	notes := []note{}
	for rows.Next() {
		var nt note
		if err := rows.Scan(&nt.ID, &nt.Input, &nt.Output, &nt.CreatedAt); err != nil {
			return 0, 0, nil, fmt.Errorf("scan note: %w", err)
		}
		notes = append(notes, nt)
	}
	if err := rows.Err(); err != nil {
		return 0, 0, nil, fmt.Errorf("read notes: %w", err)
	}
	return counter, total, notes, nil
}
