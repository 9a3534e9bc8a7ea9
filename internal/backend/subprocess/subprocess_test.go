package subprocess

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/testengine"
	"github.com/september/bap-engine/internal/testmain"
)

func TestMain(m *testing.M) {
	os.Exit(testmain.Run(m, testmain.Goroutines()))
}

// orchestratorEnv is what the orchestrator's environment looks like to the
// backend: a secret that must never reach an engine, a passthrough variable
// and the inherited ones.
func orchestratorEnv(name string) string {
	switch name {
	case "LLM_API_KEY":
		return "llm-test-value"
	case "ORCH_ADMIN_KEY", "ORCH_MASTER_KEY":
		return "orchestrator-secret"
	case "PATH", "HOME", "LANG":
		return os.Getenv(name)
	}
	return ""
}

// config is a backend config running the standalone reference engine.
func config(t *testing.T, root, deployment string) Config {
	t.Helper()
	return Config{
		Command:     []string{testengine.Path(t)},
		DataRoot:    root,
		Passthrough: []string{"LLM_API_KEY", "ENGINE_KEY_HASH"},
		Deployment:  deployment,
		Getenv:      orchestratorEnv,
	}
}

func newBackend(t *testing.T, cfg Config) *Backend {
	t.Helper()
	b, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	return b
}

func TestConformance(t *testing.T) {
	root := t.TempDir()
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		return newBackend(t, config(t, root, "dep-"+uuid.NewString()))
	}, "")
}

// started creates and starts one engine and destroys it at the end.
func started(t *testing.T, b *Backend) (backend.Spec, string, string) {
	t.Helper()
	key, hash := backendtest.NewKey()
	spec := backend.Spec{EngineID: uuid.NewString(), ProductID: uuid.NewString(), Port: backendtest.FreePort(t), KeyHash: hash}
	ctx := context.Background()
	t.Cleanup(func() { require.NoError(t, b.Destroy(context.Background(), spec.EngineID)) })
	_, err := b.Create(ctx, spec)
	require.NoError(t, err)
	require.NoError(t, b.Start(ctx, spec.EngineID))
	url := b.URL(spec.EngineID, spec.Port)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	require.NoError(t, backendtest.WaitHealthy(wctx, url))
	return spec, key, url
}

func keyed(t *testing.T, method, url, key, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("X-Engine-Key", key)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var out map[string]any
	require.NoError(t, json.Unmarshal(data, &out), string(data))
	return resp.StatusCode, out
}

func TestEngineGetsOnlyItsEnvironment(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	catalog := t.TempDir()
	cfg := config(t, root, "default")
	cfg.CatalogDir = catalog
	b := newBackend(t, cfg)
	spec, key, url := started(t, b)

	inst, err := b.Inspect(context.Background(), spec.EngineID)
	require.NoError(t, err)
	require.Positive(t, inst.Pid)
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", inst.Pid))
	require.NoError(t, err)
	env := map[string]string{}
	for _, kv := range bytes.Split(bytes.TrimRight(raw, "\x00"), []byte{0}) {
		name, value, _ := strings.Cut(string(kv), "=")
		env[name] = value
	}
	allowed := map[string]bool{
		"PORT": true, "ENGINE_KEY_HASH": true, "SQLITE_DB_PATH": true, "CATALOG_DIR": true,
		"ENGINE_LISTEN_HOST": true, "BAP_ENGINE_ID": true, "PATH": true, "HOME": true, "LANG": true,
		"LLM_API_KEY": true, "ENGINE_VERSION": true,
	}
	for name := range env {
		require.True(t, allowed[name], "engine got %s", name)
	}
	require.Equal(t, "llm-test-value", env["LLM_API_KEY"])
	require.Equal(t, spec.KeyHash, env["ENGINE_KEY_HASH"], "the backend's own variable beats a passthrough of the same name")
	require.Equal(t, filepath.Join(root, spec.EngineID, "brain.sqlite"), env["SQLITE_DB_PATH"])
	require.Equal(t, catalog, env["CATALOG_DIR"])
	require.Equal(t, "127.0.0.1", env["ENGINE_LISTEN_HOST"])
	require.Equal(t, spec.Image, env["ENGINE_VERSION"], "the subprocess stand-in for the image")
	require.Equal(t, spec.EngineID, env["BAP_ENGINE_ID"])
	require.Equal(t, os.Getenv("PATH"), env["PATH"])

	pgid, err := syscall.Getpgid(inst.Pid)
	require.NoError(t, err)
	require.Equal(t, inst.Pid, pgid, "the engine leads its own process group")

	status, _ := keyed(t, http.MethodPost, url+"/execute", key, `{"input":"hi"}`)
	require.Equal(t, http.StatusOK, status)
	require.FileExists(t, filepath.Join(root, spec.EngineID, "brain.sqlite"))
	logData, err := os.ReadFile(filepath.Join(root, spec.EngineID, "engine.log"))
	require.NoError(t, err)
	require.Contains(t, string(logData), "engine ready")
	require.NotContains(t, string(logData), key)

	info, err := os.Stat(filepath.Join(root, spec.EngineID))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), info.Mode().Perm())
	var sf specFile
	require.NoError(t, readJSON(filepath.Join(root, spec.EngineID, specFileName), &sf))
	require.Equal(t, map[string]string{
		backend.LabelManaged: "true", backend.LabelEngineID: spec.EngineID,
		backend.LabelProductID: spec.ProductID, backend.LabelDeployment: "default",
	}, sf.Labels)
}

func TestInvalidEngineIDsNeverLeaveTheRoot(t *testing.T) {
	t.Parallel()
	parent := t.TempDir()
	root := filepath.Join(parent, "root")
	b := newBackend(t, config(t, root, "default"))
	ctx := context.Background()
	_, hash := backendtest.NewKey()
	for _, id := range []string{"", ".", "..", "../escape", "a/b", "/abs", ".hidden", "x y", strings.Repeat("a", 200)} {
		_, err := b.Create(ctx, backend.Spec{EngineID: id, Port: 9001, KeyHash: hash})
		require.ErrorIs(t, err, errInvalidID, "create %q", id)
		_, err = b.Inspect(ctx, id)
		require.ErrorIs(t, err, backend.ErrNotFound, "inspect %q", id)
		require.ErrorIs(t, b.Start(ctx, id), backend.ErrNotFound)
		require.ErrorIs(t, b.Pause(ctx, id), backend.ErrNotFound)
		require.ErrorIs(t, b.Unpause(ctx, id), backend.ErrNotFound)
		require.ErrorIs(t, b.Stop(ctx, id, time.Second), errInvalidID)
		require.ErrorIs(t, b.Remove(ctx, id), errInvalidID)
		require.ErrorIs(t, b.Destroy(ctx, id), errInvalidID)
	}
	entries, err := os.ReadDir(parent)
	require.NoError(t, err)
	require.Len(t, entries, 1, "only the data root exists beside it")
	entries, err = os.ReadDir(root)
	require.NoError(t, err)
	require.Empty(t, entries)

	_, err = b.Create(ctx, backend.Spec{EngineID: uuid.NewString(), Port: 0, KeyHash: hash})
	require.Error(t, err)
	_, err = b.Create(ctx, backend.Spec{EngineID: uuid.NewString(), Port: 9001})
	require.Error(t, err)
}

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()
	_, err := New(Config{DataRoot: t.TempDir()})
	require.ErrorContains(t, err, "command")
	_, err = New(Config{Command: []string{"true"}})
	require.ErrorContains(t, err, "data root")
	_, err = New(Config{Command: []string{"no-such-engine-binary-anywhere"}, DataRoot: t.TempDir()})
	require.ErrorContains(t, err, "engine command")
	b, err := New(Config{Command: []string{"true"}, DataRoot: t.TempDir()})
	require.NoError(t, err)
	require.NoError(t, b.Close())
	require.Equal(t, "http://127.0.0.1:9005", b.URL("x", 9005))
	require.Equal(t, "subprocess", b.Name())
}

func TestRestartedOrchestratorReadoptsEngines(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	cfg := config(t, root, "default")
	first, err := New(cfg)
	require.NoError(t, err)
	stopped, stoppedKey, stoppedURL := started(t, first)
	killed, _, _ := started(t, first)
	status, _ := keyed(t, http.MethodPost, stoppedURL+"/execute", stoppedKey, `{"input":"before restart"}`)
	require.Equal(t, http.StatusOK, status)
	before, err := first.Inspect(context.Background(), stopped.EngineID)
	require.NoError(t, err)
	// The orchestrator goes away; its engines do not.
	require.NoError(t, first.Close())
	require.NoError(t, probeHealth(stoppedURL))

	second := newBackend(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := second.Events(ctx)

	inst, err := second.Inspect(ctx, stopped.EngineID)
	require.NoError(t, err)
	require.Equal(t, backend.StatusRunning, inst.Status)
	require.Equal(t, before.Pid, inst.Pid)
	require.Equal(t, before.ID, inst.ID)
	list, err := second.List(ctx)
	require.NoError(t, err)
	require.Len(t, list, 2)
	for _, li := range list {
		require.Equal(t, backend.StatusRunning, li.Status)
	}

	// Start on an adopted engine is "already running", not a second process.
	require.NoError(t, second.Start(ctx, stopped.EngineID))
	inst, err = second.Inspect(ctx, stopped.EngineID)
	require.NoError(t, err)
	require.Equal(t, before.Pid, inst.Pid)

	require.NoError(t, second.Pause(ctx, stopped.EngineID))
	inst, err = second.Inspect(ctx, stopped.EngineID)
	require.NoError(t, err)
	require.Equal(t, backend.StatusPaused, inst.Status)
	require.NoError(t, second.Unpause(ctx, stopped.EngineID))
	require.NoError(t, probeHealth(stoppedURL))

	require.NoError(t, second.Stop(ctx, stopped.EngineID, 10*time.Second))
	require.Error(t, probeHealth(stoppedURL))
	inst, err = second.Inspect(ctx, stopped.EngineID)
	require.NoError(t, err)
	require.Equal(t, backend.StatusExited, inst.Status)

	// An adopted engine that dies is reported by polling.
	killedInst, err := second.Inspect(ctx, killed.EngineID)
	require.NoError(t, err)
	require.NoError(t, syscall.Kill(killedInst.Pid, syscall.SIGKILL))
	select {
	case ev := <-events:
		require.Equal(t, killed.EngineID, ev.EngineID, "the stopped engine is no event")
	case <-time.After(10 * time.Second):
		t.Fatal("no event for the adopted engine killed from outside")
	}

	// The brain is still there for a new process.
	require.NoError(t, second.Start(ctx, stopped.EngineID))
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	require.NoError(t, backendtest.WaitHealthy(wctx, stoppedURL))
	status, body := keyed(t, http.MethodGet, stoppedURL+"/brain", stoppedKey, "")
	require.Equal(t, http.StatusOK, status)
	require.EqualValues(t, 1, body["counter"])
}

func probeHealth(url string) error {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url + "/health")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("health %d", resp.StatusCode)
	}
	return nil
}

// writePidFile points the engine's pid file at pid.
func writePidFile(t *testing.T, root, engineID string, pid int, ticks uint64) {
	t.Helper()
	require.NoError(t, writeJSON(filepath.Join(root, engineID, pidFileName), pidFile{Pid: pid, StartTicks: ticks, StartedAt: time.Now()}))
}

func TestRecycledPidIsNotAdopted(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	b := newBackend(t, config(t, root, "default"))
	ctx := context.Background()

	// A stranger: alive, with the right start time, but not an engine.
	stranger := exec.Command("sleep", "60")
	stranger.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, stranger.Start())
	t.Cleanup(func() {
		_ = stranger.Process.Kill()
		_ = stranger.Wait()
	})
	st, err := readProcStat(stranger.Process.Pid)
	require.NoError(t, err)

	// Another engine: alive and an engine, but not this one.
	other, _, _ := started(t, b)
	otherInst, err := b.Inspect(ctx, other.EngineID)
	require.NoError(t, err)
	otherStat, err := readProcStat(otherInst.Pid)
	require.NoError(t, err)

	_, hash := backendtest.NewKey()
	spec := backend.Spec{EngineID: uuid.NewString(), ProductID: "p", Port: backendtest.FreePort(t), KeyHash: hash}
	t.Cleanup(func() { require.NoError(t, b.Destroy(context.Background(), spec.EngineID)) })
	_, err = b.Create(ctx, spec)
	require.NoError(t, err)

	for _, c := range []struct {
		name  string
		pid   int
		ticks uint64
	}{
		{"stranger process", stranger.Process.Pid, st.startTicks},
		{"stranger with another start time", stranger.Process.Pid, st.startTicks + 1},
		{"another engine", otherInst.Pid, otherStat.startTicks},
	} {
		writePidFile(t, root, spec.EngineID, c.pid, c.ticks)
		inst, err := b.Inspect(ctx, spec.EngineID)
		require.NoError(t, err, c.name)
		require.Equal(t, backend.StatusExited, inst.Status, c.name)
		require.ErrorIs(t, b.Pause(ctx, spec.EngineID), backend.ErrConflict, c.name)
		require.NoError(t, b.Stop(ctx, spec.EngineID, time.Second), c.name)
		require.NoError(t, b.Remove(ctx, spec.EngineID), c.name)
		_, err = b.Create(ctx, spec)
		require.NoError(t, err)
		stillThere, err := readProcStat(c.pid)
		require.NoError(t, err, c.name)
		require.NotEqual(t, byte('Z'), stillThere.state, "%s was signalled", c.name)
		require.NotEqual(t, byte('T'), stillThere.state, "%s was signalled", c.name)
	}
	require.NoError(t, probeHealth(b.URL(other.EngineID, other.Port)), "the other engine was not touched")

	// Not adopted means Start runs the real engine.
	writePidFile(t, root, spec.EngineID, stranger.Process.Pid, st.startTicks)
	require.NoError(t, b.Start(ctx, spec.EngineID))
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	require.NoError(t, backendtest.WaitHealthy(wctx, b.URL(spec.EngineID, spec.Port)))
	inst, err := b.Inspect(ctx, spec.EngineID)
	require.NoError(t, err)
	require.NotEqual(t, stranger.Process.Pid, inst.Pid)
}

// pythonInterpreter returns the real python3 executable (not a shim), or ""
// when there is none.
func pythonInterpreter(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("python3"); err != nil {
		return ""
	}
	out, err := exec.Command("python3", "-c", "import sys; print(sys.executable)").Output()
	require.NoError(t, err)
	return strings.TrimSpace(string(out))
}

func TestNonGoEngine(t *testing.T) {
	t.Parallel()
	python := pythonInterpreter(t)
	if python == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("python3 is required in CI for the non-Go engine test")
		}
		t.Skip("python3 not found: the non-Go engine test needs it")
	}
	script, err := filepath.Abs(filepath.Join("testdata", "engine.py"))
	require.NoError(t, err)
	b := newBackend(t, Config{
		Command:  []string{python, script},
		DataRoot: t.TempDir(),
		Getenv:   orchestratorEnv,
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := b.Events(ctx)
	spec, key, url := started(t, b)

	status, _ := keyed(t, http.MethodGet, url+"/brain", "sk-sept-wrong", "")
	require.Equal(t, http.StatusUnauthorized, status)
	status, body := keyed(t, http.MethodPost, url+"/execute", key, `{"input":"from go to python"}`)
	require.Equal(t, http.StatusOK, status)
	require.EqualValues(t, 1, body["counter"])

	require.NoError(t, b.Stop(ctx, spec.EngineID, 10*time.Second))
	require.Error(t, probeHealth(url))
	inst, err := b.Inspect(ctx, spec.EngineID)
	require.NoError(t, err)
	require.Equal(t, backend.StatusExited, inst.Status)
	require.Equal(t, 0, inst.ExitCode, "the python engine exits cleanly on SIGTERM")

	require.NoError(t, b.Start(ctx, spec.EngineID))
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	require.NoError(t, backendtest.WaitHealthy(wctx, url))
	status, body = keyed(t, http.MethodGet, url+"/brain", key, "")
	require.Equal(t, http.StatusOK, status)
	require.EqualValues(t, 1, body["counter"])

	inst, err = b.Inspect(ctx, spec.EngineID)
	require.NoError(t, err)
	require.NoError(t, syscall.Kill(inst.Pid, syscall.SIGKILL))
	select {
	case ev := <-events:
		require.Equal(t, spec.EngineID, ev.EngineID)
		require.Equal(t, 128+int(syscall.SIGKILL), ev.ExitCode)
	case <-time.After(10 * time.Second):
		t.Fatal("no event for the killed python engine")
	}
}

// TestOverlapBetweenProcessesIsDetected: two backends on one data root
// stand for two orchestrator processes on one host. An operation that
// meets another's on the same engine is reported (OnOverlap) and waits its
// turn; operations on other engines are never reported.
func TestOverlapBetweenProcessesIsDetected(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	var mu sync.Mutex
	var overlaps []string
	report := func(engineID, op string) {
		mu.Lock()
		defer mu.Unlock()
		overlaps = append(overlaps, op+" "+engineID)
	}
	cfgA := config(t, root, "dep-overlap")
	cfgA.Getenv = func(name string) string {
		if name == "ENGINE_SHUTDOWN_DELAY_S" {
			return "2"
		}
		return orchestratorEnv(name)
	}
	cfgA.Passthrough = append(cfgA.Passthrough, "ENGINE_SHUTDOWN_DELAY_S")
	cfgA.OnOverlap = report
	a := newBackend(t, cfgA)
	cfgB := config(t, root, "dep-overlap")
	cfgB.OnOverlap = report
	b := newBackend(t, cfgB)

	slow, _, _ := started(t, a)
	other, _, _ := started(t, a)
	ctx := context.Background()
	// A stops the slow engine (a 2 s drain). Meanwhile B stops another
	// engine (no overlap) and the slow one (an overlap: reported, then
	// done in turn).
	stopped := make(chan error, 1)
	go func() { stopped <- a.Stop(ctx, slow.EngineID, 10*time.Second) }()
	time.Sleep(300 * time.Millisecond) // A is inside its Stop, draining
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, id := range []string{other.EngineID, slow.EngineID} {
		wg.Go(func() { errs <- b.Stop(ctx, id, 10*time.Second) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.NoError(t, <-stopped)
	mu.Lock()
	require.Equal(t, []string{"stop " + slow.EngineID}, overlaps)
	mu.Unlock()
	inst, err := a.Inspect(ctx, slow.EngineID)
	require.NoError(t, err)
	require.NotEqual(t, backend.StatusRunning, inst.Status)
}

// TestUnrecordedProcessIsAdoptedAndDestroyed: an orchestrator that dies
// between spawning an engine and writing its pid file leaves a process no
// file names. Another one finds it by its environment: it reports the
// engine running, and destroying the engine ends the process, even when its
// data dir is already gone.
func TestUnrecordedProcessIsAdoptedAndDestroyed(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	cfg := config(t, root, "default")
	first, err := New(cfg)
	require.NoError(t, err)
	spec, _, url := started(t, first)
	before, err := first.Inspect(context.Background(), spec.EngineID)
	require.NoError(t, err)
	require.NoError(t, first.Close())
	require.NoError(t, os.Remove(filepath.Join(root, spec.EngineID, pidFileName)))

	second := newBackend(t, cfg)
	ctx := context.Background()
	inst, err := second.Inspect(ctx, spec.EngineID)
	require.NoError(t, err)
	require.Equal(t, backend.StatusRunning, inst.Status, "found by its environment")
	require.Equal(t, before.Pid, inst.Pid)

	// Unrecorded again, and now its data dir is gone too.
	require.NoError(t, os.RemoveAll(filepath.Join(root, spec.EngineID)))
	third := newBackend(t, cfg)
	require.NoError(t, third.Destroy(ctx, spec.EngineID))
	require.Error(t, probeHealth(url), "the process is gone")
	require.Eventually(t, func() bool {
		st, err := readProcStat(before.Pid)
		return err != nil || st.state == 'Z'
	}, 5*time.Second, 10*time.Millisecond)
}
