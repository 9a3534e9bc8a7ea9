package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/client"
)

// engineJSON calls the engine at url with its key and decodes its 200
// answer into out.
func engineJSON(t *testing.T, method, url, key, body string, out any) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	require.NoError(t, err)
	if key != "" {
		req.Header.Set("X-Engine-Key", key)
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.NoError(t, json.NewDecoder(resp.Body).Decode(out))
}

// remember writes input into the engine's brain (POST /execute) and
// returns the brain's counter after it.
func remember(t *testing.T, url, key, input string) int {
	t.Helper()
	var out struct {
		Counter int `json:"counter"`
	}
	engineJSON(t, http.MethodPost, url+"/execute", key, `{"input":"`+input+`"}`, &out)
	return out.Counter
}

// brainOf reads the engine's brain: its counter and the inputs it noted.
func brainOf(t *testing.T, url, key string) (int, []string) {
	t.Helper()
	var out struct {
		Counter int `json:"counter"`
		Notes   []struct {
			Input string `json:"input"`
		} `json:"notes"`
	}
	engineJSON(t, http.MethodGet, url+"/brain", key, "", &out)
	var inputs []string
	for _, n := range out.Notes {
		inputs = append(inputs, n.Input)
	}
	return out.Counter, inputs
}

// versionOf is the ENGINE_VERSION the engine itself reports on /health.
func versionOf(t *testing.T, url string) string {
	t.Helper()
	var h struct {
		Status        string `json:"status"`
		EngineVersion string `json:"engine_version"`
	}
	engineJSON(t, http.MethodGet, url+"/health", "", "", &h)
	require.Equal(t, "ok", h.Status)
	return h.EngineVersion
}

// snapshotDirs lists the subprocess backend's snapshots of an engine.
func snapshotDirs(t *testing.T, env map[string]string, engineID string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(env["ORCH_DATA_ROOT"], engineID+".snap-*"))
	require.NoError(t, err)
	var out []string
	for _, p := range m {
		out = append(out, filepath.Base(p))
	}
	return out
}

// upgradeEnv is baseEnv with engines that refuse ENGINE_VERSION "v-bad"
// and a short boot timeout, so a refused upgrade is rolled back quickly.
func upgradeEnv(t *testing.T, dbURL string) map[string]string {
	env := baseEnv(t, dbURL)
	engineEnv(env, "ENGINE_REFUSE_VERSIONS", "v-bad")
	env["ORCH_BOOT_TIMEOUT_S"] = "8" // generous: CI runs the race build of everything at once
	env["ORCH_SNAPSHOTS_KEPT"] = "2"
	return env
}

// eachUpgradeEnv runs fn as a parallel subtest per store, on upgradeEnv's
// environment for that store.
func eachUpgradeEnv(t *testing.T, fn func(t *testing.T, env map[string]string)) {
	for _, st := range stores() {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel() // mostly waits out boot timeouts: the stores share them
			fn(t, upgradeEnv(t, st.url(t)))
		})
	}
}

// TestUpgradeKeepsTheBrainAndRollsBackARefusedVersion upgrades one engine
// through the API on a real orchestrator with reference engines: the brain,
// key and URL stay, the engine reports the new version; an upgrade to a
// version the engine refuses answers UPGRADE_FAILED with the engine's
// reason and leaves the engine on the old version with its brain intact;
// ORCH_SNAPSHOTS_KEPT snapshots are kept and destroy deletes them.
func TestUpgradeKeepsTheBrainAndRollsBackARefusedVersion(t *testing.T) {
	eachUpgradeEnv(t, func(t *testing.T, env map[string]string) {
		// Engines take half a second to answer, so the CLI sees the wait.
		engineEnv(env, "ENGINE_WARMUP_S", "0.5")
		ctx := context.Background()
		o := startServe(t, env)
		prod, pc := registerAcme(t, o.url, env)
		eng, err := pc.Provision(ctx, client.ProvisionRequest{UserID: "alice", EngineVersion: "v1"})
		require.NoError(t, err)
		require.Equal(t, "v1", versionOf(t, eng.URL))
		remember(t, eng.URL, eng.APIKey, "first")
		require.Equal(t, 2, remember(t, eng.URL, eng.APIKey, "second"))

		up, err := pc.Upgrade(ctx, "alice", "v2")
		require.NoError(t, err)
		require.Equal(t, "v2", up.EngineVersion)
		require.Equal(t, "v1", up.PreviousVersion)
		require.Equal(t, "running", up.Status)
		require.Equal(t, eng.URL, up.URL, "same URL")
		require.Equal(t, "v2", versionOf(t, eng.URL), "the engine runs the new version")
		counter, notes := brainOf(t, eng.URL, eng.APIKey) // same key
		require.Equal(t, 2, counter, "the brain survived the upgrade")
		require.ElementsMatch(t, []string{"first", "second"}, notes)
		got, err := pc.Get(ctx, "alice")
		require.NoError(t, err)
		require.Equal(t, "v2", got.EngineVersion)
		require.Nil(t, got.Operation, "no operation in flight")
		require.Equal(t, 3, remember(t, eng.URL, eng.APIKey, "third"))

		began := time.Now()
		_, err = pc.Upgrade(ctx, "alice", "v-bad")
		require.Equal(t, client.CodeUpgradeFailed, client.ErrorCode(err), "%v", err)
		var apiErr *client.Error
		require.ErrorAs(t, err, &apiErr)
		require.Equal(t, http.StatusBadGateway, apiErr.Status)
		require.Contains(t, apiErr.Message, "refused", "the engine's reason")
		require.Contains(t, apiErr.Message, "v2")
		t.Logf("refused upgrade rolled back in %s", time.Since(began).Round(time.Millisecond))
		got, err = pc.Get(ctx, "alice")
		require.NoError(t, err)
		require.Equal(t, "running", got.Status)
		require.Equal(t, "v2", got.EngineVersion, "rolled back to the old version")
		require.Equal(t, "v2", versionOf(t, eng.URL))
		counter, notes = brainOf(t, eng.URL, eng.APIKey)
		require.Equal(t, 3, counter, "the brain is intact after the rollback")
		require.ElementsMatch(t, []string{"first", "second", "third"}, notes)

		// An engine already on the version is left alone.
		same, err := pc.Upgrade(ctx, "alice", "v2")
		require.NoError(t, err)
		require.Equal(t, "v2", same.EngineVersion)

		// The CLI's upgrade names its phases on stderr, whole lines (not
		// a terminal), and prints the outcome.
		cliEnv := map[string]string{"BAP_URL": o.url, "BAP_PLATFORM_KEY": prod.PlatformAPIKey}
		stdout, stderr, err := cliRun(t, cliEnv, "engines", "upgrade", "alice", "--engine-version", "v3")
		require.NoError(t, err, stderr)
		require.Contains(t, stdout, "engine_version:")
		require.Contains(t, stdout, "v3")
		require.NotContains(t, stderr, "\r")
		require.Contains(t, stderr, "upgrade alice: waiting for health…\n")
		require.Contains(t, stderr, "upgrade alice: done in ")
		require.Equal(t, "v3", versionOf(t, eng.URL))
		_, stderr, err = cliRun(t, cliEnv, "engines", "upgrade", "alice", "--engine-version", "v-bad")
		require.Error(t, err)
		require.Contains(t, stderr, "upgrade alice: rolling back to the old version…\n")
		require.Contains(t, stderr, "UPGRADE_FAILED")
		require.Len(t, snapshotDirs(t, env, eng.EngineID), 2, "ORCH_SNAPSHOTS_KEPT snapshots are kept")

		page, err := pc.Audit(ctx, "alice", client.AuditOptions{})
		require.NoError(t, err)
		var actions []string
		for _, e := range page.Entries {
			actions = append(actions, e.Action)
			if e.Action == "upgrade_rolled_back" {
				require.Equal(t, "v-bad", e.Metadata["to"])
				require.Contains(t, e.Metadata["reason"], "refused")
			}
			if e.Action == "upgrade" {
				require.NotEmpty(t, e.Metadata["snapshot"])
			}
		}
		require.Equal(t, []string{"upgrade_rolled_back", "upgrade", "upgrade_rolled_back", "upgrade", "provision"}, actions)

		// Bad input leaves nothing behind.
		_, err = pc.Upgrade(ctx, "alice", "not an image")
		require.Equal(t, client.CodeValidation, client.ErrorCode(err))
		_, err = pc.Upgrade(ctx, "nobody", "v4")
		require.Equal(t, client.CodeEngineNotFound, client.ErrorCode(err))

		_, err = pc.Destroy(ctx, "alice")
		require.NoError(t, err)
		require.Empty(t, snapshotDirs(t, env, eng.EngineID), "destroy deletes the snapshots")
		entries, err := os.ReadDir(env["ORCH_DATA_ROOT"])
		require.NoError(t, err)
		require.Empty(t, entries)
	})
}

// TestKilledDuringUpgrade SIGKILLs the orchestrator (its own process) in
// the middle of an upgrade, while the new version warms up, and restarts
// it on the same database: the upgrade is finished or rolled back, never
// left half-done, and the engine runs the version its row names with its
// brain intact. To a version that comes up, it may end either way; to one
// the engine refuses, it is rolled back onto the snapshot.
func TestKilledDuringUpgrade(t *testing.T) {
	for _, tc := range []struct{ to, want string }{{"v2", ""}, {"v-bad", "v1"}} {
		for _, st := range stores() {
			t.Run(tc.to+"/"+st.name, func(t *testing.T) {
				t.Parallel() // mostly waits on warming engines and boot timeouts
				killedDuringUpgrade(t, st, tc.to, tc.want)
			})
		}
	}
}

func killedDuringUpgrade(t *testing.T, st store, to, want string) {
	env := upgradeEnv(t, st.url(t))
	engineEnv(env, "ENGINE_WARMUP_S", "1")
	env["ORCH_BOOT_TIMEOUT_S"] = "10"
	ctx := context.Background()

	c := startChild(t, env)
	prod, pc := registerAcme(t, c.url, env)
	eng, err := pc.Provision(ctx, client.ProvisionRequest{UserID: "alice", EngineVersion: "v1"})
	require.NoError(t, err)
	remember(t, eng.URL, eng.APIKey, "before")

	go func() { _, _ = pc.Upgrade(ctx, "alice", to) }()
	var phases []string
	require.Eventually(t, func() bool {
		e, err := pc.Get(ctx, "alice")
		if err != nil || e.Operation == nil {
			return false
		}
		if len(phases) == 0 || phases[len(phases)-1] != e.Operation.Phase {
			phases = append(phases, e.Operation.Phase)
		}
		return e.Operation.Phase == "waiting_for_health"
	}, 15*time.Second, 5*time.Millisecond, "the upgrade reaches its wait for the new version")
	t.Logf("phases seen before the kill: %v", phases)
	c.kill(t)

	c = startChild(t, env)
	pc = client.New(c.url, client.WithPlatformKey(prod.PlatformAPIKey))
	var got client.Engine
	require.Eventually(t, func() bool {
		got, err = pc.Get(ctx, "alice")
		return err == nil && got.Operation == nil
	}, 20*time.Second, 20*time.Millisecond, "the interrupted upgrade is taken over")
	require.Equal(t, "running", got.Status)
	require.Contains(t, []string{"v1", to}, got.EngineVersion)
	if want != "" {
		require.Equal(t, want, got.EngineVersion)
	}
	require.Equal(t, got.EngineVersion, versionOf(t, got.URL), "the engine runs the version its row names")
	counter, notes := brainOf(t, got.URL, eng.APIKey)
	require.Equal(t, 1, counter, "brain intact")
	require.Equal(t, []string{"before"}, notes)
	page, err := pc.Audit(ctx, "alice", client.AuditOptions{})
	require.NoError(t, err)
	require.Contains(t, []string{"upgrade", "upgrade_rolled_back"}, page.Entries[0].Action)
	require.Equal(t, true, page.Entries[0].Metadata["recovered"])
	t.Logf("recovered to %s by %s", got.EngineVersion, page.Entries[0].Action)

	_, err = pc.Destroy(ctx, "alice")
	require.NoError(t, err)
}

// cliRun runs this binary as the bap-engine CLI with args and the
// variables vars, and returns its stdout and stderr (a pipe: not a
// terminal).
func cliRun(t *testing.T, vars map[string]string, args ...string) (string, string, error) {
	t.Helper()
	self, err := os.Executable()
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), mainEnv + "=1"}
	for k, v := range vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	return stdout.String(), stderr.String(), err
}
