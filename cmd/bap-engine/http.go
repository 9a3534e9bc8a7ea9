package main

import (
	"log/slog"
	"net"
	"net/http"
	"sync"

	"github.com/september/bap-engine/internal/config"
)

// maxHeaderBytes caps a request's line and headers at 64 KiB (SPEC §14):
// net/http reads up to MaxHeaderBytes plus 4 KiB of slack before it answers
// 431 Request Header Fields Too Large.
const maxHeaderBytes = 64<<10 - 4<<10

// newHTTPServer is the HTTP server of serve and dev with the limits of
// SPEC §14, so that slow, stalled or idle clients cannot hold its
// connections:
//   - ReadTimeout (ORCH_HTTP_READ_TIMEOUT_S) bounds a request's headers and
//     body together (ReadHeaderTimeout is left to default to it). net/http
//     lifts the read deadline once the body has been read, so it never
//     cuts a handler or a stream short.
//   - No WriteTimeout: it would bound whole handlers (a provision waits for
//     an engine to boot) and cut streams. The api sets a write deadline per
//     answer instead, from its first byte (api.Deps.WriteTimeout), and
//     api.Stream extends it per piece.
//   - IdleTimeout (ORCH_HTTP_IDLE_TIMEOUT_S) closes idle keep-alive
//     connections; MaxHeaderBytes caps headers.
func newHTTPServer(cfg config.Config, h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:        h,
		ReadTimeout:    cfg.HTTPReadTimeout,
		IdleTimeout:    cfg.HTTPIdleTimeout,
		MaxHeaderBytes: maxHeaderBytes,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// limitConns makes ln hold at most ORCH_HTTP_MAX_CONNS connections at once:
// at the limit it stops accepting, so further connections wait in the
// kernel's listen backlog until one of those held closes.
//
// golang.org/x/net/netutil.LimitListener does the same, but its connections
// hide CloseWrite, which net/http uses to end its own error answers (431,
// 400) with a half-close, so that the client reads them before the
// connection is reset under the rest of its request.
func limitConns(ln net.Listener, cfg config.Config) net.Listener {
	return &connLimiter{Listener: ln, slots: make(chan struct{}, cfg.HTTPMaxConns), closed: make(chan struct{})}
}

// connLimiter is a listener that holds at most cap(slots) connections.
type connLimiter struct {
	net.Listener
	slots     chan struct{}
	closed    chan struct{}
	closeOnce sync.Once
}

// Accept waits for a free slot, then accepts the next connection.
func (l *connLimiter) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitedConn{Conn: c, release: func() { <-l.slots }}, nil
}

// Close closes the listener and ends an Accept waiting for a slot.
func (l *connLimiter) Close() error {
	err := l.Listener.Close()
	l.closeOnce.Do(func() { close(l.closed) })
	return err
}

// limitedConn gives its slot back when closed.
type limitedConn struct {
	net.Conn
	releaseOnce sync.Once
	release     func()
}

// Close closes the connection and frees its slot.
func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.releaseOnce.Do(c.release)
	return err
}

// CloseWrite half-closes a TCP connection (net/http's graceful end of an
// error answer).
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
