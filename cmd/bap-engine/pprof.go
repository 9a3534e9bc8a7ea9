package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"time"
)

// Block and mutex profiling rates while ORCH_PPROF_ADDR is set: a blocking
// event of 10 µs or more is sampled, and one mutex contention in 10.
const (
	blockProfileRateNS   = 10_000
	mutexProfileFraction = 10
)

// servePprof serves Go's profiles on ln (ORCH_PPROF_ADDR, which the
// configuration checks is loopback) until ctx ends, with block and mutex
// profiling on, so an operator can see where time goes (`go tool pprof
// http://addr/debug/pprof/block`). A failure is logged: profiles are never
// worth stopping the orchestrator for.
func servePprof(ctx context.Context, ln net.Listener, log *slog.Logger) {
	runtime.SetBlockProfileRate(blockProfileRateNS)
	runtime.SetMutexProfileFraction(mutexProfileFraction)
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Info("profiles served", "addr", "http://"+ln.Addr().String()+"/debug/pprof/")
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(shut)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		log.Warn("profiles no longer served", "err", err)
	}
}
