package sqlite

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// ErrServedElsewhere is returned by ClaimServing when another process
// serves the same database file.
var ErrServedElsewhere = errors.New("another bap-engine process serves this SQLite database " +
	"(SQLite allows one orchestrator per file: stop the other one, give this one its own " +
	"ORCH_DATABASE_URL, or use PostgreSQL to run several)")

// ClaimServing makes this Store the only orchestrator on its file until it
// is closed. An orchestrator trusts its in-memory view of running engines
// (the admit cache) because it hears of every change to them, and with
// SQLite it hears only of its own: a second orchestrator writing to the
// same file would leave the first one admitting stopped or re-keyed engines.
// The claim is an exclusive lock on <path>.lock, which the kernel drops
// when the process ends however it ends; the file names the holder's pid.
// It fails at once with ErrServedElsewhere when another process holds it.
func (s *Store) ClaimServing() error {
	if s.tx != nil || s.path == "" {
		return errors.New("sqlite: ClaimServing needs the Store Open returned")
	}
	if s.claim != nil {
		return nil
	}
	name := s.path + ".lock"
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("claim sqlite %s: %w", s.path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := ""
		if b, rerr := os.ReadFile(name); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
				holder = fmt.Sprintf(" (pid %d)", pid)
			}
		}
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("claim sqlite %s%s: %w", s.path, holder, ErrServedElsewhere)
		}
		return fmt.Errorf("claim sqlite %s: lock %s: %w", s.path, name, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	s.claim = f
	return nil
}
