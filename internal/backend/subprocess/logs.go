package subprocess

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/september/bap-engine/internal/backend"
)

// logPoll is how often a followed log file is checked for new output.
const logPoll = 200 * time.Millisecond

// Logs returns the engine's log file (its stdout and stderr as written
// since the file was last rotated): the last opts.Tail lines, then, with
// Follow, what the engine writes next, across a rotation, until ctx ends.
// ErrNotFound when the engine has no data directory.
func (b *Backend) Logs(ctx context.Context, engineID string, opts backend.LogOptions) (io.ReadCloser, error) {
	if err := validID(engineID); err != nil {
		return nil, fmt.Errorf("%w: %w", backend.ErrNotFound, err)
	}
	dir := b.dir(engineID)
	if _, err := os.Stat(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("logs of engine %s: %w", engineID, backend.ErrNotFound)
		}
		return nil, fmt.Errorf("logs of engine %s: %w", engineID, err)
	}
	path := filepath.Join(dir, logFileName)
	f, err := os.Open(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("open log of engine %s: %w", engineID, err)
	}
	if f != nil {
		info, err := f.Stat()
		if err == nil {
			var off int64
			if off, err = tailOffset(f, info.Size(), opts.Tail); err == nil {
				_, err = f.Seek(off, io.SeekStart)
			}
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("read log of engine %s: %w", engineID, err)
		}
	}
	if !opts.Follow {
		if f == nil {
			return io.NopCloser(eofReader{}), nil
		}
		return f, nil
	}
	pr, pw := io.Pipe()
	go follow(ctx, path, f, pw)
	return pr, nil
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// follow copies f to w from its offset, then whatever is appended, and
// moves to a new file at path when the engine's next start rotated the old
// one away. It ends when ctx does or w's reader is closed.
func follow(ctx context.Context, path string, f *os.File, w *io.PipeWriter) {
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	t := time.NewTicker(logPoll)
	defer t.Stop()
	for {
		if f != nil {
			if _, err := io.Copy(w, f); err != nil {
				w.CloseWithError(err)
				return
			}
		}
		select {
		case <-ctx.Done():
			w.Close()
			return
		case <-t.C:
		}
		next, err := os.Open(path)
		if err != nil {
			continue // rotated and not yet recreated, or never written
		}
		if f == nil {
			f = next
			continue
		}
		cur, err1 := f.Stat()
		now, err2 := next.Stat()
		switch {
		case err1 == nil && err2 == nil && !os.SameFile(cur, now):
			// Rotated: drain the old file, then read the new one from
			// its start.
			if _, err := io.Copy(w, f); err != nil {
				next.Close()
				w.CloseWithError(err)
				return
			}
			f.Close()
			f = next
		case err2 == nil:
			next.Close()
			if off, err := f.Seek(0, io.SeekCurrent); err == nil && now.Size() < off {
				_, _ = f.Seek(0, io.SeekStart) // truncated in place
			}
		default:
			next.Close()
		}
	}
}

// tailOffset is the offset of the first of the last n lines of f (size
// bytes); n <= 0 is the whole file. A final line without its newline
// counts as a line.
func tailOffset(f *os.File, size int64, n int) (int64, error) {
	if n <= 0 || size == 0 {
		return 0, nil
	}
	buf := make([]byte, 32<<10)
	lines := 0
	for pos := size; pos > 0; {
		chunk := min(int64(len(buf)), pos)
		pos -= chunk
		if _, err := f.ReadAt(buf[:chunk], pos); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		for i := chunk - 1; i >= 0; i-- {
			at := pos + i
			if buf[i] != '\n' || at == size-1 {
				continue
			}
			if lines++; lines == n {
				return at + 1, nil
			}
		}
	}
	return 0, nil
}

// Ping checks the data root is there and is a directory (readiness).
// ErrUnavailable.
func (b *Backend) Ping(context.Context) error {
	info, err := os.Stat(b.cfg.DataRoot)
	if err == nil && !info.IsDir() {
		err = errors.New("not a directory")
	}
	if err != nil {
		return fmt.Errorf("data root %s: %w: %w", b.cfg.DataRoot, backend.ErrUnavailable, err)
	}
	return nil
}
