package subprocess

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Files in an engine's data dir.
const (
	specFileName  = "spec.json"
	pidFileName   = "engine.pid"
	logFileName   = "engine.log"
	brainFileName = "brain.sqlite"
	// maxLogBytes: past this size the log is rotated (once) at start.
	maxLogBytes = 10 << 20
)

// specFile is what Create records; its presence makes the instance exist.
type specFile struct {
	EngineID   string            `json:"engine_id"`
	ProductID  string            `json:"product_id"`
	Deployment string            `json:"deployment"`
	Image      string            `json:"image,omitempty"`
	Port       int               `json:"port"`
	KeyHash    string            `json:"key_hash"`
	MemoryMB   int               `json:"memory_mb,omitempty"`
	CPUs       float64           `json:"cpus,omitempty"`
	Labels     map[string]string `json:"labels"`
	CreatedAt  time.Time         `json:"created_at"`
}

// sameAs reports whether other describes the same instance (created_at and
// labels derive from the rest).
func (s specFile) sameAs(other specFile) bool {
	return s.EngineID == other.EngineID && s.ProductID == other.ProductID &&
		s.Deployment == other.Deployment && s.Image == other.Image &&
		s.Port == other.Port && s.KeyHash == other.KeyHash &&
		s.MemoryMB == other.MemoryMB && s.CPUs == other.CPUs
}

// pidFile records the engine's current or last process.
type pidFile struct {
	Pid        int        `json:"pid"`
	StartTicks uint64     `json:"start_ticks"`
	StartedAt  time.Time  `json:"started_at"`
	Exited     bool       `json:"exited,omitempty"`
	ExitCode   int        `json:"exit_code,omitempty"`
	ExitedAt   *time.Time `json:"exited_at,omitempty"`
}

// readJSON decodes path into v; a missing file is fs.ErrNotExist.
func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	return nil
}

// writeJSON replaces path atomically (temp file, fsync, rename), mode 0600.
func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, werr := f.Write(append(data, '\n'))
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp, path)
	}
	if werr != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, werr)
	}
	return nil
}

// removeIfExists deletes path; a missing file is fine.
func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// openLog opens the engine's log for appending, rotating it once when it
// has grown past maxLogBytes.
func openLog(dir string) (*os.File, error) {
	path := filepath.Join(dir, logFileName)
	if info, err := os.Stat(path); err == nil && info.Size() > maxLogBytes {
		if err := os.Rename(path, path+".1"); err != nil {
			return nil, fmt.Errorf("rotate %s: %w", path, err)
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open engine log: %w", err)
	}
	return f, nil
}
