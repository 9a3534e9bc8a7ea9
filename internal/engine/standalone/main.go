// Command standalone is the reference engine with nothing else linked in:
// the engine `bap-engine engine` serves, in a binary a tenth the size of
// the orchestrator's that starts in milliseconds instead of paying for the
// orchestrator's drivers and clients at every start. Tests that start many
// engines run it (internal/testengine builds it, and the test engine image
// holds it); products and the dev mode run `bap-engine engine`.
//
// It answers the two commands engines and their helpers are run with:
//
//	standalone [engine]           the reference engine (SPEC §3)
//	standalone snapshot FROM TO   the brain snapshot helper (SPEC §16)
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/engine"
)

func main() {
	args := os.Args[1:]
	switch {
	case len(args) == 0, len(args) == 1 && args[0] == "engine":
		engine.Main()
	case len(args) == 3 && args[0] == "snapshot":
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		err := backend.CopyData(ctx, args[1], args[2], nil)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, "usage: standalone [engine] | standalone snapshot FROM TO")
		os.Exit(2)
	}
}
