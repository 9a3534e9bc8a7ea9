// Package pdeath starts the helper servers of tests (PostgreSQL, etcd,
// kube-apiserver) so that they die with the test binary, however it ends.
//
// Such a child gets Pdeathsig (a signal when its parent goes), but Linux
// sends it when the *thread* that started the child exits, not the process:
// a goroutine's thread may end at any time. Start therefore runs every
// cmd.Start on one OS thread locked for the purpose, which lives until Stop.
// Orphaned finds the scratch directories of test binaries that are gone;
// ScratchDir removes them and makes a new one.
package pdeath

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
)

var (
	mu sync.Mutex
	ch chan func()
)

// loop runs start requests on its locked thread until c is closed.
func loop(c <-chan func()) {
	runtime.LockOSThread() // never unlocked: the thread ends with the loop
	for f := range c {
		f()
	}
}

// Start starts cmd from the long-lived thread. Set
// cmd.SysProcAttr.Pdeathsig yourself: this only makes it hold.
func Start(cmd *exec.Cmd) error {
	mu.Lock()
	defer mu.Unlock()
	if ch == nil {
		ch = make(chan func())
		go loop(ch)
	}
	done := make(chan error)
	ch <- func() { done <- cmd.Start() }
	return <-done
}

// Stop ends the thread; call it only when no child started by Start runs
// any more (their Pdeathsig would fire). Test helpers leave the thread to
// the end of the process instead, since several share it.
func Stop() {
	mu.Lock()
	defer mu.Unlock()
	if ch != nil {
		close(ch)
		ch = nil
	}
}

// Alive reports whether a process with pid exists (possibly someone
// else's).
func Alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// Orphaned returns the directories base/prefix* whose owning test binary is
// gone: the pid in their "owner" file is not alive, or they have none and
// are over a minute old (a younger one may be being made right now).
func Orphaned(base, prefix string) []string {
	dirs, _ := filepath.Glob(filepath.Join(base, prefix+"*"))
	var out []string
	for _, dir := range dirs {
		owner, err := os.ReadFile(filepath.Join(dir, "owner"))
		if err != nil {
			if fi, err := os.Stat(dir); err != nil || time.Since(fi.ModTime()) < time.Minute {
				continue
			}
		} else if pid, err := strconv.Atoi(string(owner)); err == nil && Alive(pid) {
			continue
		}
		out = append(out, dir)
	}
	return out
}

// RemoveOrphaned deletes the Orphaned directories base/prefix*; stop, when
// not nil, is called on each first to end what may still run from it.
func RemoveOrphaned(base, prefix string, stop func(dir string)) {
	for _, dir := range Orphaned(base, prefix) {
		if stop != nil {
			stop(dir)
		}
		_ = os.RemoveAll(dir)
	}
}

// ScratchDir makes a new directory prefix* for a test helper's data, in
// memory (/dev/shm) where there is one, else in the temporary directory,
// after removing the orphaned ones there (RemoveOrphaned with stop).
func ScratchDir(prefix string, stop func(dir string)) (string, error) {
	base := "/dev/shm"
	if fi, err := os.Stat(base); err != nil || !fi.IsDir() {
		base = os.TempDir()
	}
	RemoveOrphaned(base, prefix, stop)
	return os.MkdirTemp(base, prefix)
}
