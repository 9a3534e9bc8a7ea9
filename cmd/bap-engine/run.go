package main

import (
	"context"
	"fmt"
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
		Version:       currentBuild().String(),
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetOut(stdout)
	root.SetArgs(args)
	root.AddCommand(
		devCmd(getenv, stdout),
		serveCmd(getenv, stdout),
		migrateCmd(getenv, stdout),
		keygenCmd(stdout),
		rekeyCmd(getenv, stdout),
		engineCmd(getenv, stdout),
		versionCmd(stdout),
		snapshotCmd(),
		probeCmd(stdout),
	)
	root.AddCommand(clientCmds(getenv, stdout, root.ErrOrStderr())...)
	refuseUnknownSubcommands(root)
	return root.ExecuteContext(ctx)
}

// refuseUnknownSubcommands makes every command group (a command with
// subcommands and nothing to run itself) fail on an unknown subcommand, as
// the root does, instead of printing its help and exiting 0. Without
// arguments it still prints its help.
func refuseUnknownSubcommands(cmd *cobra.Command) {
	for _, c := range cmd.Commands() {
		refuseUnknownSubcommands(c)
	}
	if !cmd.HasSubCommands() || cmd.Runnable() || !cmd.HasParent() {
		return
	}
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if len(args) > 0 {
			return fmt.Errorf("unknown command %q for %q\nRun '%s --help' for usage", args[0], c.CommandPath(), c.CommandPath())
		}
		return c.Help()
	}
}
