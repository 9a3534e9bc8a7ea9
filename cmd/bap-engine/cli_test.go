package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/september/bap-engine/internal/testlog"
)

// cli runs one client command against url with env (BAP_* variables) and
// returns its standard output.
func cli(t *testing.T, env map[string]string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := run(ctx, args, getenvOf(env), &out)
	return out.String(), err
}

func mustCLI(t *testing.T, env map[string]string, args ...string) string {
	t.Helper()
	out, err := cli(t, env, args...)
	require.NoError(t, err, "bap-engine %s: %s", strings.Join(args, " "), out)
	return out
}

// TestOperatorCommands drives every operator command of the CLI against a
// real serve on both stores, in every output format.
func TestOperatorCommands(t *testing.T) {
	for _, st := range stores() {
		t.Run(st.name, func(t *testing.T) {
			env := baseEnv(t, st.url(t))
			o := startServe(t, env)
			home := t.TempDir()
			admin := map[string]string{"BAP_URL": o.url, "BAP_ADMIN_KEY": env["ORCH_ADMIN_KEY"], "HOME": home}

			var reg struct {
				ProductID      string `json:"product_id"`
				PlatformAPIKey string `json:"platform_api_key"`
			}
			require.NoError(t, json.Unmarshal([]byte(mustCLI(t, admin, "products", "register", "demo", "--json")), &reg))
			mustCLI(t, admin, "products", "register", "other")
			// The slug works wherever the product id does.
			require.Contains(t, mustCLI(t, admin, "products", "policy", "demo", `{"max_engines": 3}`), `{"max_engines":3}`)

			table := mustCLI(t, admin, "products", "ls")
			require.Contains(t, table, "SLUG")
			require.Contains(t, table, "demo")
			require.NotContains(t, table, "POLICY", "the policy column is -o wide's")
			require.Contains(t, mustCLI(t, admin, "products", "ls", "-o", "wide"), `{"max_engines":3}`)
			var list struct {
				Products []struct{ Slug string } `json:"products"`
				Total    int                     `json:"total"`
			}
			require.NoError(t, yaml.Unmarshal([]byte(mustCLI(t, admin, "products", "ls", "-o", "yaml")), &list))
			require.Equal(t, 2, list.Total)
			require.Equal(t, "demo", list.Products[0].Slug)
			got := mustCLI(t, admin, "products", "get", "demo", "-o", "json")
			require.Contains(t, got, reg.ProductID)

			product := map[string]string{"BAP_URL": o.url, "BAP_PLATFORM_KEY": reg.PlatformAPIKey, "HOME": home}
			mustCLI(t, product, "engines", "provision", "alice")
			mustCLI(t, product, "engines", "provision", "bob")
			ls := mustCLI(t, product, "engines", "ls")
			require.Contains(t, ls, "alice")
			require.Contains(t, ls, "2 of 2 engines")
			require.NotContains(t, ls, "ENGINE ID")
			require.Contains(t, mustCLI(t, product, "engines", "ls", "-o", "wide"), "ENGINE ID")
			require.Contains(t, mustCLI(t, product, "engines", "get", "alice", "-o", "yaml"), "status: running")

			logs := mustCLI(t, product, "engines", "logs", "alice", "--tail", "1")
			require.Equal(t, 1, strings.Count(logs, "\n"), logs)
			require.Contains(t, mustCLI(t, product, "engines", "logs", "alice"), "engine ready")

			fleet := mustCLI(t, admin, "fleet", "ls", "--product", "demo", "--user", "ALI")
			require.Contains(t, fleet, "alice")
			require.NotContains(t, fleet, "bob")
			require.Contains(t, fleet, "1 of 1 engines")

			// The other commands honour every output format too.
			require.Contains(t, mustCLI(t, product, "engines", "admit", "alice", "-o", "yaml"), "admitted: true")
			mustCLI(t, product, "engines", "stop", "bob")
			require.Contains(t, mustCLI(t, product, "engines", "start", "bob", "-o", "json"), `"status": "running"`)
			require.Contains(t, mustCLI(t, product, "engines", "rotate-key", "bob", "--json"), `"api_key": "sk-sept-`)
			require.Contains(t, mustCLI(t, product, "engines", "audit", "bob", "-o", "yaml"), "action: rotate_key")
			require.Contains(t, mustCLI(t, product, "engines", "audit", "bob"), "ACTION")
			require.Contains(t, mustCLI(t, product, "status", "-o", "json"), `"by_status"`)
			require.Contains(t, mustCLI(t, product, "status"), "health:")
			require.Contains(t, mustCLI(t, admin, "replicas", "ls", "-o", "yaml"), "alive: true")
			require.Contains(t, mustCLI(t, admin, "fleet", "ls", "-o", "wide"), "RESTARTS")

			// destroy asks on a terminal; anywhere else it needs --yes.
			_, err := cli(t, product, "engines", "destroy", "bob")
			require.ErrorContains(t, err, "--yes")
			require.Contains(t, mustCLI(t, product, "engines", "ls"), "bob", "nothing destroyed without --yes")
			mustCLI(t, product, "engines", "destroy", "bob", "--yes")
			require.NotContains(t, mustCLI(t, product, "engines", "ls"), "bob")

			// Unknown subcommands and formats fail.
			_, err = cli(t, product, "engines", "nosuch")
			require.ErrorContains(t, err, `unknown command "nosuch"`)
			_, err = cli(t, product, "engines", "ls", "-o", "xml")
			require.ErrorContains(t, err, "unknown output format")

			// login checks and saves the keys (0600); later commands need
			// neither variables nor flags.
			bare := map[string]string{"HOME": home}
			_, err = cli(t, bare, "login", "--url", o.url, "--admin-key", "wrong-admin-key-000")
			require.Error(t, err, "a wrong key is not saved")
			out := mustCLI(t, bare, "login", "--url", o.url, "--admin-key", env["ORCH_ADMIN_KEY"], "--platform-key", reg.PlatformAPIKey)
			require.Contains(t, out, "logged in to "+o.url)
			info, err := os.Stat(filepath.Join(home, ".config", "bap-engine", "context.json"))
			require.NoError(t, err)
			require.Equal(t, os.FileMode(0o600), info.Mode().Perm())
			require.Contains(t, mustCLI(t, bare, "engines", "ls"), "alice")
			require.Contains(t, mustCLI(t, bare, "products", "ls"), "demo")
			_, err = cli(t, map[string]string{"HOME": home, "BAP_URL": "http://127.0.0.1:1"}, "engines", "ls")
			require.Error(t, err, "the saved keys are for their own URL only")

			mustCLI(t, product, "engines", "destroy", "alice", "-y")
		})
	}
}

// TestWatchPrintsChanges runs engines get -w while the engine stops, and
// checks that every document printed is a change and the states seen.
func TestWatchPrintsChanges(t *testing.T) {
	env := baseEnv(t, stores()[0].url(t))
	o := startServe(t, env)
	admin := map[string]string{"BAP_URL": o.url, "BAP_ADMIN_KEY": env["ORCH_ADMIN_KEY"], "HOME": t.TempDir()}
	var reg struct {
		PlatformAPIKey string `json:"platform_api_key"`
	}
	require.NoError(t, json.Unmarshal([]byte(mustCLI(t, admin, "products", "register", "w", "-o", "json")), &reg))
	product := map[string]string{"BAP_URL": o.url, "BAP_PLATFORM_KEY": reg.PlatformAPIKey, "HOME": admin["HOME"]}
	mustCLI(t, product, "engines", "provision", "alice")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out testlog.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"engines", "get", "alice", "-w", "-o", "json"}, getenvOf(product), &out)
	}()
	require.Eventually(t, func() bool { return strings.Contains(out.String(), `"status": "running"`) }, 20*time.Second, 50*time.Millisecond)
	mustCLI(t, product, "engines", "stop", "alice")
	require.Eventually(t, func() bool { return strings.Contains(out.String(), `"status": "stopped"`) }, 20*time.Second, 50*time.Millisecond)
	time.Sleep(2 * watchEvery)
	cancel()
	require.NoError(t, <-done)
	// Each document printed differs from the one before it (a probe's
	// last_health_at is a change too), and the states go running, stopped.
	docs := strings.Split(strings.TrimSpace(out.String()), "\n\n")
	var states []string
	for i, d := range docs {
		if i > 0 {
			require.NotEqual(t, docs[i-1], d, "an unchanged engine is not printed again")
		}
		var e struct {
			Status string `json:"status"`
		}
		require.NoError(t, json.Unmarshal([]byte(d), &e), "document %d: %s", i, d)
		if len(states) == 0 || states[len(states)-1] != e.Status {
			states = append(states, e.Status)
		}
	}
	require.Equal(t, []string{"running", "stopped"}, states)
	mustCLI(t, product, "engines", "destroy", "alice", "--yes")
}

func TestVersionAndProbe(t *testing.T) {
	out := mustCLI(t, nil, "version")
	require.Equal(t, "bap-engine dev (commit "+currentBuild().Commit+", "+runtime.Version()+")\n", out)
	require.Equal(t, out, mustCLI(t, nil, "--version"))
	var b map[string]string
	require.NoError(t, json.Unmarshal([]byte(mustCLI(t, nil, "version", "-o", "json")), &b))
	require.Equal(t, "dev", b["version"])
	require.Equal(t, runtime.Version(), b["go"])

	env := baseEnv(t, stores()[0].url(t))
	o := startServe(t, env)
	require.Contains(t, mustCLI(t, nil, "probe", o.url+"/livez"), "200")
	_, err := cli(t, nil, "probe", o.url+"/engines")
	require.ErrorContains(t, err, "401")
	var v map[string]string
	resp, err := http.Get(o.url + "/version")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&v))
	require.Equal(t, b, v, "GET /version is the binary's own")
}

// TestLogsFollowEndsWithTheServer follows an engine's log with the CLI,
// sees a new line arrive, and checks that a graceful shutdown of serve ends
// the stream instead of waiting for it.
func TestLogsFollowEndsWithTheServer(t *testing.T) {
	env := baseEnv(t, stores()[0].url(t))
	o := startServe(t, env)
	admin := map[string]string{"BAP_URL": o.url, "BAP_ADMIN_KEY": env["ORCH_ADMIN_KEY"], "HOME": t.TempDir()}
	var reg struct {
		PlatformAPIKey string `json:"platform_api_key"`
	}
	require.NoError(t, json.Unmarshal([]byte(mustCLI(t, admin, "products", "register", "f", "-o", "json")), &reg))
	product := map[string]string{"BAP_URL": o.url, "BAP_PLATFORM_KEY": reg.PlatformAPIKey, "HOME": admin["HOME"]}
	var prov struct {
		URL    string `json:"url"`
		APIKey string `json:"api_key"`
	}
	require.NoError(t, json.Unmarshal([]byte(mustCLI(t, product, "engines", "provision", "alice", "-o", "json")), &prov))

	var out testlog.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(context.Background(), []string{"engines", "logs", "alice", "-f", "--tail", "1"}, getenvOf(product), &out)
	}()
	require.Eventually(t, func() bool { return strings.Count(out.String(), "\n") >= 1 }, 20*time.Second, 20*time.Millisecond)
	require.Equal(t, http.StatusOK, engineAnswers(t, prov.URL, prov.APIKey))
	require.Eventually(t, func() bool { return strings.Contains(out.String(), `"/brain"`) }, 20*time.Second, 20*time.Millisecond,
		"the engine's new request line arrives while following: %s", out.String())
	require.NotContains(t, out.String(), prov.APIKey)

	began := time.Now()
	o.stop(t)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("the followed log did not end when serve shut down")
	}
	require.Less(t, time.Since(began), 10*time.Second, "shutdown is not held by a followed log")
}
