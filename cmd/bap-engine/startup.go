package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/config"
	"github.com/september/bap-engine/internal/registry"
)

// Backoff of the waits for the database and the engine backend at start:
// the first retry after startRetryMin, doubling up to startRetryMax.
const (
	startRetryMin = 500 * time.Millisecond
	startRetryMax = 15 * time.Second
)

// frontDoor is the HTTP server of serve and dev, listening from the start
// of the process: while the orchestrator waits for its dependencies it
// answers with api.Starting (/livez 200, /readyz 503), then with the API.
type frontDoor struct {
	srv     *http.Server
	handler atomic.Pointer[http.Handler]
	served  chan error
}

// openFrontDoor serves h on ln until use swaps in another handler.
func openFrontDoor(cfg config.Config, ln net.Listener, log *slog.Logger, h http.Handler) *frontDoor {
	d := &frontDoor{served: make(chan error, 1)}
	d.handler.Store(&h)
	d.srv = newHTTPServer(cfg, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		(*d.handler.Load()).ServeHTTP(w, r)
	}), log)
	go func() { d.served <- d.srv.Serve(limitConns(ln, cfg)) }()
	return d
}

// use makes h answer every request from now on.
func (d *frontDoor) use(h http.Handler) { d.handler.Store(&h) }

// close shuts the server down at once (serve failed to start).
func (d *frontDoor) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = d.srv.Shutdown(ctx)
}

// startup is what serve is waiting for, for api.Starting to tell.
type startup struct {
	waiting atomic.Pointer[bap.Error]
}

func newStartup() *startup {
	s := &startup{}
	s.set(bap.Errorf(bap.CodeDatabaseUnavailable, "connecting to the database."))
	return s
}

func (s *startup) set(e *bap.Error) { s.waiting.Store(e) }

// err is the current reason, for api.Starting.
func (s *startup) err() error { return s.waiting.Load() }

// handler is the api.Starting handler reporting s.
func (s *startup) handler() http.Handler { return api.Starting(apiBuild(), s.err) }

// apiBuild is this build as the api shows it.
func apiBuild() api.BuildInfo {
	b := currentBuild()
	return api.BuildInfo{Version: b.Version, Commit: b.Commit, Go: b.Go}
}

// transient reports whether err is one that waiting can cure: the database
// or the daemon cannot be reached (yet).
func transient(err error) bool {
	var netErr net.Error
	return errors.Is(err, registry.ErrUnavailable) || errors.Is(err, backend.ErrUnavailable) ||
		errors.Is(err, context.DeadlineExceeded) || errors.As(err, &netErr)
}

// await calls open until it succeeds, fails for a reason waiting cannot
// cure, or ctx ends, waiting with a bounded backoff between attempts and
// logging why. While it waits, st says so with code (the answer of
// /readyz), without the error's text, which may name hosts and users.
func await[T any](ctx context.Context, log *slog.Logger, st *startup, what, code string, open func(context.Context) (T, error)) (T, error) {
	delay := startRetryMin
	for attempt := 1; ; attempt++ {
		v, err := open(ctx)
		if err == nil {
			if attempt > 1 {
				log.Info(what+" reachable; starting", "attempts", attempt)
			}
			return v, nil
		}
		if !transient(err) || ctx.Err() != nil {
			return v, err
		}
		if st == nil {
			return v, err
		}
		st.set(bap.Errorf(code, "waiting for the %s (attempt %d).", what, attempt))
		log.Warn("waiting for the "+what, "err", err, "attempt", attempt, "retry_in", delay.String())
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return v, ctx.Err()
		case <-t.C:
		}
		delay = min(2*delay, startRetryMax)
	}
}
