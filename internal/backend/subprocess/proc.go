package subprocess

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/september/bap-engine/internal/backend"
)

// procStat is what the backend reads from /proc/<pid>/stat.
type procStat struct {
	// state is field 3: R, S, D, T (stopped), Z (zombie), ...
	state byte
	// startTicks is field 22: the start time after boot in clock ticks. With
	// the pid it identifies one process for the machine's uptime.
	startTicks uint64
}

// readProcStat parses /proc/<pid>/stat. The command name (field 2) may hold
// spaces and parentheses, so fields are counted after the last ')'.
func readProcStat(pid int) (procStat, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	fields := bytes.Fields(data[i+1:])
	// fields[0] is field 3 (state); field 22 is fields[19].
	if len(fields) < 20 || len(fields[0]) != 1 {
		return procStat{}, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	ticks, err := strconv.ParseUint(string(fields[19]), 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("malformed start time in /proc/%d/stat: %w", pid, err)
	}
	return procStat{state: fields[0][0], startTicks: ticks}, nil
}

// environHas reports whether the process's initial environment holds kv
// exactly ("NAME=value").
func environHas(pid int, kv string) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return false
	}
	for _, entry := range bytes.Split(data, []byte{0}) {
		if string(entry) == kv {
			return true
		}
	}
	return false
}

// isEngine reports whether pid is alive (not a zombie), started at
// startTicks and carries BAP_ENGINE_ID=engineID: the identity that keeps a
// recycled pid from being adopted.
func isEngine(pid int, startTicks uint64, engineID string) bool {
	if pid <= 0 {
		return false
	}
	st, err := readProcStat(pid)
	if err != nil || st.state == 'Z' || st.state == 'X' || st.startTicks != startTicks {
		return false
	}
	return environHas(pid, envEngineID+"="+engineID)
}

// proc is one engine process the backend knows: a child it spawned, or a
// process it adopted after a restart.
type proc struct {
	engineID   string
	pid        int
	startTicks uint64
	// child: spawned by this Backend and reaped by its goroutine. An adopted
	// process cannot be waited on and is polled instead.
	child bool
	// expected is set before the backend itself stops the process, so its
	// exit is not reported as a crash.
	expected atomic.Bool
	// done is closed once the process is known to be gone; exitCode is set
	// before.
	done     chan struct{}
	doneOnce sync.Once
	exitCode int
	// report publishes an exit nobody asked for.
	report func(...backend.Event)
}

func newProc(engineID string, pid int, startTicks uint64, child bool, report func(...backend.Event)) *proc {
	return &proc{engineID: engineID, pid: pid, startTicks: startTicks, child: child, done: make(chan struct{}), report: report}
}

// finish records the exit once; the first call reports it unless the
// backend itself stopped the process.
func (p *proc) finish(code int) {
	first := false
	p.doneOnce.Do(func() {
		p.exitCode = code
		close(p.done)
		first = true
	})
	if first && !p.expected.Load() {
		p.report(backend.Event{EngineID: p.engineID, ExitCode: code, At: time.Now().UTC()})
	}
}

// exited reports whether the process is known to be gone.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// alive checks the process without waiting. For an adopted process it
// re-verifies the identity, so a pid recycled since adoption reads as gone.
func (p *proc) alive() bool {
	if p.exited() {
		return false
	}
	if p.child {
		return true
	}
	if isEngine(p.pid, p.startTicks, p.engineID) {
		return true
	}
	p.finish(-1)
	return false
}

// paused reports whether the process is stopped by a signal (state T).
func (p *proc) paused() bool {
	st, err := readProcStat(p.pid)
	return err == nil && st.state == 'T'
}

// signalGroup sends sig to the process's group (the engine runs as a group
// leader, so pgid == pid). A group already gone is not an error.
func (p *proc) signalGroup(sig syscall.Signal) error {
	if err := syscall.Kill(-p.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %v to engine %s (pid %d): %w", sig, p.engineID, p.pid, err)
	}
	return nil
}

// waitState polls /proc until the process's paused state is want or d ends.
func (p *proc) waitState(want bool, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if !p.alive() {
			return false
		}
		if p.paused() == want {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// exitCodeOf turns a wait status into a shell-style code: the exit status, or
// 128+signal when the process was killed by a signal.
func exitCodeOf(ps *os.ProcessState) int {
	if ps == nil {
		return -1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// engineProcs finds, by their environment, the live processes of engines
// under dataRoot: the ones the pid files may not name, because the
// orchestrator that spawned them died before it could record them. It maps
// engine ids to pids.
func engineProcs(dataRoot string) map[string][]int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	prefix := []byte(envDBPath + "=" + dataRoot + "/")
	idKey := []byte(envEngineID + "=")
	out := map[string][]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil || !bytes.Contains(data, prefix) {
			continue
		}
		for _, entry := range bytes.Split(data, []byte{0}) {
			if id, ok := bytes.CutPrefix(entry, idKey); ok {
				out[string(id)] = append(out[string(id)], pid)
				break
			}
		}
	}
	return out
}
