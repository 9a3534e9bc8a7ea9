package bap

import (
	"errors"
	"fmt"
	"time"
)

// Error codes of the HTTP API (SPEC §2). The api package maps each to a status.
const (
	CodeEngineNotFound       = "ENGINE_NOT_FOUND"
	CodeEngineAlreadyExists  = "ENGINE_ALREADY_EXISTS"
	CodeEngineAlreadyRunning = "ENGINE_ALREADY_RUNNING"
	CodeEngineNotRunning     = "ENGINE_NOT_RUNNING"
	CodeEngineBusy           = "ENGINE_BUSY"
	CodeQuotaExceeded        = "QUOTA_EXCEEDED"
	CodeRateLimited          = "RATE_LIMITED"
	CodePortExhaustion       = "PORT_EXHAUSTION"
	CodeBootTimeout          = "BOOT_TIMEOUT"
	CodeImageNotFound        = "IMAGE_NOT_FOUND"
	CodeBackendUnavailable   = "BACKEND_UNAVAILABLE"
	CodeBackendError         = "BACKEND_ERROR"
	CodeDatabaseUnavailable  = "DATABASE_UNAVAILABLE"
	CodeInvalidPlatformKey   = "INVALID_PLATFORM_KEY"
	CodeInvalidAdminKey      = "INVALID_ADMIN_KEY"
	CodeProductSlugExists    = "PRODUCT_SLUG_EXISTS"
	CodeProductNotFound      = "PRODUCT_NOT_FOUND"
	CodeValidation           = "VALIDATION_ERROR"
	CodePayloadTooLarge      = "PAYLOAD_TOO_LARGE"
	CodeNotFound             = "NOT_FOUND"
	CodeMethodNotAllowed     = "METHOD_NOT_ALLOWED"
	CodeInternal             = "INTERNAL"
	// Engine upgrades and rollouts (SPEC §16).
	CodeUpgradeFailed     = "UPGRADE_FAILED"
	CodeRolloutInProgress = "ROLLOUT_IN_PROGRESS"
	CodeRolloutNotFound   = "ROLLOUT_NOT_FOUND"
)

// Error is an error meant for the caller: a documented code and a human
// message that is safe to show (no internal detail, no secret), and
// optionally the internal cause, kept for logs and errors.Is but never sent.
type Error struct {
	Code    string
	Message string
	// RetryAfter, when positive, is sent as the Retry-After header.
	RetryAfter time.Duration
	// Cause is what went wrong inside; Error() includes it, the API never
	// shows it.
	Cause error
}

// Error is the code and message, then the cause in parentheses: the text
// for logs.
func (e *Error) Error() string {
	if e.Cause == nil {
		return e.Code + ": " + e.Message
	}
	return e.Code + ": " + e.Message + " (" + e.Cause.Error() + ")"
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Cause }

// Errorf returns an *Error with a formatted message: the one constructor.
// Chain Wrap to keep the cause.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Wrap sets e's cause and returns e.
func (e *Error) Wrap(cause error) *Error {
	e.Cause = cause
	return e
}

// ErrorCode returns the code of the first *Error in err's chain, INTERNAL for
// any other non-nil error, and "" for nil.
func ErrorCode(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// AsError returns the first *Error in err's chain, if any.
func AsError(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}
