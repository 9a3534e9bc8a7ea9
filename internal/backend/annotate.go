package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
)

// Annotate prefixes err with what was being done (format and args) and,
// when class is one of the error classes above, marks it with class, so
// callers test with errors.Is while the daemon's or API server's own
// message stays readable. A nil err stays nil.
func Annotate(err, class error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	what := fmt.Sprintf(format, args...)
	if class != nil {
		return fmt.Errorf("%s: %w: %w", what, class, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// IsConnectionFailure reports whether err is a call's deadline or a
// connection to the daemon or API server failing (refused, reset, broken,
// cut short, timed out): the transport failures every backend classes as
// ErrUnavailable, beside those its client reports in its own way.
func IsConnectionFailure(err error) bool {
	var netErr net.Error
	return errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		(errors.As(err, &netErr) && netErr.Timeout())
}
