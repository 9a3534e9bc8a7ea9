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

// engineErr maps registry errors about the engine an operation is on: a
// missing row is ENGINE_NOT_FOUND; the rest as storeErr.
func engineErr(what string, err error) error {
	if errors.Is(err, registry.ErrNotFound) {
		return bap.Errorf(bap.CodeEngineNotFound, "Engine not found.").Wrap(fmt.Errorf("%s: %w", what, err))
	}
	return storeErr(what, err)
}

// storeErr maps any other registry error: a lost claim is ENGINE_BUSY, the
// rest as registry.PublicErr.
func storeErr(what string, err error) error {
	if errors.Is(err, errFenced) {
		if what != "" {
			err = fmt.Errorf("%s: %w", what, err)
		}
		return bap.Errorf(bap.CodeEngineBusy, "The engine is changing state; retry shortly.").Wrap(err)
	}
	return registry.PublicErr(what, err)
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
	case errors.Is(err, errFenced), errors.Is(err, registry.ErrFenced), errors.Is(err, registry.ErrUnavailable):
		return storeErr("", err)
	case errors.Is(err, errBootTimeout):
		return bap.Errorf(bap.CodeBootTimeout, "Engine did not become healthy within %s.", bootTimeout).Wrap(err)
	case errors.Is(err, backend.ErrImageNotFound):
		return bap.Errorf(bap.CodeImageNotFound, "The engine image is not available.").Wrap(err)
	case errors.Is(err, backend.ErrUnavailable):
		return bap.Errorf(bap.CodeBackendUnavailable, "The engine backend is unavailable; retry shortly.").Wrap(err)
	default:
		return bap.Errorf(bap.CodeBackendError, "The engine backend failed.").Wrap(err)
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
