package backendtest

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/september/bap-engine/internal/backend"
)

// MethodLogs names Logs for Fake's call counters and error knobs.
const MethodLogs = "Logs"

// fakeLogs is what the Fake's engines "print": one line per start, stop and
// crash, kept per engine from Create to Destroy (Remove keeps them, as a
// recreated container's log is the engine's log).
type fakeLogs struct {
	mu    sync.Mutex
	lines map[string][]string
	// grew is closed (and replaced) whenever an engine's log grows.
	grew map[string]chan struct{}
}

func (l *fakeLogs) init(engineID string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lines == nil {
		l.lines, l.grew = map[string][]string{}, map[string]chan struct{}{}
	}
	if _, ok := l.lines[engineID]; !ok {
		l.lines[engineID] = []string{}
		l.grew[engineID] = make(chan struct{})
	}
}

func (l *fakeLogs) printf(engineID, format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.lines[engineID]; !ok {
		return
	}
	l.lines[engineID] = append(l.lines[engineID], fmt.Sprintf(format, args...))
	close(l.grew[engineID])
	l.grew[engineID] = make(chan struct{})
}

func (l *fakeLogs) drop(engineID string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ch, ok := l.grew[engineID]; ok {
		close(ch)
		delete(l.grew, engineID)
		delete(l.lines, engineID)
	}
}

// from returns the lines from index i on, the index after them, and a
// channel closed when more arrive; ok is false once the log is gone.
func (l *fakeLogs) from(engineID string, i int) (lines []string, next int, grew <-chan struct{}, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	all, ok := l.lines[engineID]
	if !ok {
		return nil, i, nil, false
	}
	if i < len(all) {
		lines = append(lines, all[i:]...)
	}
	return lines, len(all), l.grew[engineID], true
}

// Printf adds a line to the engine's log, as if the engine printed it.
func (f *Fake) Printf(engineID, format string, args ...any) {
	f.logs.printf(engineID, format, args...)
}

// Logs returns the engine's lines (the last opts.Tail), following new ones
// until ctx ends when opts.Follow. ErrNotFound for an engine never created
// or destroyed.
func (f *Fake) Logs(ctx context.Context, engineID string, opts backend.LogOptions) (io.ReadCloser, error) {
	f.mu.Lock()
	err := f.enter(MethodLogs)
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	lines, next, grew, ok := f.logs.from(engineID, 0)
	if !ok {
		return nil, fmt.Errorf("logs %s: %w", engineID, backend.ErrNotFound)
	}
	if opts.Tail > 0 && len(lines) > opts.Tail {
		lines = lines[len(lines)-opts.Tail:]
	}
	first := joinLines(lines)
	if !opts.Follow {
		return io.NopCloser(strings.NewReader(first)), nil
	}
	pr, pw := io.Pipe()
	go func() {
		if _, err := io.WriteString(pw, first); err != nil {
			return
		}
		for {
			select {
			case <-ctx.Done():
				pw.Close()
				return
			case <-grew:
			}
			var more []string
			more, next, grew, ok = f.logs.from(engineID, next)
			if _, err := io.WriteString(pw, joinLines(more)); err != nil {
				return
			}
			if !ok {
				pw.Close()
				return
			}
		}
	}()
	return pr, nil
}

func joinLines(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	return strings.Join(lines, "\n") + "\n"
}
