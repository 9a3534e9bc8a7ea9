package docker

import (
	"context"
	"io"
	"strconv"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/client"

	"github.com/september/bap-engine/internal/backend"
)

// Logs returns the engine container's logs (stdout and stderr, demultiplexed
// from Docker's stream in the order written): the last opts.Tail lines,
// and with Follow what it writes next until ctx ends. The container's log
// is the engine's since its container was created; a recreated container
// (rotate-key, upgrade) starts a new one. ErrNotFound, ErrUnavailable.
func (b *Backend) Logs(ctx context.Context, engineID string, opts backend.LogOptions) (io.ReadCloser, error) {
	name := ContainerName(engineID)
	tail := "all"
	if opts.Tail > 0 {
		tail = strconv.Itoa(opts.Tail)
	}
	// The call's own timeout would cut the stream it opens: the daemon's
	// answer is bounded by the caller's ctx instead, and only the wait for
	// its headers by CallTimeout.
	lctx, cancel := context.WithCancel(ctx)
	timer := time.AfterFunc(b.cfg.CallTimeout, cancel)
	rc, err := b.cli.ContainerLogs(lctx, name, client.ContainerLogsOptions{
		ShowStdout: true, ShowStderr: true, Tail: tail, Follow: opts.Follow,
	})
	if !timer.Stop() && err == nil {
		rc.Close()
		err = context.DeadlineExceeded // the answer came as the call timed out
	}
	if err != nil {
		cancel()
		return nil, wrap(err, "logs of container %s", name)
	}
	pr, pw := io.Pipe()
	go func() {
		defer cancel()
		defer rc.Close()
		_, err := stdcopy.StdCopy(pw, pw, rc)
		if lctx.Err() != nil {
			err = nil // the caller left: a normal end of a followed log
		}
		pw.CloseWithError(err)
	}()
	return readCloser{pr, func() error { cancel(); return pr.Close() }}, nil
}

// readCloser is a reader whose Close also ends the stream behind it.
type readCloser struct {
	io.Reader
	close func() error
}

func (r readCloser) Close() error { return r.close() }

// Ping checks the Docker daemon answers (readiness). ErrUnavailable.
func (b *Backend) Ping(ctx context.Context) error {
	cctx, cancel := b.call(ctx)
	defer cancel()
	_, err := b.cli.Ping(cctx, client.PingOptions{})
	return wrap(err, "ping docker daemon at %s", b.cli.DaemonHost())
}
