package pdeath_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/pdeath"
)

func TestStartedChildIsAliveUntilKilled(t *testing.T) {
	defer pdeath.Stop()
	var cmds []*exec.Cmd
	for range 3 { // several starts share the one thread
		cmd := exec.Command("sleep", "30")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		require.NoError(t, pdeath.Start(cmd))
		cmds = append(cmds, cmd)
	}
	for _, cmd := range cmds {
		pid := cmd.Process.Pid
		require.True(t, pdeath.Alive(pid))
		require.NoError(t, cmd.Process.Kill())
		_ = cmd.Wait()
		require.Eventually(t, func() bool { return !pdeath.Alive(pid) }, 5*time.Second, 10*time.Millisecond)
	}
	require.False(t, pdeath.Alive(0))
	require.Error(t, pdeath.Start(exec.Command("/nonexistent/binary")))
}

func TestOrphanedDirectories(t *testing.T) {
	base := t.TempDir()
	mk := func(name, owner string) string {
		dir := filepath.Join(base, name)
		require.NoError(t, os.Mkdir(dir, 0o755))
		if owner != "" {
			require.NoError(t, os.WriteFile(filepath.Join(dir, "owner"), []byte(owner), 0o644))
		}
		return dir
	}
	mine := mk("x-mine", strconv.Itoa(os.Getpid()))
	gone := mk("x-gone", "999999999")
	young := mk("x-young", "")
	old := mk("x-old", "")
	past := time.Now().Add(-2 * time.Minute)
	require.NoError(t, os.Chtimes(old, past, past))
	mk("y-other", "999999999")
	got := pdeath.Orphaned(base, "x-")
	require.ElementsMatch(t, []string{gone, old}, got)
	require.NotContains(t, got, mine)
	require.NotContains(t, got, young)
}
