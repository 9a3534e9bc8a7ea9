package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// AllocatePort reserves the lowest free port in [lo,hi] for engineID. The
// search and the insert are one statement on the single write connection, so
// concurrent allocations never see the same port free. ErrPortExhausted.
func (s *Store) AllocatePort(ctx context.Context, engineID string, lo, hi int) (int, error) {
	op := fmt.Sprintf("allocate port in [%d,%d]", lo, hi)
	if lo < 1 || hi > 65535 || lo > hi {
		return 0, fmt.Errorf("%s: invalid range", op)
	}
	// Candidates are lo itself and every port just above an allocated one;
	// the lowest free port is always one of them.
	var port int
	err := s.writer().QueryRowContext(ctx, `INSERT INTO port_allocations (port, engine_id, created_at)
		SELECT c.port, ?, ? FROM (
			SELECT ? AS port
			WHERE NOT EXISTS (SELECT 1 FROM port_allocations WHERE port = ?)
			UNION ALL
			SELECT a.port + 1 FROM port_allocations a
			WHERE a.port >= ? AND a.port < ?
			  AND NOT EXISTS (SELECT 1 FROM port_allocations b WHERE b.port = a.port + 1)
		) c
		ORDER BY c.port
		LIMIT 1
		RETURNING port`, engineID, ts(bap.Now()), lo, lo, lo, hi).Scan(&port)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("%s: %w", op, registry.ErrPortExhausted)
	}
	if err != nil {
		return 0, translate(op, err)
	}
	return port, nil
}

// ReleasePort frees a port; freeing a free port is not an error.
func (s *Store) ReleasePort(ctx context.Context, port int) error {
	_, err := s.writer().ExecContext(ctx, `DELETE FROM port_allocations WHERE port = ?`, port)
	return translate(fmt.Sprintf("release port %d", port), err)
}

// ListPortAllocations returns all allocations ordered by port.
func (s *Store) ListPortAllocations(ctx context.Context) ([]registry.PortAllocation, error) {
	const op = "list port allocations"
	rows, err := s.reader().QueryContext(ctx,
		`SELECT port, engine_id, created_at FROM port_allocations ORDER BY port`)
	return collect(op, rows, err, func(row rowScanner) (registry.PortAllocation, error) {
		var a registry.PortAllocation
		err := row.Scan(&a.Port, &a.EngineID, timeScanner{&a.CreatedAt})
		return a, err
	})
}

// FreeOrphanPorts deletes allocations whose engine row does not exist and
// returns how many it freed.
func (s *Store) FreeOrphanPorts(ctx context.Context) (int, error) {
	const op = "free orphan ports"
	res, err := s.writer().ExecContext(ctx, `DELETE FROM port_allocations
		WHERE NOT EXISTS (SELECT 1 FROM engines e WHERE e.id = port_allocations.engine_id)`)
	if err != nil {
		return 0, translate(op, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, translate(op, err)
	}
	return int(n), nil
}
