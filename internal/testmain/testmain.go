// Package testmain is the TestMain of the module's test binaries: it runs a
// binary's tests in a scratch directory of their own, stops the PostgreSQL
// servers pgtest started for them, and fails the run when the tests leave a
// process or (if asked) a goroutine behind.
//
//	func TestMain(m *testing.M) { os.Exit(testmain.Run(m)) }
//
// Processes are traced by that directory: Run points TMPDIR at it, so every
// t.TempDir lies inside it, and every process started with a path there (an
// engine's data, an orchestrator's data root) or with the test's environment
// (which carries TMPDIR) names it in its environment or command line. That
// holds for processes started by processes the tests started, and for ones
// whose parent a test killed with SIGKILL.
package testmain

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/september/bap-engine/internal/pgtest"
)

// Option adjusts Run.
type Option func(*options)

type options struct {
	goroutines bool
	ignore     []goleak.Option
	after      []func() error
}

// After runs stop once the tests are done, before Run looks for processes
// left behind; an error fails the run. Test helpers that start servers of
// their own (kubetest.Stop) hook in here.
func After(stop func() error) Option {
	return func(o *options) { o.after = append(o.after, stop) }
}

// Goroutines makes Run fail when goroutines outlive the tests, apart from
// pgtest's own and the ones ignore names.
func Goroutines(ignore ...goleak.Option) Option {
	return func(o *options) {
		o.goroutines = true
		o.ignore = append(o.ignore, ignore...)
	}
}

// IdleHTTP ignores the read and write loops of idle keep-alive client
// connections, which wind down on their own timers.
func IdleHTTP() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
	}
}

// exitGrace is how long a process the tests killed may take to be gone
// before it counts as left behind.
const exitGrace = 5 * time.Second

// Run runs m's tests and returns the exit code for os.Exit.
func Run(m *testing.M, opts ...Option) int {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	dir, err := os.MkdirTemp("", "bap-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "testmain: scratch directory:", err)
		return 1
	}
	// Symlinks in TMPDIR would make paths the processes see differ from it.
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	prev, hadPrev := os.LookupEnv("TMPDIR")
	_ = os.Setenv("TMPDIR", dir)

	code := pgtest.Main(m)
	for _, stop := range o.after {
		if err := stop(); err != nil {
			fmt.Fprintln(os.Stderr, "testmain:", err)
			code = 1
		}
	}

	if left := LeftBehind(dir, exitGrace); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "testmain: %d process(es) the tests started are still running; killed now:\n", len(left))
		for _, p := range left {
			fmt.Fprintf(os.Stderr, "  pid %d: %s\n", p.Pid, p.Command)
			_ = syscall.Kill(p.Pid, syscall.SIGKILL)
		}
		code = 1
	}
	if hadPrev {
		_ = os.Setenv("TMPDIR", prev)
	} else {
		_ = os.Unsetenv("TMPDIR")
	}
	_ = os.RemoveAll(dir)

	if o.goroutines && code == 0 {
		if err := goleak.Find(append(pgtest.GoleakOptions(), o.ignore...)...); err != nil {
			fmt.Fprintln(os.Stderr, "testmain: goroutines left behind:", err)
			code = 1
		}
	}
	return code
}

// Process is a running process.
type Process struct {
	Pid     int
	Command string
}

// LeftBehind returns the live processes, other than this one, whose
// environment or command line names dir, after waiting up to grace for
// them to exit.
func LeftBehind(dir string, grace time.Duration) []Process {
	deadline := time.Now().Add(grace)
	for {
		left := Naming(dir)
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Naming returns the live processes, other than this one, whose environment
// or command line names dir (zombies are not live: they have exited and only
// wait for their parent to collect them).
func Naming(dir string) []Process {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	needle := []byte(dir)
	var out []Process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || zombie(pid) {
			continue
		}
		base := filepath.Join("/proc", e.Name())
		env, _ := os.ReadFile(filepath.Join(base, "environ"))
		cmd, _ := os.ReadFile(filepath.Join(base, "cmdline"))
		if !bytes.Contains(env, needle) && !bytes.Contains(cmd, needle) {
			continue
		}
		out = append(out, Process{Pid: pid, Command: strings.TrimSpace(string(bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})))})
	}
	slices.SortFunc(out, func(a, b Process) int { return a.Pid - b.Pid })
	return out
}

func zombie(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true // gone
	}
	// The state follows the command name, which is in parentheses and may
	// itself contain spaces or parentheses.
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' || stat[i+2] == 'X'
}
