package subprocess

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/september/bap-engine/internal/backend"
)

// dir is the engine's data dir.
func (b *Backend) dir(engineID string) string { return filepath.Join(b.cfg.DataRoot, engineID) }

// lock takes the engine's operation lock and returns its release: an
// in-process mutex, then an exclusive flock on the engine's data dir (when
// it exists), which serializes operations of several orchestrator
// processes sharing DataRoot and reveals any overlap (OnOverlap).
func (b *Backend) lock(engineID, op string) func() {
	b.mu.Lock()
	l := b.locks[engineID]
	if l == nil {
		l = &engineLock{}
		b.locks[engineID] = l
	}
	l.refs++
	b.mu.Unlock()
	l.mu.Lock()
	dirLock := b.lockDir(engineID, op)
	return func() {
		dirLock()
		l.mu.Unlock()
		b.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(b.locks, engineID)
		}
		b.mu.Unlock()
	}
}

// overlapWait bounds how long an operation waits for another process's
// operation on the same engine before going ahead anyway.
const overlapWait = 2 * time.Minute

// lockDir flocks the engine's data dir exclusively, waiting (bounded) when
// another process holds it, and returns the release. No dir: nothing to
// serialize.
func (b *Backend) lockDir(engineID, op string) func() {
	f, err := os.Open(b.dir(engineID))
	if err != nil {
		return func() {}
	}
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		if b.cfg.OnOverlap != nil {
			b.cfg.OnOverlap(engineID, op)
		}
		deadline := time.Now().Add(overlapWait)
		for errors.Is(err, syscall.EWOULDBLOCK) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
			err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		}
	}
	return func() {
		if err == nil {
			_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		}
		_ = f.Close()
	}
}

func validID(engineID string) error {
	if !engineIDPattern.MatchString(engineID) {
		return fmt.Errorf("%w %q", errInvalidID, engineID)
	}
	return nil
}

// readSpec loads the engine's spec; no spec is backend.ErrNotFound.
func (b *Backend) readSpec(engineID string) (specFile, error) {
	var s specFile
	if err := readJSON(filepath.Join(b.dir(engineID), specFileName), &s); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return specFile{}, fmt.Errorf("engine %s: %w", engineID, backend.ErrNotFound)
		}
		return specFile{}, fmt.Errorf("engine %s: %w", engineID, err)
	}
	return s, nil
}

// fileMu is the mutex ordering the engine's pid file writes.
func (b *Backend) fileMu(engineID string) *sync.Mutex {
	h := fnv.New32a()
	_, _ = h.Write([]byte(engineID))
	return &b.fileMus[h.Sum32()%uint32(len(b.fileMus))]
}
