package main

import (
	"io"

	"github.com/spf13/cobra"

	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/engine"
)

func engineCmd(getenv func(string) string, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "engine",
		Short: "Run the reference engine (honours the engine contract: PORT, ENGINE_KEY_HASH, SQLITE_DB_PATH)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return engine.Run(cmd.Context(), getenv, stdout)
		},
	}
}

// snapshotCmd is what the docker backend's helper container runs (SPEC
// §16): it makes TO's data the same as FROM's, the brain files of an
// engine's volume and of its snapshot volume.
func snapshotCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "snapshot FROM TO",
		Short:  "Copy an engine's data directory onto another (the brain snapshot helper)",
		Args:   cobra.ExactArgs(2),
		Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return backend.CopyData(cmd.Context(), args[0], args[1], nil)
		},
	}
}
