package backend

import "fmt"

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
