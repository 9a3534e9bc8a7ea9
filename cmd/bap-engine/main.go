// Command bap-engine is the orchestrator, its reference engine and its
// operator CLI in one binary. main is thin: everything happens in run, which
// the end-to-end tests call directly.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bap-engine:", describeError(err))
		os.Exit(1)
	}
}
