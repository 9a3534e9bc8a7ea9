package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/pgtest"
)

// probe GETs url and returns the status and the error code, if any.
func probe(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var body struct {
		Error struct{ Code string } `json:"error"`
	}
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, &body)
	return resp.StatusCode, body.Error.Code
}

// TestServeWaitsForTheDatabase starts serve while PostgreSQL is down: it
// keeps running with /livez up and /readyz 503, and serves once the
// database comes up, without a restart.
func TestServeWaitsForTheDatabase(t *testing.T) {
	pg := pgtest.NewServer(t)
	env := baseEnv(t, pg.URL(t))
	require.NoError(t, pg.Stop())
	port := backendtest.FreePort(t)
	env["ORCH_LISTEN_ADDR"] = fmt.Sprintf("127.0.0.1:%d", port)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := run(ctx, []string{"serve"}, getenvOf(env), pw)
		pw.CloseWithError(errors.New("serve returned"))
		done <- err
	}()
	listening := listeningURL(pr)

	require.Eventually(t, func() bool { code, _ := probe(t, base+"/livez"); return code == http.StatusOK },
		20*time.Second, 50*time.Millisecond, "/livez answers while the database is down")
	code, errCode := probe(t, base+"/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "DATABASE_UNAVAILABLE", errCode)
	code, _ = probe(t, base+"/engines")
	require.Equal(t, http.StatusServiceUnavailable, code)
	code, _ = probe(t, base+"/version")
	require.Equal(t, http.StatusOK, code)
	select {
	case err := <-done:
		t.Fatalf("serve exited while waiting for the database: %v", err)
	case <-time.After(time.Second):
	}

	require.NoError(t, pg.Start())
	select {
	case url := <-listening:
		require.Equal(t, base, url)
	case err := <-done:
		t.Fatalf("serve exited: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("serve did not start once the database was up")
	}
	code, _ = probe(t, base+"/readyz")
	require.Equal(t, http.StatusOK, code)
	code, _ = probe(t, base+"/health")
	require.Equal(t, http.StatusOK, code)
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop")
	}
}

// TestServeWaitsForTheBackendAndStopsWhileWaiting: with the Docker daemon
// unreachable, /readyz names the backend; SIGTERM while waiting ends serve
// cleanly.
func TestServeWaitsForTheBackendAndStopsWhileWaiting(t *testing.T) {
	env := baseEnv(t, stores()[0].url(t))
	env["ORCH_ENGINE_BACKEND"] = "docker"
	env["DOCKER_HOST"] = "unix://" + t.TempDir() + "/no-docker.sock"
	port := backendtest.FreePort(t)
	env["ORCH_LISTEN_ADDR"] = fmt.Sprintf("127.0.0.1:%d", port)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve"}, getenvOf(env), io.Discard) }()
	require.Eventually(t, func() bool {
		code, errCode := probe(t, fmt.Sprintf("http://127.0.0.1:%d/readyz", port))
		return code == http.StatusServiceUnavailable && errCode == "BACKEND_UNAVAILABLE"
	}, 20*time.Second, 50*time.Millisecond, "/readyz says serve waits for the engine backend")
	code, _ := probe(t, fmt.Sprintf("http://127.0.0.1:%d/livez", port))
	require.Equal(t, http.StatusOK, code)
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop while waiting")
	}
}

// TestMetricsTokenAndOperatorMetrics scrapes /metrics/prometheus with the
// bearer token alone and finds the build, capacity and reconcile metrics.
func TestMetricsTokenAndOperatorMetrics(t *testing.T) {
	env := baseEnv(t, stores()[0].url(t))
	env["ORCH_METRICS_TOKEN"] = "scrape-token-0123456789abcdef"
	o := startServe(t, env)
	scrape := func(auth string) (int, string) {
		req, err := http.NewRequest(http.MethodGet, o.url+"/metrics/prometheus", nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", auth)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(b)
	}
	code, _ := scrape("Bearer wrong-token-0123456789abcdef")
	require.Equal(t, http.StatusUnauthorized, code)
	code, _ = scrape("")
	require.Equal(t, http.StatusUnauthorized, code)
	code, text := scrape("Bearer " + env["ORCH_METRICS_TOKEN"])
	require.Equal(t, http.StatusOK, code)
	for _, want := range []string{
		`bap_engine_build_info{commit="`,
		"bap_engine_ports_total 40",
		"bap_engine_ports_used 0",
		"bap_engine_ports_free 40",
		"bap_engine_database_up 1",
		`bap_engine_reconcile_runs_total{outcome="ok"} `,
		"bap_engine_orphans_removed_total 0",
	} {
		require.Contains(t, text, want)
	}
	require.NotContains(t, text, env["ORCH_METRICS_TOKEN"])
}
