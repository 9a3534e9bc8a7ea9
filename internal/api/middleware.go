package api

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/requestid"
)

// HeaderRequestID carries the request id in and out.
const HeaderRequestID = "X-Request-Id"

// reqInfo is the request-scoped state the middleware shares with handlers.
type reqInfo struct {
	id string
	// product is the calling product's slug once authenticated (access log).
	product string
	// window is Deps.WriteTimeout, for the request's Stream.
	window time.Duration
}

type ctxKey struct{}

func infoFrom(ctx context.Context) *reqInfo {
	info, _ := ctx.Value(ctxKey{}).(*reqInfo)
	return info
}

// loggerFrom returns the request's logger (with its request id), or def.
func loggerFrom(ctx context.Context, def *slog.Logger) *slog.Logger {
	if info := infoFrom(ctx); info != nil {
		return def.With("request_id", info.id)
	}
	return def
}

// setProduct records the authenticated product for the access log.
func setProduct(ctx context.Context, slug string) {
	if info := infoFrom(ctx); info != nil {
		info.product = slug
	}
}

// handlerFunc serves one route; p is the calling product on platform-key
// routes. A returned error is answered by writeError.
type handlerFunc func(w http.ResponseWriter, r *http.Request, p bap.Product) error

// handle adapts a route: it marks the answer as the route's own (so the
// envelope writer leaves it alone), authenticates, runs the handler and
// answers its error.
func (s *server) handle(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rw, ok := w.(*responseWriter); ok {
			rw.routed = true
		}
		var p bap.Product
		var err error
		switch rt.auth {
		case authPlatform:
			p, err = s.authPlatform(r)
		case authAdmin:
			err = s.authAdmin(r)
		case authMetrics:
			err = s.authMetrics(r)
		}
		if err == nil {
			err = rt.h(w, r, p)
		}
		if err != nil {
			s.writeError(w, r, err)
		}
	})
}

// mount adapts a handler that answers for itself (the dashboard): the
// envelope writer leaves its answers alone.
func (s *server) mount(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rw, ok := w.(*responseWriter); ok {
			rw.routed = true
		}
		h.ServeHTTP(w, r)
	})
}

// middleware wraps the mux: request id, panic recovery, the error envelope
// on the mux's own 404/405 answers, the access log and request metrics.
func (s *server) middleware(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		began := time.Now()
		id := requestID(r.Header.Get(HeaderRequestID))
		w.Header().Set(HeaderRequestID, id)
		info := &reqInfo{id: id, window: s.writeTimeout}
		// The id also rides the context for requestid.Handler, so the
		// lifecycle and health logs of this request's work carry it.
		r = r.WithContext(requestid.With(context.WithValue(r.Context(), ctxKey{}, info), id))
		rw := &responseWriter{ResponseWriter: w, method: r.Method, path: r.URL.Path}
		if s.writeTimeout > 0 {
			// The window opens with the answer's first byte, so a handler
			// may take as long as its operation needs. (net/http lifts
			// the deadline after each request, so it never reaches the
			// next one on a keep-alive connection.)
			rw.deadlines = http.NewResponseController(w)
			rw.window = s.writeTimeout
		}
		defer s.finish(rw, r, info, began)
		defer s.recoverPanic(rw, r, info)
		mux.ServeHTTP(rw, r)
	})
}

// recoverPanic turns a handler's panic into a 500 envelope (when nothing was
// written yet) and logs it with the stack. http.ErrAbortHandler keeps its
// meaning: abort the connection quietly.
func (s *server) recoverPanic(rw *responseWriter, r *http.Request, info *reqInfo) {
	v := recover()
	if v == nil {
		return
	}
	if v == http.ErrAbortHandler {
		panic(v)
	}
	s.log.Error("panic serving request", "request_id", info.id, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
	if rw.status == 0 {
		rw.routed = true
		s.writeError(rw, r, bap.Errorf(bap.CodeInternal, msgInternal))
	}
}

// finish writes the access log line and the request metrics. Neither has
// headers or bodies in it: keys never reach a log.
func (s *server) finish(rw *responseWriter, r *http.Request, info *reqInfo, began time.Time) {
	d := time.Since(began)
	status := rw.status
	if status == 0 {
		status = http.StatusOK
	}
	route := r.Pattern
	if route == "" {
		route = "unmatched"
	}
	level := slog.LevelInfo
	if route == "GET /health" || route == "GET /metrics/prometheus" {
		level = slog.LevelDebug // probes and scrapes would drown the log
	}
	if s.metrics != nil {
		s.metrics.HTTPRequest(route, metricMethod(r.Method), status, d)
	}
	if !s.log.Enabled(r.Context(), level) {
		return
	}
	s.log.LogAttrs(r.Context(), level, "http request",
		slog.String("request_id", info.id),
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.String("route", route),
		slog.Int("status", status),
		slog.Float64("duration_ms", float64(d.Microseconds())/1000),
		slog.Int64("bytes", rw.bytes),
		slog.String("product", info.product),
	)
}

// metricMethod bounds the method label to the standard methods.
func metricMethod(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions:
		return m
	}
	return "OTHER"
}

// maxRequestIDLen bounds a caller-supplied request id.
const maxRequestIDLen = 128

// requestID returns the caller's X-Request-Id when it is short and plain
// (it goes into logs), else a new one.
func requestID(in string) string {
	if in != "" && len(in) <= maxRequestIDLen {
		ok := true
		for i := 0; i < len(in) && ok; i++ {
			c := in[i]
			ok = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
				c == '-' || c == '_' || c == '.' || c == ':'
		}
		if ok {
			return in
		}
	}
	return newRequestID()
}

// Request ids are a random per-process prefix and a counter: unique,
// and far cheaper than a random UUID per request.
var (
	requestIDPrefix = uuid.NewString()[:8] + "-"
	requestIDSeq    atomic.Uint64
)

func newRequestID() string {
	return requestIDPrefix + strconv.FormatUint(requestIDSeq.Add(1), 36)
}

// responseWriter records the status and size of the answer, and replaces
// the mux's own plain-text answers (unknown route, wrong method, path
// clean-up redirect) with the error envelope: any status >= 300 written
// before a route's handler took over is the mux's.
type responseWriter struct {
	http.ResponseWriter
	method, path string
	status       int
	bytes        int64
	// routed is set once a route's handler runs.
	routed bool
	// swallow drops the mux's own body after the envelope replaced it.
	swallow bool
	// deadlines, when set, gives the answer window (Deps.WriteTimeout) to
	// reach the client from its first byte on.
	deadlines *http.ResponseController
	window    time.Duration
}

// WriteHeader records the status, or replaces the mux's own answer.
func (w *responseWriter) WriteHeader(code int) {
	if w.status != 0 {
		return
	}
	if w.deadlines != nil {
		_ = w.deadlines.SetWriteDeadline(time.Now().Add(w.window))
	}
	if !w.routed && code >= 300 {
		w.swallow = true
		h := w.Header()
		h.Del("Location")
		h.Del("Content-Length")
		var e errorDetail
		if code == http.StatusMethodNotAllowed {
			e = errorDetail{Code: bap.CodeMethodNotAllowed,
				Message: fmt.Sprintf("Method %s is not allowed on %s (allowed: %s).", w.method, clip(w.path), h.Get("Allow"))}
		} else {
			code = http.StatusNotFound
			h.Del("Allow")
			e = errorDetail{Code: bap.CodeNotFound, Message: fmt.Sprintf("No route %s %s.", w.method, clip(w.path))}
		}
		w.status = code
		b, _ := json.Marshal(errorBody{Error: e})
		h.Set("Content-Type", "application/json")
		h.Set("X-Content-Type-Options", "nosniff")
		w.ResponseWriter.WriteHeader(code)
		n, _ := w.ResponseWriter.Write(append(b, '\n'))
		w.bytes += int64(n)
		return
	}
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// Write counts the bytes written and drops a replaced answer's body.
func (w *responseWriter) Write(b []byte) (int, error) {
	if w.swallow {
		return len(b), nil
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// clip bounds a path quoted in an error message.
func clip(p string) string {
	const max = 200
	if len(p) > max {
		return p[:max] + "..."
	}
	return p
}
