package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// portLockKey is the transaction-scoped advisory lock that serializes port
// allocation ("bap-port" in ASCII). Advisory locks are per database.
const portLockKey int64 = 0x6261702d706f7274

// sqlFreePorts selects the candidates for the lowest port of [lo, hi] (two
// placeholders) that has no allocation: lo itself and the successor of every
// allocated port in range whose successor is free. The lowest free port is
// always one of them, and finding them costs the number of allocations, not
// the size of the range.
func sqlFreePorts(lo, hi string) string {
	return `SELECT ` + lo + `::int AS p WHERE NOT EXISTS (SELECT 1 FROM port_allocations WHERE port = ` + lo + `::int)
	UNION ALL
	SELECT a.port + 1 FROM port_allocations a
	WHERE a.port >= ` + lo + `::int AND a.port < ` + hi + `::int
		AND NOT EXISTS (SELECT 1 FROM port_allocations b WHERE b.port = a.port + 1)`
}

// sqlAllocatePort inserts the lowest port of [$2,$3] that has no allocation.
var sqlAllocatePort = `INSERT INTO port_allocations (port, engine_id, created_at)
SELECT c.p, $1::uuid, $4 FROM (` + sqlFreePorts("$2", "$3") + `) AS c
WHERE c.p <= $3::int
ORDER BY c.p LIMIT 1
RETURNING port`

// AllocatePort reserves the lowest free port in [min,max] for engineID. The
// advisory lock is taken by the first statement of a batch and the insert is
// the second, so the insert's snapshot includes every allocation committed by
// earlier lock holders: concurrent callers never get the same port and never
// fail on each other. Inside InTx the lock is held until that transaction
// ends.
func (s *Store) AllocatePort(ctx context.Context, engineID string, min, max int) (int, error) {
	b := &pgx.Batch{}
	b.Queue(`SELECT pg_advisory_xact_lock($1)`, portLockKey)
	b.Queue(sqlAllocatePort, engineID, min, max, bap.Now())
	br := s.db.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return 0, fmt.Errorf("allocate port: %w", translate(err))
	}
	var port int
	if err := br.QueryRow().Scan(&port); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return 0, fmt.Errorf("allocate port in %d-%d: %w", min, max, registry.ErrPortExhausted)
		}
		return 0, fmt.Errorf("allocate port: %w", translate(err))
	}
	if err := br.Close(); err != nil {
		return 0, fmt.Errorf("allocate port: %w", translate(err))
	}
	return port, nil
}

// ReleasePort frees a port; freeing a free port is not an error.
func (s *Store) ReleasePort(ctx context.Context, port int) error {
	if _, err := s.db.Exec(ctx, `DELETE FROM port_allocations WHERE port = $1`, port); err != nil {
		return fmt.Errorf("release port %d: %w", port, translate(err))
	}
	return nil
}

// ListPortAllocations returns all allocations ordered by port.
func (s *Store) ListPortAllocations(ctx context.Context) ([]registry.PortAllocation, error) {
	rows, _ := s.db.Query(ctx, `SELECT port, engine_id::text, created_at FROM port_allocations ORDER BY port`)
	allocs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (registry.PortAllocation, error) {
		var a registry.PortAllocation
		err := row.Scan(&a.Port, &a.EngineID, &a.CreatedAt)
		a.CreatedAt = bap.Timestamp(a.CreatedAt)
		return a, err
	})
	if err != nil {
		return nil, fmt.Errorf("list port allocations: %w", translate(err))
	}
	return allocs, nil
}

// FreeOrphanPorts deletes allocations whose engine row does not exist.
func (s *Store) FreeOrphanPorts(ctx context.Context) (int, error) {
	tag, err := s.db.Exec(ctx, `DELETE FROM port_allocations a
		WHERE NOT EXISTS (SELECT 1 FROM engines e WHERE e.id = a.engine_id)`)
	if err != nil {
		return 0, fmt.Errorf("free orphan ports: %w", translate(err))
	}
	return int(tag.RowsAffected()), nil
}
