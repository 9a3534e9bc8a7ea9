package api

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/policy"
	"github.com/september/bap-engine/internal/registry"
)

// statusOf is the one table from error code to HTTP status.
var statusOf = map[string]int{
	bap.CodeEngineNotFound:       http.StatusNotFound,
	bap.CodeEngineAlreadyExists:  http.StatusConflict,
	bap.CodeEngineAlreadyRunning: http.StatusConflict,
	bap.CodeEngineNotRunning:     http.StatusConflict,
	bap.CodeEngineBusy:           http.StatusConflict,
	bap.CodeQuotaExceeded:        http.StatusTooManyRequests,
	bap.CodeRateLimited:          http.StatusTooManyRequests,
	bap.CodePortExhaustion:       http.StatusServiceUnavailable,
	bap.CodeBootTimeout:          http.StatusGatewayTimeout,
	bap.CodeImageNotFound:        http.StatusBadGateway,
	bap.CodeBackendUnavailable:   http.StatusServiceUnavailable,
	bap.CodeBackendError:         http.StatusBadGateway,
	bap.CodeDatabaseUnavailable:  http.StatusServiceUnavailable,
	bap.CodeInvalidPlatformKey:   http.StatusUnauthorized,
	bap.CodeInvalidAdminKey:      http.StatusUnauthorized,
	bap.CodeProductSlugExists:    http.StatusConflict,
	bap.CodeProductNotFound:      http.StatusNotFound,
	bap.CodeValidation:           http.StatusUnprocessableEntity,
	bap.CodePayloadTooLarge:      http.StatusRequestEntityTooLarge,
	bap.CodeNotFound:             http.StatusNotFound,
	bap.CodeMethodNotAllowed:     http.StatusMethodNotAllowed,
	bap.CodeInternal:             http.StatusInternalServerError,
	bap.CodeUpgradeFailed:        http.StatusBadGateway,
	bap.CodeRolloutInProgress:    http.StatusConflict,
	bap.CodeRolloutNotFound:      http.StatusNotFound,
}

// statusClientClosedRequest is what the access log and the metrics show of
// a request its client abandoned (nginx's "client closed request").
const statusClientClosedRequest = 499

// Messages of errors the api makes itself.
const (
	msgInternal            = "Internal server error."
	msgDatabaseUnavailable = "The database is unavailable; retry shortly."
	msgBackendUnavailable  = "The engine backend is unavailable; retry shortly."
	msgInvalidPlatformKey  = "Invalid or missing platform key."
	msgInvalidAdminKey     = "Invalid or missing admin key."
	msgEngineNotFound      = "No engine for this user_id."
	msgProductNotFound     = "Product not found."
)

// errorBody is the envelope of every non-2xx answer.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// PublicError returns what a caller may see of err and the HTTP status the
// API answers it with: its *bap.Error, a DATABASE_UNAVAILABLE for an
// unreachable registry, else INTERNAL. internal reports whether err had to
// be hidden (and should be logged).
func PublicError(err error) (e *bap.Error, status int, internal bool) {
	if be, ok := bap.AsError(err); ok {
		if st, known := statusOf[be.Code]; known {
			return be, st, be.Code == bap.CodeInternal
		}
		// An undocumented code is a programming error: do not invent a
		// status for it.
		return bap.Errorf(bap.CodeInternal, msgInternal), http.StatusInternalServerError, true
	}
	if errors.Is(err, registry.ErrUnavailable) {
		return bap.Errorf(bap.CodeDatabaseUnavailable, msgDatabaseUnavailable), http.StatusServiceUnavailable, false
	}
	return bap.Errorf(bap.CodeInternal, msgInternal), http.StatusInternalServerError, true
}

// writeError answers with err's envelope. Internal errors are logged with
// the request id; so are 5xx answers whose cause is wrapped behind a public
// error (a backend or database failure), so operators see the cause.
func (s *server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	e, status, internal := PublicError(err)
	log := loggerFrom(r.Context(), s.log)
	switch {
	case r.Context().Err() != nil && errors.Is(err, context.Canceled):
		// The client left before its answer: nobody reads it and it is no
		// fault of the server, so it is kept out of the 5xx an operator
		// watches (access log and metrics show 499).
		log.Info("request cancelled by the client", "err", err)
		status = statusClientClosedRequest
	case internal:
		log.Error("internal error", "err", err)
	case status >= 500:
		log.Warn("request failed", "code", e.Code, "err", err)
	}
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(policy.RetryAfterSeconds(e.RetryAfter)))
	}
	writeJSON(w, status, errorBody{Error: errorDetail{Code: e.Code, Message: e.Message}})
}
