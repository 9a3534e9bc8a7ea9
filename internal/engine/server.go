package engine

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// Limits of the HTTP surface.
const (
	maxBodyBytes   = 1 << 20
	maxDelay       = 2 * time.Second
	maxCatalog     = 10000
	defaultRecall  = 50
	healthPingWait = 2 * time.Second
)

// server is the engine's HTTP handler.
type server struct {
	cfg     config
	brain   *brain
	log     *slog.Logger
	started time.Time
	// ready is true while the brain is open and the engine accepts work.
	ready atomic.Bool
	// stopping is set once shutdown began, so /health says why it is not ready.
	stopping atomic.Bool
	// healthChecks counts the GET /health requests answered: how often the
	// orchestrators probe this engine, seen from the engine.
	healthChecks atomic.Int64
	mux          *http.ServeMux
}

// newServer builds the handler; it starts not ready.
func newServer(cfg config, b *brain, log *slog.Logger) *server {
	s := &server{cfg: cfg, brain: b, log: log, started: time.Now(), mux: http.NewServeMux()}
	s.mux.HandleFunc("GET /health", s.handleHealth)
	s.mux.HandleFunc("GET /brain", s.handleBrain)
	s.mux.HandleFunc("POST /execute", s.handleExecute)
	s.mux.HandleFunc("GET /catalog", s.handleCatalog)
	s.mux.HandleFunc("/", s.handleUnknown)
	return s
}

// knownPaths answer 405 rather than 404 for another method.
var knownPaths = map[string]string{
	"/health":  http.MethodGet,
	"/brain":   http.MethodGet,
	"/execute": http.MethodPost,
	"/catalog": http.MethodGet,
}

// ServeHTTP checks the engine key on everything but /health, then routes.
func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/health" && r.Method == http.MethodGet {
		s.mux.ServeHTTP(w, r)
		return
	}
	if s.cfg.refused != "" {
		writeError(w, http.StatusServiceUnavailable, "ENGINE_REFUSED", s.cfg.refused)
		return
	}
	start := time.Now()
	if !s.authorized(r.Header.Get("X-Engine-Key")) {
		writeError(w, http.StatusUnauthorized, "INVALID_ENGINE_KEY", "missing or invalid X-Engine-Key")
		s.log.Info("request", "method", r.Method, "path", r.URL.Path, "status", http.StatusUnauthorized)
		return
	}
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	s.mux.ServeHTTP(rec, r)
	s.log.Info("request", "method", r.Method, "path", r.URL.Path, "status", rec.status,
		"duration_ms", time.Since(start).Milliseconds())
}

// authorized compares sha256(key) with ENGINE_KEY_HASH in constant time.
func (s *server) authorized(key string) bool {
	if key == "" {
		return false
	}
	sum := sha256.Sum256([]byte(key))
	return subtle.ConstantTimeCompare(sum[:], s.cfg.keyHash[:]) == 1
}

func (s *server) handleHealth(w http.ResponseWriter, r *http.Request) {
	checks := s.healthChecks.Add(1)
	uptime := time.Since(s.started).Seconds()
	if s.cfg.refused != "" {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{
			"status": "refused", "reason": s.cfg.refused, "version": Version,
			"engine_version": s.cfg.engineVersion, "uptime_s": uptime,
		})
		return
	}
	if !s.ready.Load() {
		status := "starting"
		if s.stopping.Load() {
			status = "stopping"
		}
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": status, "version": Version, "uptime_s": uptime})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), healthPingWait)
	defer cancel()
	if err := s.brain.ping(ctx); err != nil {
		s.log.Warn("health: brain unreachable", "err", err)
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{
			"status": "degraded", "version": Version, "uptime_s": uptime,
			"subsystems": map[string]string{"brain": "unreachable"},
		})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"status":         "ok",
		"version":        Version,
		"engine_version": s.cfg.engineVersion,
		"uptime_s":       uptime,
		"uptime_seconds": uptime,
		"health_checks":  checks,
		"subsystems":     map[string]string{"brain": "ok"},
	})
}

func (s *server) handleBrain(w http.ResponseWriter, r *http.Request) {
	counter, total, notes, err := s.brain.recall(r.Context(), defaultRecall)
	if err != nil {
		s.internal(w, "read brain", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"counter": counter, "note_count": total, "notes": notes})
}

// executeRequest is the body of POST /execute.
type executeRequest struct {
	Input  *string `json:"input"`
	Stream bool    `json:"stream"`
	// DelayMS pauses before answering and between streamed tokens (0-2000);
	// it lets tests and benchmarks hold a request in flight.
	DelayMS int `json:"delay_ms"`
}

func (s *server) handleExecute(w http.ResponseWriter, r *http.Request) {
	var req executeRequest
	r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
	dec := json.NewDecoder(r.Body)
	if err := dec.Decode(&req); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE", fmt.Sprintf("body exceeds %d bytes", maxBodyBytes))
			return
		}
		writeError(w, http.StatusUnprocessableEntity, "VALIDATION_ERROR", "body must be a JSON object like {\"input\": \"...\"}")
		return
	}
	if req.Input == nil {
		writeError(w, http.StatusUnprocessableEntity, "VALIDATION_ERROR", "input is required")
		return
	}
	delay := time.Duration(req.DelayMS) * time.Millisecond
	if req.DelayMS < 0 || delay > maxDelay {
		writeError(w, http.StatusUnprocessableEntity, "VALIDATION_ERROR", "delay_ms must be between 0 and 2000")
		return
	}
	counter, output, err := s.brain.remember(r.Context(), *req.Input)
	if err != nil {
		s.internal(w, "execute", err)
		return
	}
	if req.Stream || strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
		s.stream(w, r, counter, output, delay)
		return
	}
	if !sleep(r.Context(), delay) {
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"output": output, "counter": counter})
}

// stream sends output as server-sent events: one data event per token,
// then an "done" event carrying the whole answer.
func (s *server) stream(w http.ResponseWriter, r *http.Request, counter int64, output string, delay time.Duration) {
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	words := strings.SplitAfter(output, " ")
	for _, tok := range words {
		if !sleep(r.Context(), delay) {
			return
		}
		data, _ := json.Marshal(map[string]string{"token": tok})
		if _, err := fmt.Fprintf(w, "data: %s\n\n", data); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
	data, _ := json.Marshal(map[string]any{"output": output, "counter": counter})
	if _, err := fmt.Fprintf(w, "event: done\ndata: %s\n\n", data); err != nil {
		return
	}
	_ = rc.Flush()
}

// sleep waits d or until ctx ends; it reports whether d elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// catalogFile is one entry of GET /catalog.
type catalogFile struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
}

func (s *server) handleCatalog(w http.ResponseWriter, r *http.Request) {
	dir := s.cfg.catalogDir
	files := []catalogFile{}
	if dir == "" {
		writeJSON(w, http.StatusOK, map[string]any{"catalog_dir": "", "available": false, "files": files})
		return
	}
	truncated := false
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		if len(files) >= maxCatalog {
			truncated = true
			return fs.SkipAll
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		files = append(files, catalogFile{Path: filepath.ToSlash(rel), Size: info.Size()})
		return nil
	})
	if err != nil {
		s.log.Warn("catalog unreadable", "dir", dir, "err", err)
		writeJSON(w, http.StatusOK, map[string]any{"catalog_dir": dir, "available": false, "files": []catalogFile{}})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"catalog_dir": dir, "available": true, "files": files, "truncated": truncated})
}

func (s *server) handleUnknown(w http.ResponseWriter, r *http.Request) {
	if method, ok := knownPaths[r.URL.Path]; ok {
		w.Header().Set("Allow", method)
		writeError(w, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", fmt.Sprintf("%s %s is not allowed", r.Method, r.URL.Path))
		return
	}
	writeError(w, http.StatusNotFound, "NOT_FOUND", "no such route")
}

// internal logs err and answers 500 without its text.
func (s *server) internal(w http.ResponseWriter, what string, err error) {
	s.log.Error(what, "err", err)
	writeError(w, http.StatusInternalServerError, "INTERNAL", "internal error")
}

// writeJSON writes v with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeError writes the orchestrator's error shape.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

// statusRecorder remembers the status code for the request log and keeps
// http.ResponseController working through Unwrap.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
