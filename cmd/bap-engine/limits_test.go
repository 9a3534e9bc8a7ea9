package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/client"
	"github.com/september/bap-engine/internal/backend/backendtest"
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

// limitsServeWithProduct is limitsServe with a product registered.
func limitsServeWithProduct(t *testing.T, kv ...string) (*orchestrator, map[string]string, client.Product) {
	t.Helper()
	o, env := limitsServe(t, kv...)
	prod, err := adminClient(o.url, env).RegisterProduct(context.Background(), client.ProductRequest{Slug: "acme", DisplayName: "Acme"})
	require.NoError(t, err)
	return o, env, prod
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
	o, env, prod := limitsServeWithProduct(t, "ORCH_HTTP_READ_TIMEOUT_S", "1")
	ctx := context.Background()

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

// TestStreamOutlivesReadTimeout: a streamed answer (the dashboard's
// /ui/events, written through api.Stream) stays open long past the read
// timeout and past silences longer than its write window, and still
// delivers: here an engine provisioned after three windows of silence.
func TestStreamOutlivesReadTimeout(t *testing.T) {
	const limit = time.Second
	o, env, prod := limitsServeWithProduct(t, "ORCH_HTTP_READ_TIMEOUT_S", "1")
	ctx := context.Background()

	// Sign in to the dashboard as a browser does.
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	browser := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	form, err := browser.Get(o.url + "/ui/signin")
	require.NoError(t, err)
	page, err := io.ReadAll(form.Body)
	form.Body.Close()
	require.NoError(t, err)
	csrf := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(string(page))
	require.NotNil(t, csrf, "no sign-in form")
	signed, err := browser.PostForm(o.url+"/ui/signin", url.Values{"csrf": {csrf[1]}, "key": {env["ORCH_ADMIN_KEY"]}, "next": {"/ui/"}})
	require.NoError(t, err)
	signed.Body.Close()
	require.Equal(t, http.StatusSeeOther, signed.StatusCode)

	began := time.Now()
	resp, err := browser.Get(o.url + "/ui/events")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	events := make(chan string, 100)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if name, ok := strings.CutPrefix(sc.Text(), "event: "); ok {
				events <- name
			}
		}
	}()
	next := func(want string) {
		t.Helper()
		for {
			select {
			case name, open := <-events:
				require.True(t, open, "the stream ended %s after it began, waiting for %q", time.Since(began).Round(time.Millisecond), want)
				if name == want {
					return
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("no %q event", want)
			}
		}
	}
	next("hello")
	time.Sleep(3 * limit) // quiet for three read timeouts and write windows

	platform := client.New(o.url, client.WithPlatformKey(prod.PlatformAPIKey))
	alice, err := platform.Provision(ctx, client.ProvisionRequest{UserID: "alice"})
	require.NoError(t, err)
	next("engine")
	require.Greater(t, time.Since(began), 3*limit)

	// The same for an engine's log followed through the API: quiet for
	// three read timeouts, then the engine's next line still arrives.
	logs, err := platform.Logs(ctx, "alice", client.LogOptions{Follow: true})
	require.NoError(t, err)
	defer logs.Close()
	lines := backendtest.Lines(logs)
	followed := time.Now()
	time.Sleep(3 * limit)
	remember(t, alice.URL, alice.APIKey, "after-the-quiet")
	for {
		select {
		case line, open := <-lines:
			require.True(t, open, "the followed log ended %s after it began", time.Since(followed).Round(time.Millisecond))
			if strings.Contains(line, "/execute") {
				require.Greater(t, time.Since(followed), 3*limit)
				return
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the engine's request never reached the followed log")
		}
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
