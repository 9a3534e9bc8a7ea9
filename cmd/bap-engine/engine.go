package main

import (
	"io"

	"github.com/spf13/cobra"

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
