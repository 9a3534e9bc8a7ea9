package kubernetes

import (
	"errors"
	"io"
	"net"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/september/bap-engine/internal/backend"
)

// classify maps an error from client-go onto a backend error class, or nil
// when it belongs to none of them. It is the only place in the package that
// knows how the API server reports what.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var netErr net.Error
	switch {
	case apierrors.IsNotFound(err):
		return backend.ErrNotFound
	case apierrors.IsConflict(err), apierrors.IsAlreadyExists(err):
		return backend.ErrConflict
	case backend.IsConnectionFailure(err),
		apierrors.IsServerTimeout(err),
		apierrors.IsTimeout(err),
		apierrors.IsTooManyRequests(err),
		apierrors.IsServiceUnavailable(err),
		apierrors.IsInternalError(err),
		apierrors.IsUnexpectedServerError(err),
		errors.Is(err, io.EOF),
		// Any network error, where IsConnectionFailure takes only
		// timeouts.
		errors.As(err, &netErr):
		return backend.ErrUnavailable
	}
	return nil
}

// wrap is backend.Annotate with classify's class.
func wrap(err error, format string, args ...any) error {
	return backend.Annotate(err, classify(err), format, args...)
}
