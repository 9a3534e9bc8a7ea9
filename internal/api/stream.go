package api

import (
	"errors"
	"net/http"
	"time"
)

// Stream is a long-lived answer: an engine's log followed, server-sent
// events (the dashboard's /ui/events). Every route that streams writes
// through one, so a stream outlives the server's time limits while a client
// that stops reading still cannot hold it:
//
//   - reading: net/http lifts the request's read deadline
//     (ORCH_HTTP_READ_TIMEOUT_S) once the request's body has been read, so a
//     stream is never cut for the time it has been open;
//   - writing: the answer's write deadline is per piece, not per answer.
//     Each Write extends it to now + the window (Deps.WriteTimeout) before
//     writing, then flushes, so a stream may stay quiet and open for as long
//     as it likes, and a piece the client does not take within the window
//     ends it (Write fails; the handler returns).
type Stream struct {
	w      http.ResponseWriter
	rc     *http.ResponseController
	window time.Duration
}

// NewStream begins a streamed answer to r on w. Each piece gets the write
// window of the api handler that serves r (Deps.WriteTimeout; routes of
// Deps.UI too); outside it, pieces are unbounded. Set the headers
// (Content-Type) before the first Write.
func NewStream(w http.ResponseWriter, r *http.Request) *Stream {
	var window time.Duration
	if info := infoFrom(r.Context()); info != nil {
		window = info.window
	}
	return &Stream{w: w, rc: http.NewResponseController(w), window: window}
}

// Write sends p to the client at once. It fails when the client has gone or
// has not taken p within the window; the stream is over then.
func (s *Stream) Write(p []byte) (int, error) {
	if err := s.extend(); err != nil {
		return 0, err
	}
	n, err := s.w.Write(p)
	if err != nil {
		return n, err
	}
	return n, s.rc.Flush()
}

// extend moves the write deadline to now + window. A writer that cannot
// carry deadlines (a test recorder) is written to without one.
func (s *Stream) extend() error {
	var deadline time.Time // none
	if s.window > 0 {
		deadline = time.Now().Add(s.window)
	}
	if err := s.rc.SetWriteDeadline(deadline); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}
