package engine

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/september/bap-engine/internal/testlog"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testKey = "sk-sept-reference-engine-test-key"

func hashOf(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// bundle is an in-process engine behind httptest.
type bundle struct {
	srv    *server
	http   *httptest.Server
	dbPath string
}

func setup(t *testing.T, extra map[string]string) *bundle {
	t.Helper()
	dbPath := filepath.Join(t.TempDir(), "nested", "brain.sqlite")
	env := map[string]string{"ENGINE_KEY_HASH": hashOf(testKey), "SQLITE_DB_PATH": dbPath}
	for k, v := range extra {
		env[k] = v
	}
	cfg, err := loadConfig(envOf(env))
	require.NoError(t, err)
	b, err := openBrain(context.Background(), cfg.dbPath)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.close()) })
	s := newServer(cfg, b, slog.New(slog.NewTextHandler(io.Discard, nil)))
	s.ready.Store(true)
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)
	return &bundle{srv: s, http: hs, dbPath: dbPath}
}

func (b *bundle) do(t *testing.T, method, path, key, body string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, b.http.URL+path, strings.NewReader(body))
	require.NoError(t, err)
	if key != "" {
		req.Header.Set("X-Engine-Key", key)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, data
}

func decode(t *testing.T, data []byte) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(data, &m), string(data))
	return m
}

func errorCode(t *testing.T, data []byte) string {
	t.Helper()
	e, ok := decode(t, data)["error"].(map[string]any)
	require.True(t, ok, string(data))
	return e["code"].(string)
}

func TestLoadConfig(t *testing.T) {
	t.Parallel()
	good := hashOf(testKey)
	cases := []struct {
		name    string
		env     map[string]string
		wantErr string
	}{
		{"missing hash", map[string]string{}, "ENGINE_KEY_HASH"},
		{"short hash", map[string]string{"ENGINE_KEY_HASH": "abcd"}, "ENGINE_KEY_HASH"},
		{"not hex", map[string]string{"ENGINE_KEY_HASH": strings.Repeat("z", 64)}, "ENGINE_KEY_HASH"},
		{"bad port", map[string]string{"ENGINE_KEY_HASH": good, "PORT": "eighty"}, "PORT"},
		{"port too big", map[string]string{"ENGINE_KEY_HASH": good, "PORT": "70000"}, "PORT"},
		{"defaults", map[string]string{"ENGINE_KEY_HASH": good}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := loadConfig(envOf(tc.env))
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, defaultPort, cfg.port)
			require.Equal(t, defaultDBPath, cfg.dbPath)
			require.Empty(t, cfg.host)
		})
	}
}

func TestHealthNeedsNoKeyAndReflectsReadiness(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	resp, data := b.do(t, http.MethodGet, "/health", "", "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body := decode(t, data)
	require.Equal(t, "ok", body["status"])
	require.Equal(t, Version, body["version"])
	require.Contains(t, body, "uptime_s")
	require.EqualValues(t, 1, body["health_checks"], "the engine counts the probes it answers")
	_, data = b.do(t, http.MethodGet, "/health", "", "")
	require.EqualValues(t, 2, decode(t, data)["health_checks"])

	b.srv.ready.Store(false)
	resp, data = b.do(t, http.MethodGet, "/health", "", "")
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.NotEqual(t, "ok", decode(t, data)["status"])
}

func TestKeyIsRequiredEverywhereElse(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	for _, path := range []string{"/brain", "/catalog", "/nope", "/health/x"} {
		for _, key := range []string{"", "sk-sept-wrong", testKey + "x", "Sk-sept-reference-engine-test-key"} {
			resp, data := b.do(t, http.MethodGet, path, key, "")
			require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "%s with key %q", path, key)
			require.Equal(t, "INVALID_ENGINE_KEY", errorCode(t, data))
		}
	}
	resp, _ := b.do(t, http.MethodPost, "/execute", "", `{"input":"x"}`)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	resp, _ = b.do(t, http.MethodGet, "/brain", testKey, "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

func TestExecuteCountsAndRemembers(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	for i := 1; i <= 3; i++ {
		resp, data := b.do(t, http.MethodPost, "/execute", testKey, `{"input":"hello `+strconv.Itoa(i)+`"}`)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(data))
		body := decode(t, data)
		require.EqualValues(t, i, body["counter"])
		require.Contains(t, body["output"], "hello "+strconv.Itoa(i))
	}
	resp, data := b.do(t, http.MethodGet, "/brain", testKey, "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body := decode(t, data)
	require.EqualValues(t, 3, body["counter"])
	require.EqualValues(t, 3, body["note_count"])
	notes := body["notes"].([]any)
	require.Len(t, notes, 3)
	require.Equal(t, "hello 3", notes[0].(map[string]any)["input"], "newest first")
}

func TestExecuteConcurrentIncrementsAreNotLost(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const n = 20
	var wg sync.WaitGroup
	codes := make([]int, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodPost, b.http.URL+"/execute", strings.NewReader(`{"input":"c"}`))
			req.Header.Set("X-Engine-Key", testKey)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			codes[i] = resp.StatusCode
		}()
	}
	wg.Wait()
	for _, c := range codes {
		require.Equal(t, http.StatusOK, c)
	}
	_, data := b.do(t, http.MethodGet, "/brain", testKey, "")
	require.EqualValues(t, n, decode(t, data)["counter"])
}

func TestExecuteValidation(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	cases := []struct {
		body   string
		status int
		code   string
	}{
		{`not json`, http.StatusUnprocessableEntity, "VALIDATION_ERROR"},
		{`{}`, http.StatusUnprocessableEntity, "VALIDATION_ERROR"},
		{`{"input": 3}`, http.StatusUnprocessableEntity, "VALIDATION_ERROR"},
		{`{"input": "x", "delay_ms": 5000}`, http.StatusUnprocessableEntity, "VALIDATION_ERROR"},
		{`{"input": "` + strings.Repeat("a", maxBodyBytes) + `"}`, http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE"},
	}
	for _, tc := range cases {
		resp, data := b.do(t, http.MethodPost, "/execute", testKey, tc.body)
		require.Equal(t, tc.status, resp.StatusCode)
		require.Equal(t, tc.code, errorCode(t, data))
	}
	_, data := b.do(t, http.MethodGet, "/brain", testKey, "")
	require.EqualValues(t, 0, decode(t, data)["counter"], "rejected requests leave the brain untouched")
}

func TestRoutingErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	resp, data := b.do(t, http.MethodGet, "/nope", testKey, "")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.Equal(t, "NOT_FOUND", errorCode(t, data))
	resp, data = b.do(t, http.MethodGet, "/execute", testKey, "")
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
	require.Equal(t, "METHOD_NOT_ALLOWED", errorCode(t, data))
	require.Equal(t, http.MethodPost, resp.Header.Get("Allow"))
}

// sseEvent is one parsed server-sent event.
type sseEvent struct {
	name string
	data string
}

func readSSE(t *testing.T, r io.Reader) []sseEvent {
	t.Helper()
	var out []sseEvent
	cur := sseEvent{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			out = append(out, cur)
			cur = sseEvent{}
		case strings.HasPrefix(line, "event: "):
			cur.name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			cur.data = strings.TrimPrefix(line, "data: ")
		}
	}
	require.NoError(t, sc.Err())
	return out
}

func TestExecuteStreams(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	for _, variant := range []struct {
		body string
		hdr  []string
	}{
		{`{"input":"stream me please"}`, []string{"Accept", "text/event-stream"}},
		{`{"input":"stream me please","stream":true}`, nil},
	} {
		resp, data := b.do(t, http.MethodPost, "/execute", testKey, variant.body, variant.hdr...)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
		events := readSSE(t, bytes.NewReader(data))
		require.Greater(t, len(events), 2)
		var joined strings.Builder
		for _, ev := range events[:len(events)-1] {
			require.Empty(t, ev.name)
			var tok map[string]string
			require.NoError(t, json.Unmarshal([]byte(ev.data), &tok))
			joined.WriteString(tok["token"])
		}
		last := events[len(events)-1]
		require.Equal(t, "done", last.name)
		done := decode(t, []byte(last.data))
		require.Equal(t, joined.String(), done["output"])
		require.Contains(t, done["output"], "stream me please")
	}
	_, data := b.do(t, http.MethodGet, "/brain", testKey, "")
	require.EqualValues(t, 2, decode(t, data)["counter"])
}

func TestCatalog(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "agents"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "core_soul.json"), []byte(`{}`), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "agents", "a.yaml"), []byte("name: a\n"), 0o644))
	b := setup(t, map[string]string{"CATALOG_DIR": dir})
	resp, data := b.do(t, http.MethodGet, "/catalog", testKey, "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body := decode(t, data)
	require.Equal(t, true, body["available"])
	var paths []string
	for _, f := range body["files"].([]any) {
		paths = append(paths, f.(map[string]any)["path"].(string))
	}
	require.ElementsMatch(t, []string{"core_soul.json", "agents/a.yaml"}, paths)

	unset := setup(t, nil)
	resp, data = unset.do(t, http.MethodGet, "/catalog", testKey, "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, false, decode(t, data)["available"])
}

func TestBrainSurvivesReopen(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "brain.sqlite")
	ctx := context.Background()
	b, err := openBrain(ctx, path)
	require.NoError(t, err)
	_, _, err = b.remember(ctx, "one")
	require.NoError(t, err)
	n, _, err := b.remember(ctx, "two")
	require.NoError(t, err)
	require.EqualValues(t, 2, n)
	require.NoError(t, b.close())

	b, err = openBrain(ctx, path)
	require.NoError(t, err)
	defer b.close()
	counter, total, notes, err := b.recall(ctx, 10)
	require.NoError(t, err)
	require.EqualValues(t, 2, counter)
	require.EqualValues(t, 2, total)
	require.Equal(t, "two", notes[0].Input)
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close())
	return port
}

func waitHealthy(t *testing.T, url string) {
	t.Helper()
	require.Eventually(t, func() bool {
		resp, err := http.Get(url + "/health")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 10*time.Second, 20*time.Millisecond)
}

func TestRunServesAndShutsDownGracefully(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	dbPath := filepath.Join(t.TempDir(), "deep", "er", "brain.sqlite")
	env := envOf(map[string]string{
		"PORT": strconv.Itoa(port), "ENGINE_KEY_HASH": hashOf(testKey),
		"SQLITE_DB_PATH": dbPath, "ENGINE_LISTEN_HOST": "127.0.0.1",
	})
	logs := &testlog.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, env, logs) }()
	url := "http://127.0.0.1:" + strconv.Itoa(port)
	waitHealthy(t, url)
	require.FileExists(t, dbPath)

	// A slow request in flight when shutdown begins still completes.
	type result struct {
		status int
		body   []byte
		err    error
	}
	inflight := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, url+"/execute", strings.NewReader(`{"input":"last words","delay_ms":400}`))
		req.Header.Set("X-Engine-Key", testKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			inflight <- result{err: err}
			return
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		inflight <- result{status: resp.StatusCode, body: data, err: err}
	}()
	require.Eventually(t, func() bool { return brainCounter(t, dbPath) == 1 },
		5*time.Second, 5*time.Millisecond)
	cancel()
	res := <-inflight
	require.NoError(t, res.err)
	require.Equal(t, http.StatusOK, res.status)
	require.Contains(t, string(res.body), "last words")
	require.NoError(t, <-done)

	_, err := http.Get(url + "/health")
	require.Error(t, err, "the engine no longer listens")
	require.NotContains(t, logs.String(), testKey)
	require.EqualValues(t, 1, brainCounter(t, dbPath))
}

// brainCounter reads the counter straight from the brain file.
func brainCounter(t *testing.T, path string) int64 {
	t.Helper()
	b, err := openBrain(context.Background(), path)
	require.NoError(t, err)
	defer b.close()
	n, _, _, err := b.recall(context.Background(), 1)
	require.NoError(t, err)
	return n
}

func TestRunRejectsBadConfigAndBusyPort(t *testing.T) {
	t.Parallel()
	err := Run(context.Background(), envOf(map[string]string{}), io.Discard)
	require.ErrorContains(t, err, "ENGINE_KEY_HASH")

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	env := envOf(map[string]string{
		"PORT": strconv.Itoa(ln.Addr().(*net.TCPAddr).Port), "ENGINE_KEY_HASH": hashOf(testKey),
		"SQLITE_DB_PATH": filepath.Join(t.TempDir(), "b.sqlite"), "ENGINE_LISTEN_HOST": "127.0.0.1",
	})
	err = Run(context.Background(), env, io.Discard)
	require.ErrorContains(t, err, "listen")
}

func healthStatus(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url + "/health")
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	var h struct {
		Status string `json:"status"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&h)
	return resp.StatusCode, h.Status
}

func TestWarmupAndShutdownDelay(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	env := envOf(map[string]string{
		"PORT": strconv.Itoa(port), "ENGINE_KEY_HASH": hashOf(testKey),
		"SQLITE_DB_PATH": filepath.Join(t.TempDir(), "brain.sqlite"), "ENGINE_LISTEN_HOST": "127.0.0.1",
		"ENGINE_WARMUP_S": "0.4", "ENGINE_SHUTDOWN_DELAY_S": "0.4",
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, env, io.Discard) }()
	url := "http://127.0.0.1:" + strconv.Itoa(port)

	// While warming up the engine listens but is not ready.
	require.Eventually(t, func() bool {
		code, status := healthStatus(t, url)
		return code == http.StatusServiceUnavailable && status == "starting"
	}, 5*time.Second, 5*time.Millisecond)
	waitHealthy(t, url)

	// After SIGTERM (ctx) it keeps answering, not ready, until the delay ends.
	cancel()
	require.Eventually(t, func() bool {
		code, status := healthStatus(t, url)
		return code == http.StatusServiceUnavailable && status == "stopping"
	}, 5*time.Second, 5*time.Millisecond)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("engine did not stop after its shutdown delay")
	}
	code, _ := healthStatus(t, url)
	require.Zero(t, code, "stopped engine must not answer")
}

func TestDelayValidation(t *testing.T) {
	for _, bad := range []string{"-1", "abc", "99999"} {
		_, err := loadConfig(envOf(map[string]string{"ENGINE_KEY_HASH": hashOf(testKey), "ENGINE_WARMUP_S": bad}))
		require.ErrorContains(t, err, "ENGINE_WARMUP_S")
	}
}

func TestHealthReportsEngineVersion(t *testing.T) {
	t.Parallel()
	b := setup(t, map[string]string{"ENGINE_VERSION": "v2", "ENGINE_REFUSE_VERSIONS": "v3, v4"})
	resp, data := b.do(t, http.MethodGet, "/health", "", "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "v2", decode(t, data)["engine_version"])
}

func TestRefusedVersionDoesNotServe(t *testing.T) {
	t.Parallel()
	b := setup(t, map[string]string{"ENGINE_VERSION": "v4", "ENGINE_REFUSE_VERSIONS": "v3, v4"})
	resp, data := b.do(t, http.MethodGet, "/health", "", "")
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	body := decode(t, data)
	require.Equal(t, "refused", body["status"])
	require.Equal(t, "v4", body["engine_version"])
	require.Contains(t, body["reason"], "v4")
	resp, data = b.do(t, http.MethodGet, "/brain", testKey, "")
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Equal(t, "ENGINE_REFUSED", errorCode(t, data))
}
