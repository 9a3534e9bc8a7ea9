package client

import (
	"errors"
	"fmt"
	"time"
)

// Error codes the API answers with (Error.Code).
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
	CodeUpgradeFailed        = "UPGRADE_FAILED"
	CodeRolloutInProgress    = "ROLLOUT_IN_PROGRESS"
	CodeRolloutNotFound      = "ROLLOUT_NOT_FOUND"
)

// Error is a non-2xx answer of the API.
type Error struct {
	// Status is the HTTP status code.
	Status int
	// Code is the documented error code (one of the Code constants); empty
	// when the body was not the API's error envelope (e.g. a proxy's page).
	Code string
	// Message is the server's human-readable explanation.
	Message string
	// RetryAfter is the server's Retry-After (429 RATE_LIMITED), else 0.
	RetryAfter time.Duration
}

// Error renders the status, code and message.
func (e *Error) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("bap-engine: HTTP %d: %s", e.Status, e.Message)
	}
	return fmt.Sprintf("bap-engine: %d %s: %s", e.Status, e.Code, e.Message)
}

// ErrorCode returns the API error code of err (an *Error anywhere in its
// chain), or "" when err is not an API answer (nil, or a transport error).
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}
