package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/config"

	"github.com/september/bap-engine/client"
	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/kubetest"
	"github.com/september/bap-engine/internal/pgtest"
	"github.com/september/bap-engine/internal/secret"
	"github.com/september/bap-engine/internal/testengine"
	"github.com/september/bap-engine/internal/testmain"
)

// mainEnv makes the test binary behave as the bap-engine binary itself:
// crash tests run whole orchestrators with it that they can SIGKILL, the
// CLI tests run its commands, and the dev test runs its `engine` as the
// engine command, as dev does. Other tests' orchestrators start the
// standalone engine (testengine), which starts many times faster.
const mainEnv = "BAP_CMD_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(mainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(testmain.Run(m, testmain.After(kubetest.Stop)))
}

// orchestrator is one run of `bap-engine serve` inside the test process.
type orchestrator struct {
	url    string
	cancel context.CancelFunc
	done   chan error
}

// baseEnv is a complete serve configuration on a subprocess backend whose
// engines are the standalone reference engine.
func baseEnv(t *testing.T, dbURL string) map[string]string {
	t.Helper()
	master, err := secret.NewFernetKey()
	require.NoError(t, err)
	portMin, portMax := backendtest.PortRange(t, 40)
	dataRoot := filepath.Join(t.TempDir(), "engines")
	killEnginesUnder(t, dataRoot)
	return map[string]string{
		"ORCH_DATABASE_URL":            dbURL,
		"ORCH_MASTER_KEY":              master,
		"ORCH_ADMIN_KEY":               "test-admin-key-0123456789",
		"ORCH_ENGINE_BACKEND":          "subprocess",
		"ORCH_SUBPROCESS_COMMAND":      testengine.Path(t),
		mainEnv:                        "1", // for orchestrators run as children (startChild)
		"ORCH_DATA_ROOT":               dataRoot,
		"ORCH_LISTEN_ADDR":             "127.0.0.1:0",
		"ORCH_PORT_MIN":                fmt.Sprint(portMin),
		"ORCH_PORT_MAX":                fmt.Sprint(portMax),
		"ORCH_DEPLOYMENT_ID":           fmt.Sprintf("cmdtest-%d", time.Now().UnixNano()),
		"ORCH_HEALTH_CHECK_INTERVAL_S": "0.2",
		"ORCH_HEALTH_CHECK_TIMEOUT_S":  "1",
		"ORCH_RESTART_BACKOFF_BASE_S":  "0.2",
		"ORCH_BOOT_TIMEOUT_S":          "20",
		"ORCH_RECONCILE_GRACE_S":       "0",
		"ORCH_LOG_LEVEL":               "warn",
	}
}

func getenvOf(env map[string]string) func(string) string {
	return func(k string) string { return env[k] }
}

var listenLine = regexp.MustCompile(`listening on (http://\S+)`)

// listeningURL delivers the address serve prints on r, and keeps draining r.
func listeningURL(r io.Reader) <-chan string {
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			if m := listenLine.FindStringSubmatch(sc.Text()); m != nil {
				urls <- m[1]
			}
		}
	}()
	return urls
}

// startServe runs serve in-process and waits for its address.
func startServe(t *testing.T, env map[string]string) *orchestrator {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	o := &orchestrator{cancel: cancel, done: make(chan error, 1)}
	go func() {
		err := run(ctx, []string{"serve"}, getenvOf(env), pw)
		pw.CloseWithError(errors.New("serve returned"))
		o.done <- err
	}()
	select {
	case o.url = <-listeningURL(pr):
	case err := <-o.done:
		t.Fatalf("serve exited before listening: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("serve did not start listening")
	}
	t.Cleanup(func() { o.stop(t) })
	return o
}

// stop is SIGTERM for an in-process orchestrator: cancel and wait.
func (o *orchestrator) stop(t *testing.T) {
	if o.cancel == nil {
		return
	}
	o.cancel()
	o.cancel = nil
	select {
	case err := <-o.done:
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not shut down within 20 s")
	}
}

func adminClient(url string, env map[string]string) *client.Client {
	return client.New(url, client.WithAdminKey(env["ORCH_ADMIN_KEY"]))
}

// registerAcme registers the product "acme" on the orchestrator at url and
// returns it with a client holding its platform key.
func registerAcme(t *testing.T, url string, env map[string]string) (client.Product, *client.Client) {
	t.Helper()
	prod, err := adminClient(url, env).RegisterProduct(context.Background(), client.ProductRequest{Slug: "acme", DisplayName: "Acme"})
	require.NoError(t, err)
	return prod, client.New(url, client.WithPlatformKey(prod.PlatformAPIKey))
}

// engineEnv sets variables for the reference engines the orchestrator
// starts (name, value pairs) and passes them through to them.
func engineEnv(env map[string]string, nameValues ...string) {
	for i := 0; i+1 < len(nameValues); i += 2 {
		env[nameValues[i]] = nameValues[i+1]
		if pass := env["ORCH_ENGINE_ENV_PASSTHROUGH"]; pass != "" {
			env["ORCH_ENGINE_ENV_PASSTHROUGH"] = pass + "," + nameValues[i]
		} else {
			env["ORCH_ENGINE_ENV_PASSTHROUGH"] = nameValues[i]
		}
	}
}

func engineAnswers(t *testing.T, url, key string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url+"/brain", nil)
	require.NoError(t, err)
	req.Header.Set("X-Engine-Key", key)
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// zombie reports whether pid has exited and waits to be reaped.
func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && i+2 < len(b) && b[i+2] == 'Z'
}

// pidOf reads the engine's process id from the subprocess backend's pid file.
func pidOf(t *testing.T, env map[string]string, engineID string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(env["ORCH_DATA_ROOT"], engineID, "engine.pid"))
	require.NoError(t, err)
	var pf struct {
		Pid int `json:"pid"`
	}
	require.NoError(t, json.Unmarshal(b, &pf))
	require.NotZero(t, pf.Pid)
	return fmt.Sprint(pf.Pid)
}

type store struct {
	name string
	url  func(t *testing.T) string
}

func stores() []store {
	return []store{
		{"sqlite", func(t *testing.T) string {
			return "sqlite:///" + strings.TrimPrefix(filepath.Join(t.TempDir(), "bap.db"), "/")
		}},
		{"postgres", func(t *testing.T) string { return pgtest.URL(t) }},
	}
}

// TestServeRestartKeepsEngines drives a real orchestrator through the client,
// shuts it down (engines keep running), starts it again on the same database
// and checks the engine was neither stopped nor recreated: same process, same
// key, same brain.
func TestServeRestartKeepsEngines(t *testing.T) {
	for _, st := range stores() {
		t.Run(st.name, func(t *testing.T) {
			env := baseEnv(t, st.url(t))
			ctx := context.Background()
			o := startServe(t, env)
			h, err := client.New(o.url).Health(ctx)
			require.NoError(t, err)
			require.Equal(t, "ok", h.Status)

			prod, pc := registerAcme(t, o.url, env)
			adm, err := pc.Admit(ctx, "alice", client.AdmitOptions{AutoProvision: true})
			require.NoError(t, err)
			require.True(t, adm.Admitted)
			require.Equal(t, http.StatusOK, engineAnswers(t, adm.Engine.URL, adm.Engine.APIKey))
			pid := pidOf(t, env, adm.Engine.EngineID)

			o.stop(t)
			require.Equal(t, http.StatusOK, engineAnswers(t, adm.Engine.URL, adm.Engine.APIKey), "shutdown never stops engines")

			o2 := startServe(t, env)
			pc2 := client.New(o2.url, client.WithPlatformKey(prod.PlatformAPIKey))
			got, err := pc2.Get(ctx, "alice")
			require.NoError(t, err)
			require.Equal(t, "running", got.Status)
			require.Equal(t, adm.Engine.APIKey, got.APIKey)
			require.Equal(t, pid, pidOf(t, env, adm.Engine.EngineID), "restart must not recreate a healthy engine")
			require.Equal(t, http.StatusOK, engineAnswers(t, got.URL, got.APIKey))
			page, err := pc2.Audit(ctx, "alice", client.AuditOptions{})
			require.NoError(t, err)
			for _, e := range page.Entries {
				require.NotContains(t, []string{"stop", "start", "engine_died", "reconcile_failed"}, e.Action, "restart touched the engine")
			}

			_, err = pc2.Destroy(ctx, "alice")
			require.NoError(t, err)
			require.Zero(t, engineAnswers(t, adm.Engine.URL, adm.Engine.APIKey))
		})
	}
}

func TestServeRefusesBadConfiguration(t *testing.T) {
	env := baseEnv(t, "sqlite:///"+strings.TrimPrefix(filepath.Join(t.TempDir(), "x.db"), "/"))
	delete(env, "ORCH_MASTER_KEY")
	env["ORCH_PORT_MIN"] = "banana"
	err := run(context.Background(), []string{"serve"}, getenvOf(env), io.Discard)
	require.Error(t, err)
	require.Contains(t, err.Error(), "ORCH_MASTER_KEY")
	require.Contains(t, err.Error(), "ORCH_PORT_MIN")

	env = baseEnv(t, "sqlite:///"+strings.TrimPrefix(filepath.Join(t.TempDir(), "x.db"), "/"))
	env["ORCH_MASTER_KEY"] = "not-a-fernet-key"
	err = run(context.Background(), []string{"serve"}, getenvOf(env), io.Discard)
	require.ErrorContains(t, err, "ORCH_MASTER_KEY")
	require.NotContains(t, err.Error(), "not-a-fernet-key", "secrets are never echoed")
}

// TestSecondOrchestratorOnSQLiteFileRefused: a second orchestrator on a
// SQLite file another process serves refuses to start, naming that
// process; once it is gone the file can be served again.
func TestSecondOrchestratorOnSQLiteFileRefused(t *testing.T) {
	env := baseEnv(t, "sqlite:///"+strings.TrimPrefix(filepath.Join(t.TempDir(), "bap.db"), "/"))
	first := startChild(t, env)
	err := run(context.Background(), []string{"serve"}, getenvOf(env), io.Discard)
	require.ErrorContains(t, err, "another bap-engine process serves this SQLite database")
	require.ErrorContains(t, err, fmt.Sprintf("(pid %d)", first.cmd.Process.Pid))
	_, err = client.New(first.url).Health(context.Background())
	require.NoError(t, err, "the first one serves on")

	first.kill(t)
	o := startServe(t, env)
	h, err := client.New(o.url).Health(context.Background())
	require.NoError(t, err)
	require.Equal(t, "ok", h.Status)
}

func TestKeygenPrintsFernetKey(t *testing.T) {
	var out strings.Builder
	require.NoError(t, run(context.Background(), []string{"keygen"}, os.Getenv, &out))
	key := strings.TrimSpace(out.String())
	require.Len(t, key, 44)
	_, err := secret.NewSealer(key)
	require.NoError(t, err)
	if _, err := exec.LookPath("python3"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("python3 is required in CI to check keygen against Python's cryptography")
		}
		t.Skip("python3 not installed")
	}
	py := exec.Command("python3", "-c", "import sys; from cryptography.fernet import Fernet; f=Fernet(sys.argv[1].encode()); print(f.decrypt(f.encrypt(b'ok')).decode())", key)
	got, err := py.CombinedOutput()
	if err != nil && strings.Contains(string(got), "No module named") {
		if os.Getenv("CI") == "true" {
			t.Fatalf("python3 cryptography is required in CI: %s", got)
		}
		t.Skip("python3 cryptography not installed")
	}
	require.NoError(t, err, string(got))
	require.Equal(t, "ok", strings.TrimSpace(string(got)))
}

// devLines runs `bap-engine dev` in dir and returns its printed output once
// the curl lines are there.
func startDev(t *testing.T, dir string, env map[string]string) (*orchestrator, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	o := &orchestrator{cancel: cancel, done: make(chan error, 1)}
	go func() {
		err := run(ctx, []string{"dev", "--dir", dir}, getenvOf(env), pw)
		pw.CloseWithError(errors.New("dev returned"))
		o.done <- err
	}()
	var mu sync.Mutex
	var printed strings.Builder
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		once := sync.Once{}
		for sc.Scan() {
			mu.Lock()
			printed.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if strings.HasPrefix(sc.Text(), "Stop with") {
				once.Do(func() { close(ready) })
			}
		}
	}()
	select {
	case <-ready:
	case err := <-o.done:
		t.Fatalf("dev exited: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("dev did not start")
	}
	t.Cleanup(func() { o.stop(t) })
	mu.Lock()
	defer mu.Unlock()
	return o, printed.String()
}

// TestDevCurlLinesWork starts dev with zero configuration (only the listen
// address and the engine command are pointed at the test), runs the printed
// curl lines exactly as printed, and checks keys persist across restarts.
func TestDevCurlLinesWork(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed to run dev's printed lines")
	}
	self, err := os.Executable()
	require.NoError(t, err)
	dir := filepath.Join(t.TempDir(), ".bap-engine")
	killEnginesUnder(t, filepath.Join(dir, "engine-data"))
	portMin, portMax := backendtest.PortRange(t, 10)
	env := map[string]string{
		"ORCH_PORT_MIN":               fmt.Sprint(portMin),
		"ORCH_PORT_MAX":               fmt.Sprint(portMax),
		"ORCH_LISTEN_ADDR":            "127.0.0.1:0",
		"ORCH_SUBPROCESS_COMMAND":     self + " engine",
		"ORCH_ENGINE_ENV_PASSTHROUGH": mainEnv,
		mainEnv:                       "1",
		"ORCH_DEPLOYMENT_ID":          fmt.Sprintf("devtest-%d", time.Now().UnixNano()),
		"ORCH_LOG_LEVEL":              "warn",
		"PATH":                        os.Getenv("PATH"),
	}
	o, out := startDev(t, dir, env)
	var curls []string
	for _, line := range strings.Split(out, "\n") {
		if l := strings.TrimSpace(line); strings.HasPrefix(l, "curl ") {
			curls = append(curls, l)
		}
	}
	require.Len(t, curls, 3, out)
	wants := []string{`"status":"ok"`, `"admitted":true`, `"running":1`}
	for i, c := range curls {
		got, err := exec.Command("sh", "-c", c).CombinedOutput()
		require.NoError(t, err, c)
		require.Contains(t, string(got), wants[i], c)
	}
	// The printed dashboard address answers with its sign-in.
	dash := regexp.MustCompile(`dashboard:\s+(http://\S+/ui/)`).FindStringSubmatch(out)
	require.NotNil(t, dash, out)
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(dash[1])
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(t, "/ui/signin", resp.Header.Get("Location"))
	info, err := os.Stat(filepath.Join(dir, "dev.env"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())
	// The printed export line is in dev.env too: sourcing it sets up the CLI.
	export := regexp.MustCompile(`(?m)^\s*(export BAP_URL=\S+ BAP_PLATFORM_KEY=\S+ BAP_ADMIN_KEY=\S+)$`).FindStringSubmatch(out)
	require.NotNil(t, export, out)
	devEnv, err := os.ReadFile(filepath.Join(dir, "dev.env"))
	require.NoError(t, err)
	require.Contains(t, string(devEnv), export[1]+"\n")
	cli := exec.Command("sh", "-c", ". "+filepath.Join(dir, "dev.env")+" && "+self+" engines ls -o json && "+self+" products get demo -o json")
	cli.Env = []string{"PATH=" + os.Getenv("PATH"), mainEnv + "=1"}
	got, err := cli.CombinedOutput()
	require.NoError(t, err, "%s", got)
	require.Contains(t, string(got), `"user_id": "alice"`)
	require.Contains(t, string(got), `"slug": "demo"`)
	o.stop(t)

	// A second start keeps the keys and the demo product.
	_, out2 := startDev(t, dir, env)
	keyLine := regexp.MustCompile(`platform key (pk-sept-\S+)`)
	require.Equal(t, keyLine.FindStringSubmatch(out)[1], keyLine.FindStringSubmatch(out2)[1])
	adminLine := regexp.MustCompile(`admin key:\s+(\S+)`)
	require.Equal(t, adminLine.FindStringSubmatch(out)[1], adminLine.FindStringSubmatch(out2)[1])
}

// child is an orchestrator in its own process (this test binary acting as
// bap-engine), so it can be SIGKILLed.
type child struct {
	cmd *exec.Cmd
	url string
}

func startChild(t *testing.T, env map[string]string) *child {
	t.Helper()
	self, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(self, "serve")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	c := &child{cmd: cmd}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	select {
	case c.url = <-listeningURL(stdout):
	case <-time.After(60 * time.Second):
		t.Fatal("child orchestrator did not start")
	}
	return c
}

func (c *child) kill(t *testing.T) {
	t.Helper()
	require.NoError(t, c.cmd.Process.Signal(syscall.SIGKILL))
	_, _ = c.cmd.Process.Wait()
}

// engineDirs lists the subprocess backend's engine directories.
func engineDirs(t *testing.T, env map[string]string) []string {
	entries, err := os.ReadDir(env["ORCH_DATA_ROOT"])
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	require.NoError(t, err)
	out := []string{}
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestKilledDuringProvisionAndDestroy SIGKILLs the orchestrator in the middle
// of a provision (engines take 1 s to warm up) and of a destroy (engines take
// 1 s to drain), restarts it on the same database, and finds nothing stuck in
// provisioning or destroying, no orphan process or data, and no leaked port.
func TestKilledDuringProvisionAndDestroy(t *testing.T) {
	for _, st := range stores() {
		t.Run(st.name, func(t *testing.T) {
			env := baseEnv(t, st.url(t))
			engineEnv(env, "ENGINE_WARMUP_S", "1", "ENGINE_SHUTDOWN_DELAY_S", "1")
			ctx := context.Background()

			c := startChild(t, env)
			prod, pc := registerAcme(t, c.url, env)
			// One engine provisioned completely, to be destroyed later.
			done, err := pc.Provision(ctx, client.ProvisionRequest{UserID: "bob"})
			require.NoError(t, err)

			// Kill during a provision: the engine is created and warming up.
			go func() { _, _ = pc.Provision(ctx, client.ProvisionRequest{UserID: "alice"}) }()
			require.Eventually(t, func() bool { return len(engineDirs(t, env)) == 2 }, 10*time.Second, 10*time.Millisecond)
			time.Sleep(200 * time.Millisecond)
			c.kill(t)

			c = startChild(t, env)
			pc = client.New(c.url, client.WithPlatformKey(prod.PlatformAPIKey))
			var alice client.Engine
			require.Eventually(t, func() bool {
				alice, err = pc.Get(ctx, "alice")
				return err == nil && alice.Status != "provisioning"
			}, 30*time.Second, 20*time.Millisecond, "provision finished or failed by reconciliation")
			require.Contains(t, []string{"running", "failed"}, alice.Status)

			// Kill during a destroy: the engine is draining.
			go func() { _, _ = pc.Destroy(ctx, "bob") }()
			require.Eventually(t, func() bool {
				e, err := pc.Get(ctx, "bob")
				return err == nil && e.Status == "destroying"
			}, 10*time.Second, 10*time.Millisecond)
			c.kill(t)

			c = startChild(t, env)
			pc = client.New(c.url, client.WithPlatformKey(prod.PlatformAPIKey))
			require.Eventually(t, func() bool {
				_, err = pc.Get(ctx, "bob")
				return client.ErrorCode(err) == "ENGINE_NOT_FOUND"
			}, 15*time.Second, 10*time.Millisecond, "destroy finished by the takeover of the dead orchestrator's operation")
			require.Zero(t, engineAnswers(t, done.URL, done.APIKey), "destroyed engine's process is gone")

			list, err := pc.List(ctx, client.ListOptions{})
			require.NoError(t, err)
			for _, e := range list.Engines {
				require.NotContains(t, []string{"provisioning", "destroying"}, e.Status)
			}
			// Only alice remains, with data only if she runs: nothing orphaned.
			want := []string{}
			if alice.Status == "running" {
				want = []string{alice.EngineID}
				require.Equal(t, http.StatusOK, engineAnswers(t, alice.URL, alice.APIKey))
			}
			require.Eventually(t, func() bool {
				return slices.Equal(want, engineDirs(t, env))
			}, 10*time.Second, 50*time.Millisecond, "no orphan engine data")
			_, err = pc.Destroy(ctx, "alice")
			require.NoError(t, err)
			require.Empty(t, engineDirs(t, env))
			// Every port is free again: a new provision gets the lowest one.
			again, err := pc.Provision(ctx, client.ProvisionRequest{UserID: "carol"})
			require.NoError(t, err)
			require.True(t, strings.HasSuffix(again.URL, ":"+env["ORCH_PORT_MIN"]), "lowest port is free again: %s", again.URL)
			_, err = pc.Destroy(ctx, "carol")
			require.NoError(t, err)
		})
	}
}

// TestPostgresRestartUnderRunningOrchestrator stops PostgreSQL under a
// serving orchestrator: the API answers 503 with the error envelope and no
// engine is failed for it; when PostgreSQL is back, everything resumes
// without restarting the orchestrator.
func TestPostgresRestartUnderRunningOrchestrator(t *testing.T) {
	pg := pgtest.NewServer(t)
	env := baseEnv(t, pg.URL(t))
	ctx := context.Background()
	o := startServe(t, env)
	_, pc := registerAcme(t, o.url, env)
	eng, err := pc.Provision(ctx, client.ProvisionRequest{UserID: "alice"})
	require.NoError(t, err)

	require.NoError(t, pg.Stop())
	_, err = client.New(o.url).Health(ctx)
	var ce *client.Error
	require.ErrorAs(t, err, &ce)
	require.Equal(t, http.StatusServiceUnavailable, ce.Status)
	_, err = pc.Get(ctx, "alice")
	require.ErrorAs(t, err, &ce)
	require.Equal(t, http.StatusServiceUnavailable, ce.Status)
	require.Equal(t, "DATABASE_UNAVAILABLE", ce.Code)
	_, err = pc.Admit(ctx, "alice", client.AdmitOptions{})
	require.ErrorAs(t, err, &ce)
	require.Equal(t, http.StatusServiceUnavailable, ce.Status)
	// Several health intervals pass with the database down.
	time.Sleep(time.Second)
	require.Equal(t, http.StatusOK, engineAnswers(t, eng.URL, eng.APIKey), "the engine itself is fine")

	cacheLive := func() string {
		text, err := adminClient(o.url, env).PrometheusMetrics(ctx)
		require.NoError(t, err)
		return regexp.MustCompile(`(?m)^bap_engine_admit_cache_live \d`).FindString(text)
	}
	require.Equal(t, "bap_engine_admit_cache_live 0", cacheLive(), "no admit cache while the database is down")

	require.NoError(t, pg.Start())
	require.Eventually(t, func() bool {
		h, err := client.New(o.url).Health(ctx)
		return err == nil && h.Status == "ok"
	}, 30*time.Second, 100*time.Millisecond, "orchestrator serves again without a restart")
	require.Eventually(t, func() bool { return cacheLive() == "bap_engine_admit_cache_live 1" },
		30*time.Second, 50*time.Millisecond, "the admit cache is back once the database is")
	adm, err := pc.Admit(ctx, "alice", client.AdmitOptions{})
	require.NoError(t, err)
	require.True(t, adm.Admitted)
	require.Equal(t, "running", adm.Engine.Status, "no engine failed because of the database outage")
	page, err := pc.Audit(ctx, "alice", client.AuditOptions{})
	require.NoError(t, err)
	for _, e := range page.Entries {
		require.NotContains(t, []string{"health_failed", "engine_died", "reconcile_failed"}, e.Action)
	}
	_, err = pc.Destroy(ctx, "alice")
	require.NoError(t, err)
}

// TestRekeyMovesEngineKeysToTheNewMasterKey provisions under one master key,
// runs rekey with a new key first and the old one after it, and checks an
// orchestrator holding only the new key still hands out the same engine key.
func TestRekeyMovesEngineKeysToTheNewMasterKey(t *testing.T) {
	env := baseEnv(t, "sqlite:///"+strings.TrimPrefix(filepath.Join(t.TempDir(), "bap.db"), "/"))
	ctx := context.Background()
	o := startServe(t, env)
	prod, pc := registerAcme(t, o.url, env)
	eng, err := pc.Provision(ctx, client.ProvisionRequest{UserID: "alice"})
	require.NoError(t, err)
	o.stop(t)

	oldKey := env["ORCH_MASTER_KEY"]
	newKey, err := secret.NewFernetKey()
	require.NoError(t, err)
	env["ORCH_MASTER_KEY"] = newKey + "," + oldKey
	var out strings.Builder
	require.NoError(t, run(ctx, []string{"rekey"}, getenvOf(env), &out))
	require.Contains(t, out.String(), "1 engines, 1 re-encrypted, 0 failed")

	env["ORCH_MASTER_KEY"] = newKey
	o2 := startServe(t, env)
	got, err := client.New(o2.url, client.WithPlatformKey(prod.PlatformAPIKey)).Get(ctx, "alice")
	require.NoError(t, err)
	require.Equal(t, eng.APIKey, got.APIKey)
	_, err = client.New(o2.url, client.WithPlatformKey(prod.PlatformAPIKey)).Destroy(ctx, "alice")
	require.NoError(t, err)
}

// TestProfilesOnlyOnTheLoopbackListener: ORCH_PPROF_ADDR serves Go's
// profiles (block profiling on) on its own loopback listener; the API's
// listener has none.
func TestProfilesOnlyOnTheLoopbackListener(t *testing.T) {
	env := baseEnv(t, "sqlite:///"+strings.TrimPrefix(filepath.Join(t.TempDir(), "bap.db"), "/"))
	addr := fmt.Sprintf("127.0.0.1:%d", backendtest.FreePort(t))
	env["ORCH_PPROF_ADDR"] = addr
	o := startServe(t, env)
	var resp *http.Response
	require.Eventually(t, func() bool {
		var err error
		resp, err = http.Get("http://" + addr + "/debug/pprof/block?debug=1")
		return err == nil
	}, 5*time.Second, 20*time.Millisecond)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, string(body), "--- contention:", "a block profile")
	resp, err = http.Get(o.url + "/debug/pprof/")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
}

func TestServeHelpListsEveryVariable(t *testing.T) {
	var out strings.Builder
	require.NoError(t, run(context.Background(), []string{"serve", "--help"}, func(string) string { return "" }, &out))
	for _, v := range config.Vars() {
		require.Contains(t, out.String(), "\n  "+v.Name, "serve --help names %s", v.Name)
	}
}
