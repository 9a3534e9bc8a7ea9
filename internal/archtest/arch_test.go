package archtest

import (
	"bufio"
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

const module = "github.com/september/bap-engine"

// listed is the module's package graph, listed once for all the tests.
var listed = sync.OnceValues(func() ([]byte, error) {
	return exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, module+"/...").Output()
})

// imports lists each package of the module with its non-test imports.
func imports(t *testing.T) map[string][]string {
	t.Helper()
	out, err := listed()
	require.NoError(t, err, "go list")
	pkgs := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		pkgs[strings.TrimPrefix(fields[0], module+"/")] = fields[1:]
	}
	require.NotEmpty(t, pkgs)
	return pkgs
}

func internalImports(deps []string) []string {
	var out []string
	for _, d := range deps {
		if strings.HasPrefix(d, module+"/") {
			out = append(out, strings.TrimPrefix(d, module+"/"))
		}
	}
	return out
}

func TestLeavesImportNothingInternal(t *testing.T) {
	pkgs := imports(t)
	for _, leaf := range []string{"internal/bap", "internal/config", "internal/secret", "internal/backend", "internal/metrics", "internal/loop", "internal/hub", "internal/requestid"} {
		require.Contains(t, pkgs, leaf)
		require.Empty(t, internalImports(pkgs[leaf]), "%s is a leaf", leaf)
	}
}

func TestAllowedInternalImports(t *testing.T) {
	allowed := map[string][]string{
		"internal/audit":             {},
		"internal/registry":          {"internal/bap", "internal/audit", "internal/loop", "internal/hub"},
		"internal/replica":           {"internal/bap", "internal/registry", "internal/loop"},
		"internal/registry/postgres": {"internal/bap", "internal/audit", "internal/registry"},
		"internal/registry/sqlite":   {"internal/bap", "internal/audit", "internal/registry"},
		"internal/lifecycle":         {"internal/bap", "internal/registry", "internal/backend", "internal/audit", "internal/secret", "internal/metrics", "internal/replica", "internal/loop", "internal/requestid"},
		"internal/policy":            {"internal/bap"},
		"internal/discovery":         {"internal/bap", "internal/registry", "internal/policy", "internal/lifecycle", "internal/audit", "internal/secret"},
		"internal/health":            {"internal/bap", "internal/registry", "internal/lifecycle", "internal/metrics", "internal/audit", "internal/loop", "internal/requestid"},
		"internal/rollout":           {"internal/bap", "internal/registry", "internal/lifecycle", "internal/audit", "internal/replica"},
		"internal/ui":                {"internal/api", "internal/bap", "internal/audit", "internal/registry", "internal/lifecycle", "internal/discovery", "internal/policy", "internal/secret", "internal/rollout"},
	}
	pkgs := imports(t)
	for pkg, ok := range allowed {
		deps, found := pkgs[pkg]
		require.True(t, found, "package %s exists", pkg)
		for _, d := range internalImports(deps) {
			require.True(t, slices.Contains(ok, d), "%s must not import %s", pkg, d)
		}
	}
}

// TestOnlyLifecycleCallsBackends: apart from the commands (the composition
// root, and the standalone engine, whose snapshot helper is the backend
// package's data copy), the backends' own packages and the tests' world
// (servertest, which hands the fake backend to lifecycle and is for tests
// only), only lifecycle imports a backend.
func TestOnlyLifecycleCallsBackends(t *testing.T) {
	for pkg, deps := range imports(t) {
		if pkg == "internal/lifecycle" || pkg == "internal/servertest" || pkg == "internal/engine/standalone" || strings.HasPrefix(pkg, "cmd/") || strings.HasPrefix(pkg, "internal/backend") {
			continue
		}
		for _, d := range internalImports(deps) {
			require.False(t, strings.HasPrefix(d, "internal/backend"), "%s imports %s: only lifecycle may call a backend", pkg, d)
		}
	}
}

// TestServerTestIsForTests: servertest builds whole worlds on a fake
// backend and testengine builds the standalone engine for tests; no
// package's own (non-test) code may import either.
func TestServerTestIsForTests(t *testing.T) {
	pkgs := imports(t)
	for _, forTests := range []string{"internal/servertest", "internal/testengine"} {
		require.Contains(t, pkgs, forTests)
		for pkg, deps := range pkgs {
			require.NotContains(t, internalImports(deps), forTests, "%s imports %s outside its tests", pkg, forTests)
		}
	}
}

// TestDriversStayInTheirPackages: database drivers and the Docker client are
// named only by the packages that implement on them.
func TestDriversStayInTheirPackages(t *testing.T) {
	owners := map[string][]string{
		"github.com/jackc/pgx":     {"internal/registry/postgres", "internal/pgtest"},
		"modernc.org/sqlite":       {"internal/registry/sqlite", "internal/engine"},
		"github.com/moby/moby":     {"internal/backend/docker", "internal/backend/docker/dockertest"},
		"github.com/pressly/goose": {"internal/registry/postgres", "internal/registry/sqlite"},
	}
	for pkg, deps := range imports(t) {
		for _, d := range deps {
			for prefix, ok := range owners {
				if strings.HasPrefix(d, prefix) {
					require.True(t, slices.Contains(ok, pkg), "%s imports %s", pkg, d)
				}
			}
		}
	}
}

// TestAPIKnowsNoConcreteStoreOrBackend keeps the HTTP layer (the API and
// the dashboard) on interfaces.
func TestAPIKnowsNoConcreteStoreOrBackend(t *testing.T) {
	pkgs := imports(t)
	for _, pkg := range []string{"internal/api", "internal/ui"} {
		for _, d := range internalImports(pkgs[pkg]) {
			require.NotContains(t, []string{"internal/registry/postgres", "internal/registry/sqlite"}, d, "%s imports %s", pkg, d)
			require.False(t, strings.HasPrefix(d, "internal/backend"), "%s imports %s", pkg, d)
		}
	}
}

// TestClientModuleStandsAlone: the Go client is a module of its own that
// products import; it must need nothing but the standard library (its tests
// included), and the orchestrator must build against the copy in ./client
// so the two never drift.
func TestClientModuleStandsAlone(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "-test", "-f", `{{if not .Standard}}{{.ImportPath}}{{end}}`, "./...")
	cmd.Dir = "../../client"
	out, err := cmd.Output()
	require.NoError(t, err, "go list in client/")
	for _, p := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		// The client package itself and its test variants (client_test,
		// client.test) are the only non-standard packages allowed.
		require.True(t, strings.HasPrefix(p, module+"/client"),
			"the client module imports %s: it may use only the standard library", p)
	}

	cmd = exec.Command("go", "list", "-m", "all")
	cmd.Dir = "../../client"
	out, err = cmd.Output()
	require.NoError(t, err, "go list -m all in client/")
	require.Equal(t, []string{module + "/client"}, strings.Fields(string(out)), "the client module requires no other module")

	out, err = exec.Command("go", "list", "-m", "-f", "{{with .Replace}}{{.Path}}{{end}}", module+"/client").Output()
	require.NoError(t, err, "go list -m client")
	require.Equal(t, "./client", strings.TrimSpace(string(out)), "the orchestrator builds against ./client")
}

// TestKubernetesClientStaysInItsPackages: client-go and the Kubernetes API
// types are named only by the kubernetes backend and the test API server
// helpers (and their subpackages); helm only by tests. The orchestrator's
// other packages stay free of them, as of the Docker client.
func TestKubernetesClientStaysInItsPackages(t *testing.T) {
	owners := []string{"internal/backend/kubernetes", "internal/kubetest"}
	for pkg, deps := range imports(t) {
		for _, d := range deps {
			require.False(t, strings.HasPrefix(d, "helm.sh/"), "%s imports %s: helm is for the chart's tests only", pkg, d)
			if !strings.HasPrefix(d, "k8s.io/") && !strings.HasPrefix(d, "sigs.k8s.io/") {
				continue
			}
			ok := strings.HasPrefix(pkg, "cmd/")
			for _, o := range owners {
				ok = ok || pkg == o || strings.HasPrefix(pkg, o+"/")
			}
			require.True(t, ok, "%s imports %s: only the kubernetes backend and kubetest may", pkg, d)
		}
	}
}
