package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/client"
	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/config"
)

// limitsServe starts serve on SQLite with the given ORCH_HTTP_* settings.
func limitsServe(t *testing.T, kv ...string) (*orchestrator, map[string]string) {
	t.Helper()
	env := baseEnv(t, "sqlite:///"+strings.TrimPrefix(filepath.Join(t.TempDir(), "bap.db"), "/"))
	for i := 0; i+1 < len(kv); i += 2 {
		env[kv[i]] = kv[i+1]
	}
	return startServe(t, env), env
}

// dial opens a raw TCP connection to the orchestrator at url.
func dial(t *testing.T, url string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(url, "http://"), 10*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// send writes s on c.
func send(t *testing.T, c net.Conn, s string) {
	t.Helper()
	require.NoError(t, c.SetWriteDeadline(time.Now().Add(10*time.Second)))
	_, err := io.WriteString(c, s)
	require.NoError(t, err)
}

// closedByServer reads c until the server closes it, failing when it is
// still open after within. It returns how long after since that was, and
// what was read.
func closedByServer(t *testing.T, c net.Conn, since time.Time, within time.Duration) (time.Duration, string) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(within)))
	b, err := io.ReadAll(c)
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "the server did not close the connection within %s (read %q)", within, b)
	if err != nil {
		require.ErrorIs(t, err, syscall.ECONNRESET)
	}
	return time.Since(since), string(b)
}

// exchange sends a request on c and reads its answer.
func exchange(t *testing.T, c net.Conn, br *bufio.Reader, req string, within time.Duration) *http.Response {
	t.Helper()
	send(t, c, req)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(within)))
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	_, err = io.Copy(io.Discard, resp.Body)
	require.NoError(t, err)
	resp.Body.Close()
	return resp
}

const getHealth = "GET /health HTTP/1.1\r\nHost: orchestrator\r\n\r\n"

// TestReadTimeoutClosesStalledRequests: a request whose headers, or whose
// body, are not complete within ORCH_HTTP_READ_TIMEOUT_S is closed, leaves
// nothing behind, and never delays other requests meanwhile.
func TestReadTimeoutClosesStalledRequests(t *testing.T) {
	const readTimeout = time.Second
	o, env := limitsServe(t, "ORCH_HTTP_READ_TIMEOUT_S", "1")
	ctx := context.Background()
	prod, err := adminClient(o.url, env).RegisterProduct(ctx, client.ProductRequest{Slug: "acme", DisplayName: "Acme"})
	require.NoError(t, err)

	sent := time.Now()
	headers := dial(t, o.url)
	send(t, headers, "POST /engines/provision HTTP/1.1\r\nHost: orchestrator\r\nX-Platform-Key: ")
	body := dial(t, o.url)
	send(t, body, "POST /engines/provision HTTP/1.1\r\nHost: orchestrator\r\nX-Platform-Key: "+prod.PlatformAPIKey+
		"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user_id\": \"alice")

	// Both stall; everyone else is served meanwhile.
	h, err := client.New(o.url).Health(ctx)
	require.NoError(t, err)
	require.Equal(t, "ok", h.Status)

	took, got := closedByServer(t, headers, sent, 30*time.Second)
	require.GreaterOrEqual(t, took, readTimeout/2, "closed before the read timeout")
	require.Empty(t, got, "a request without complete headers gets no answer")

	took, got = closedByServer(t, body, sent, 30*time.Second)
	require.GreaterOrEqual(t, took, readTimeout/2, "closed before the read timeout")
	// The handler was reading the body: its answer says the body never came.
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(got)), nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusUnprocessableEntity, resp.StatusCode)
	b, _ := io.ReadAll(resp.Body)
	require.Contains(t, string(b), `"code":"VALIDATION_ERROR"`)

	list, err := client.New(o.url, client.WithPlatformKey(prod.PlatformAPIKey)).List(ctx, client.ListOptions{})
	require.NoError(t, err)
	require.Zero(t, list.Total, "a stalled provision leaves no engine")
	require.Empty(t, engineDirs(t, env))
}

// TestIdleKeepAliveClosed: a keep-alive connection left idle is closed after
// ORCH_HTTP_IDLE_TIMEOUT_S; one in use is not, however long it lives.
func TestIdleKeepAliveClosed(t *testing.T) {
	const idle = time.Second
	o, _ := limitsServe(t, "ORCH_HTTP_IDLE_TIMEOUT_S", "1")

	busy := dial(t, o.url)
	busyR := bufio.NewReader(busy)
	began := time.Now()
	for time.Since(began) < 3*idle {
		require.Equal(t, http.StatusOK, exchange(t, busy, busyR, getHealth, 10*time.Second).StatusCode,
			"a connection in use is kept past the idle timeout")
		time.Sleep(idle / 5)
	}

	c := dial(t, o.url)
	require.Equal(t, http.StatusOK, exchange(t, c, bufio.NewReader(c), getHealth, 10*time.Second).StatusCode)
	took, rest := closedByServer(t, c, time.Now(), 30*time.Second)
	require.GreaterOrEqual(t, took, idle/2, "closed before the idle timeout")
	require.Empty(t, rest)
}

// TestHeaderCap: headers up to 64 KiB are served; more is 431.
func TestHeaderCap(t *testing.T) {
	o, _ := limitsServe(t)
	withHeaders := func(total int) int {
		t.Helper()
		head := "GET /health HTTP/1.1\r\nHost: orchestrator\r\nX-Pad: "
		req := head + strings.Repeat("p", total-len(head)-len("\r\n\r\n")) + "\r\n\r\n"
		require.Len(t, req, total)
		c := dial(t, o.url)
		return exchange(t, c, bufio.NewReader(c), req, 10*time.Second).StatusCode
	}
	require.Equal(t, http.StatusOK, withHeaders(64<<10-1024))
	require.Equal(t, http.StatusOK, withHeaders(64<<10))
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, withHeaders(64<<10+1))
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, withHeaders(80<<10))
}

// TestConnectionLimit: past ORCH_HTTP_MAX_CONNS, a new connection waits
// (the kernel holds it in the listen backlog) while those held are served,
// and is served as soon as one of them closes.
func TestConnectionLimit(t *testing.T) {
	o, _ := limitsServe(t, "ORCH_HTTP_MAX_CONNS", "2")
	a, b := dial(t, o.url), dial(t, o.url)
	ar := bufio.NewReader(a)
	require.Equal(t, http.StatusOK, exchange(t, a, ar, getHealth, 10*time.Second).StatusCode)
	require.Equal(t, http.StatusOK, exchange(t, b, bufio.NewReader(b), getHealth, 10*time.Second).StatusCode)

	c := dial(t, o.url) // the kernel completes the handshake
	send(t, c, getHealth)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(time.Second)))
	n, err := c.Read(make([]byte, 1))
	var ne net.Error
	require.True(t, errors.As(err, &ne) && ne.Timeout(), "the third connection was served (%d bytes, %v)", n, err)

	// The held connections are served meanwhile.
	for range 3 {
		require.Equal(t, http.StatusOK, exchange(t, a, ar, getHealth, 10*time.Second).StatusCode)
	}

	require.NoError(t, b.Close())
	require.NoError(t, c.SetReadDeadline(time.Now().Add(30*time.Second)))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err, "the waiting connection is served once another closes")
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

// streamLimits are the server limits of the stream tests: a read timeout
// (and so a write window) of 0.5 s.
func streamLimits(t *testing.T) config.Config {
	t.Helper()
	cfg, err := config.Load(getenvOf(map[string]string{
		"ORCH_HTTP_READ_TIMEOUT_S": "0.5",
		"ORCH_HTTP_IDLE_TIMEOUT_S": "0.5",
		"ORCH_HTTP_MAX_CONNS":      "8",
	}))
	require.NoError(t, err)
	return cfg
}

// streamServer serves h the way serve and dev do (newHTTPServer and
// limitConns) and returns its address.
func streamServer(t *testing.T, cfg config.Config, h http.HandlerFunc) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := newHTTPServer(cfg, h, newLogger(cfg, os.Stderr))
	done := make(chan error, 1)
	go func() { done <- srv.Serve(limitConns(ln, cfg)) }()
	t.Cleanup(func() {
		require.NoError(t, srv.Close())
		require.ErrorIs(t, <-done, http.ErrServerClosed)
	})
	return ln.Addr().String()
}

// TestStreamOutlivesReadTimeout: a streamed answer (api.Stream, as engine
// log follow and server-sent events use) goes on long past the read
// timeout, survives a silence longer than its write window, and keeps its
// request context.
func TestStreamOutlivesReadTimeout(t *testing.T) {
	cfg := streamLimits(t)
	addr := streamServer(t, cfg, func(w http.ResponseWriter, r *http.Request) {
		in, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		st := api.NewStream(w, cfg.HTTPReadTimeout)
		pause := func(d time.Duration) bool {
			select {
			case <-r.Context().Done():
				return false
			case <-time.After(d):
				return true
			}
		}
		for i := range 10 {
			if _, err := fmt.Fprintf(st, "data: %s %d\n\n", in, i); err != nil || !pause(cfg.HTTPReadTimeout/2) {
				return
			}
		}
		// Quiet for three write windows, then one more event.
		if !pause(3 * cfg.HTTPReadTimeout) {
			return
		}
		_, _ = fmt.Fprintf(st, "data: end, context %v\n\n", r.Context().Err())
	})
	began := time.Now()
	resp, err := http.Post("http://"+addr+"/events", "text/plain", strings.NewReader("tick"))
	require.NoError(t, err)
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	var events []string
	for sc.Scan() {
		if line := sc.Text(); line != "" {
			events = append(events, line)
		}
	}
	require.NoError(t, sc.Err())
	require.Len(t, events, 11, "%q", events)
	require.Equal(t, "data: tick 9", events[9])
	require.Equal(t, "data: end, context <nil>", events[10])
	require.Greater(t, time.Since(began), 8*cfg.HTTPReadTimeout, "the stream lasted several read timeouts")
}

// TestStreamCutsClientThatStopsReading: a client that stops reading a
// stream cannot hold its handler: the piece it does not take within the
// write window fails, and the handler returns.
func TestStreamCutsClientThatStopsReading(t *testing.T) {
	ended := make(chan error, 1)
	cfg := streamLimits(t)
	addr := streamServer(t, cfg, func(w http.ResponseWriter, r *http.Request) {
		st := api.NewStream(w, cfg.HTTPReadTimeout)
		piece := make([]byte, 256<<10)
		for {
			if _, err := st.Write(piece); err != nil {
				ended <- err
				return
			}
		}
	})
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	send(t, c, "GET /logs HTTP/1.1\r\nHost: x\r\n\r\n")
	// Never read.
	select {
	case err := <-ended:
		require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	case <-time.After(60 * time.Second):
		t.Fatal("a stream to a client that stopped reading was not cut")
	}
}

// TestBadHTTPLimitsRefused: serve and dev refuse to start on a bad limit,
// naming every bad variable, and create nothing.
func TestBadHTTPLimitsRefused(t *testing.T) {
	bad := map[string]string{
		"ORCH_HTTP_READ_TIMEOUT_S": "0",
		"ORCH_HTTP_IDLE_TIMEOUT_S": "forever",
		"ORCH_HTTP_MAX_CONNS":      "-1",
	}
	env := baseEnv(t, "sqlite:///"+strings.TrimPrefix(filepath.Join(t.TempDir(), "bap.db"), "/"))
	for k, v := range bad {
		env[k] = v
	}
	err := run(context.Background(), []string{"serve"}, getenvOf(env), io.Discard)
	for k := range bad {
		require.ErrorContains(t, err, k)
	}

	devEnv := map[string]string{"ORCH_LISTEN_ADDR": "127.0.0.1:0"}
	for k, v := range bad {
		devEnv[k] = v
	}
	dir := filepath.Join(t.TempDir(), ".bap-engine")
	err = run(context.Background(), []string{"dev", "--dir", dir}, getenvOf(devEnv), io.Discard)
	for k := range bad {
		require.ErrorContains(t, err, k)
	}
	_, statErr := os.Stat(filepath.Join(dir, "bap-engine.db"))
	require.ErrorIs(t, statErr, os.ErrNotExist, "a refused dev creates no database")
}
