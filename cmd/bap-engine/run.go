package main

import (
	"context"
	"io"

	"github.com/spf13/cobra"
)

// run executes the command line args with the environment getenv, writing
// normal output to stdout. It returns when the command is done or ctx ends.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	root := &cobra.Command{
		Use:           "bap-engine",
		Short:         "Orchestrator of per-user engines: provision, admit, heal, audit",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetArgs(args)
	root.AddCommand(
		devCmd(getenv, stdout),
		serveCmd(getenv, stdout),
		migrateCmd(getenv, stdout),
		keygenCmd(stdout),
		rekeyCmd(getenv, stdout),
		engineCmd(getenv, stdout),
		snapshotCmd(),
	)
	root.AddCommand(clientCmds(getenv, stdout, root.ErrOrStderr())...)
	return root.ExecuteContext(ctx)
}
