package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"github.com/google/uuid"
	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/september/bap-engine/internal/registry"
)

// translate maps a pgx error to the registry errors, keeping the driver error
// in the chain: unique_violation → ErrConflict, foreign_key_violation →
// ErrNotFound (the referenced product is gone), and anything that means the
// server cannot be reached or is going away → ErrUnavailable. Context errors
// are the caller's and pass through unchanged.
func translate(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == pgerrcode.UniqueViolation:
			return fmt.Errorf("%w: %w", registry.ErrConflict, err)
		case pgErr.Code == pgerrcode.ForeignKeyViolation:
			return fmt.Errorf("%w: %w", registry.ErrNotFound, err)
		case unavailableCode(pgErr.Code):
			return fmt.Errorf("%w: %w", registry.ErrUnavailable, err)
		}
		return err
	}
	if connectionLost(err) {
		return fmt.Errorf("%w: %w", registry.ErrUnavailable, err)
	}
	return err
}

// unavailableCode reports whether a SQLSTATE means the server refuses or drops
// connections rather than rejecting the statement.
func unavailableCode(code string) bool {
	switch code {
	case pgerrcode.AdminShutdown, pgerrcode.CrashShutdown, pgerrcode.CannotConnectNow, pgerrcode.TooManyConnections:
		return true
	}
	return pgerrcode.IsConnectionException(code)
}

// connectionLost reports whether err is a failure to reach or keep talking to
// the server.
func connectionLost(err error) bool {
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	switch {
	case errors.As(err, &connectErr), errors.As(err, &netErr):
		return true
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return true
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return true
	}
	// pgconn marks errors raised before anything reached the server (a closed
	// or broken connection) as safe to retry.
	return pgconn.SafeToRetry(err)
}

// validID reports whether id can be a uuid column value. Lookups by an id that
// cannot exist are answered without a query (and without PostgreSQL's
// invalid_text_representation error, which would abort a transaction).
func validID(id string) bool { return uuid.Validate(id) == nil }
