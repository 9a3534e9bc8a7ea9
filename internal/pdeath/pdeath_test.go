package pdeath_test

import (
	"os/exec"
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
