package testmain_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/testmain"
)

func TestMain(m *testing.M) { os.Exit(testmain.Run(m, testmain.Goroutines())) }

func TestTempDirIsInsideTheBinarysScratchDirectory(t *testing.T) {
	scratch := os.Getenv("TMPDIR")
	require.NotEmpty(t, scratch)
	assert.Contains(t, filepath.Base(scratch), "bap-test-")
	rel, err := filepath.Rel(scratch, t.TempDir())
	require.NoError(t, err)
	assert.NotContains(t, rel, "..")
}

// TestFindsProcessesByEnvironmentAndCommandLine starts processes that name
// a test directory only in their environment, only on their command line,
// or not at all, and one that inherits the test's environment.
func TestFindsProcessesByEnvironmentAndCommandLine(t *testing.T) {
	dir := t.TempDir()
	start := func(env []string, args ...string) *exec.Cmd {
		// sh stays the process (sleep is not its last command), with the
		// extra arguments on its command line.
		cmd := exec.Command("sh", append([]string{"-c", "sleep 60; true"}, args...)...)
		cmd.Env = env
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		require.NoError(t, cmd.Start())
		t.Cleanup(func() { killGroup(cmd); _ = cmd.Wait() })
		return cmd
	}
	byEnv := start([]string{"SQLITE_DB_PATH=" + filepath.Join(dir, "engine-1", "brain.db")})
	byArg := start([]string{}, filepath.Join(dir, "x"))
	inherits := start(nil)
	unrelated := start([]string{"SQLITE_DB_PATH=/elsewhere/brain.db"}, "elsewhere")

	pids := func(ps []testmain.Process) []int {
		var out []int
		for _, p := range ps {
			out = append(out, p.Pid)
		}
		return out
	}
	// The sleep each sh starts carries sh's environment, so a grandchild
	// is found too, once sh has forked it.
	var found []int
	require.Eventually(t, func() bool {
		found = pids(testmain.Naming(dir))
		return len(found) > 2
	}, 10*time.Second, 10*time.Millisecond, "sh's child names the directory through the environment it inherited")
	assert.Contains(t, found, byEnv.Process.Pid)
	assert.Contains(t, found, byArg.Process.Pid)
	assert.NotContains(t, found, inherits.Process.Pid, "the test's own TMPDIR is the scratch root, not this test's directory")
	assert.NotContains(t, found, unrelated.Process.Pid)
	assert.Contains(t, pids(testmain.Naming(os.Getenv("TMPDIR"))), inherits.Process.Pid, "a process with the test's environment names the scratch root")

	// Processes that exit within the grace are not left behind, and zombies
	// (nobody has waited for these yet) are not live.
	killGroup(byEnv)
	go func() { time.Sleep(100 * time.Millisecond); killGroup(byArg) }()
	assert.Empty(t, testmain.LeftBehind(dir, 5*time.Second))
}

func killGroup(cmd *exec.Cmd) { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
