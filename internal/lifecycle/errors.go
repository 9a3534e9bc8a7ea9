package lifecycle

import (
	"errors"
	"fmt"
	"time"

	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// errFenced: this replica lost the claim or lease an operation ran under
// (another replica took it over); nothing more of the operation is written.
var errFenced = errors.New("claim lost to another replica")

// errSkip aborts a commit whose engine changed state meanwhile.
var errSkip = errors.New("engine changed state")

// storeErr maps registry errors about an engine to API errors.
func storeErr(what string, err error) error {
	switch {
	case errors.Is(err, registry.ErrNotFound):
		return bap.Errorf(bap.CodeEngineNotFound, "Engine not found.")
	case errors.Is(err, errFenced), errors.Is(err, registry.ErrFenced):
		return &wrapped{bap.Errorf(bap.CodeEngineBusy, "The engine is changing state; retry shortly."), fmt.Errorf("%s: %w", what, err)}
	case errors.Is(err, registry.ErrUnavailable):
		return &wrapped{bap.Errorf(bap.CodeDatabaseUnavailable, "The database is unavailable; retry shortly."), fmt.Errorf("%s: %w", what, err)}
	default:
		return fmt.Errorf("%s: %w", what, err)
	}
}

// productErr maps registry errors about an engine's product: a missing
// product is an internal fault here (engines cascade with their product).
func productErr(what string, err error) error {
	if errors.Is(err, registry.ErrNotFound) {
		return fmt.Errorf("%s: the engine's product is gone: %w", what, err)
	}
	return storeErr(what, err)
}

// opErr maps a backend or boot failure to the API error a caller sees.
func opErr(err error, bootTimeout time.Duration) error {
	if _, ok := bap.AsError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, errFenced):
		return &wrapped{bap.Errorf(bap.CodeEngineBusy, "The engine is changing state; retry shortly."), err}
	case errors.Is(err, registry.ErrUnavailable):
		return &wrapped{bap.Errorf(bap.CodeDatabaseUnavailable, "The database is unavailable; retry shortly."), err}
	case errors.Is(err, errBootTimeout):
		return &wrapped{bap.Errorf(bap.CodeBootTimeout, "Engine did not become healthy within %s.", bootTimeout), err}
	case errors.Is(err, backend.ErrImageNotFound):
		return &wrapped{bap.Errorf(bap.CodeImageNotFound, "The engine image is not available."), err}
	case errors.Is(err, backend.ErrUnavailable):
		return &wrapped{bap.Errorf(bap.CodeBackendUnavailable, "The engine backend is unavailable; retry shortly."), err}
	default:
		return &wrapped{bap.Errorf(bap.CodeBackendError, "The engine backend failed."), err}
	}
}

// failureReason is the short text stored on a failed engine.
func failureReason(err error) string {
	switch {
	case errors.Is(err, errBootTimeout):
		return "boot_timeout"
	case errors.Is(err, backend.ErrImageNotFound):
		return "image_not_found: " + truncate(err.Error(), 200)
	default:
		return truncate(err.Error(), 300)
	}
}

// failureErr is the error a caller that joined an operation another replica
// ran gets when that operation left the engine failed with reason.
func failureErr(reason string, bootTimeout time.Duration) error {
	switch {
	case reason == "boot_timeout":
		return bap.Errorf(bap.CodeBootTimeout, "Engine did not become healthy within %s.", bootTimeout)
	case len(reason) >= len("image_not_found") && reason[:len("image_not_found")] == "image_not_found":
		return bap.Errorf(bap.CodeImageNotFound, "The engine image is not available.")
	default:
		return bap.Errorf(bap.CodeBackendError, "The engine backend failed.")
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// wrapped carries a caller-safe *bap.Error and the internal cause (for logs).
type wrapped struct {
	pub   *bap.Error
	cause error
}

func (w *wrapped) Error() string { return w.pub.Error() + " (" + w.cause.Error() + ")" }

// As exposes the public error to errors.As.
func (w *wrapped) As(target any) bool {
	if t, ok := target.(**bap.Error); ok {
		*t = w.pub
		return true
	}
	return false
}

func (w *wrapped) Unwrap() error { return w.cause }
