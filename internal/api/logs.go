package api

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/september/bap-engine/internal/bap"
)

// Bounds of GET /engines/{user_id}/logs?tail=.
const (
	defaultLogTail = 200
	maxLogTail     = 100000
)

// engineLogs: GET /engines/{user_id}/logs?tail=200&follow=false (platform
// key): the engine's own stdout and stderr as text/plain, the last tail
// lines (0: all the backend keeps); follow=true streams what the engine
// writes next, through a Stream, until the client leaves or the server shuts
// down. The orchestrator writes nothing of its own into it.
func (s *server) engineLogs(w http.ResponseWriter, r *http.Request, p bap.Product) error {
	q := r.URL.Query()
	tail := defaultLogTail
	if v := q.Get("tail"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > maxLogTail {
			return bap.Errorf(bap.CodeValidation, "tail must be an integer from 0 (everything) to %d.", maxLogTail)
		}
		tail = n
	}
	follow := false
	if v := q.Get("follow"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return bap.Errorf(bap.CodeValidation, "follow must be true or false.")
		}
		follow = b
	}
	e, err := s.engineOf(r, p)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	if follow && s.ctx != nil {
		defer context.AfterFunc(s.ctx, cancel)()
	}
	rc, err := s.lifecycle.Logs(ctx, e, tail, follow)
	if err != nil {
		return err
	}
	defer rc.Close()
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if !follow {
		w.WriteHeader(http.StatusOK)
		if _, err := io.Copy(w, rc); err != nil {
			loggerFrom(r.Context(), s.log).Info("engine log cut short", "engine_id", e.ID, "err", err)
		}
		return nil
	}
	st := NewStream(w, r)
	w.WriteHeader(http.StatusOK)
	if _, err := st.Write(nil); err != nil { // the headers, at once
		return nil
	}
	if _, err := io.Copy(st, rc); err != nil && ctx.Err() == nil {
		loggerFrom(r.Context(), s.log).Info("engine log stream ended", "engine_id", e.ID, "err", fmt.Sprint(err))
	}
	return nil
}
