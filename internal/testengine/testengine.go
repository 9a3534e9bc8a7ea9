// Package testengine hands tests an engine command that starts fast: the
// reference engine built alone (internal/engine/standalone), once per test
// binary, into the test's temporary directory (which testmain removes with
// the run).
//
// A test binary can stand in for the engine itself (its TestMain calling
// engine.Main), but then every engine start loads the whole test binary:
// with the race detector and the orchestrator's dependencies that is well
// over a second and tens of megabytes per engine, which dominates tests
// that start hundreds of engines. The standalone binary is the same engine.
package testengine

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

const pkg = "github.com/september/bap-engine/internal/engine/standalone"

var (
	once  sync.Once
	built string
	err   error
)

// Path is the standalone engine's binary, built on first use; a build
// failure fails tb.
func Path(tb testing.TB) string {
	tb.Helper()
	once.Do(func() { built, err = build() })
	if err != nil {
		tb.Fatal(err)
	}
	return built
}

func build() (string, error) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		goCmd = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	dir, err := os.MkdirTemp("", "testengine-")
	if err != nil {
		return "", fmt.Errorf("testengine: %w", err)
	}
	bin := filepath.Join(dir, "engine")
	// A plain build (no -race from GOFLAGS): the engine is not what the
	// tests look for races in, and it starts several times faster.
	cmd := exec.Command(goCmd, "build", "-o", bin, pkg)
	cmd.Env = append(os.Environ(), "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("testengine: go build %s: %w\n%s", pkg, err, out)
	}
	return bin, nil
}
