package docker

import (
	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"github.com/september/bap-engine/internal/backend"
)

// classify maps an error from the Docker client onto a backend error class,
// or nil when it belongs to none of them. It is the only place in the
// package that knows how the client reports what: the daemon's HTTP status
// becomes a containerd errdefs class, transport failures become
// client.IsErrConnectionFailed, and our per-call timeouts surface as
// context.DeadlineExceeded.
func classify(err error) error {
	if err == nil {
		return nil
	}
	switch {
	case backend.IsConnectionFailure(err),
		cerrdefs.IsDeadlineExceeded(err),
		cerrdefs.IsUnavailable(err),
		client.IsErrConnectionFailed(err):
		return backend.ErrUnavailable
	case cerrdefs.IsNotFound(err):
		return backend.ErrNotFound
	case cerrdefs.IsConflict(err):
		return backend.ErrConflict
	}
	return nil
}

// wrap is backend.Annotate with classify's class.
func wrap(err error, format string, args ...any) error {
	return backend.Annotate(err, classify(err), format, args...)
}
