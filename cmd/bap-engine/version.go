package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Build stamps, set at build time by the Makefile and the Dockerfile:
//
//	go build -ldflags "-X main.version=v1.2.3 -X main.commit=$(git rev-parse HEAD)"
//
// A plain `go build` or `go run` leaves version "dev"; commit then falls
// back to the VCS revision Go records in the binary, if any.
var (
	version = "dev"
	commit  = ""
)

// buildInfo is what `bap-engine version`, --version, GET /version and the
// bap_engine_build_info metric report.
type buildInfo struct {
	Version string `json:"version"`
	Commit  string `json:"commit"`
	Go      string `json:"go"`
}

func currentBuild() buildInfo {
	b := buildInfo{Version: version, Commit: commit, Go: runtime.Version()}
	if b.Commit == "" {
		if info, ok := debug.ReadBuildInfo(); ok {
			for _, s := range info.Settings {
				if s.Key == "vcs.revision" {
					b.Commit = s.Value
				}
			}
		}
	}
	if b.Commit == "" {
		b.Commit = "unknown"
	}
	return b
}

func (b buildInfo) String() string {
	return fmt.Sprintf("bap-engine %s (commit %s, %s)", b.Version, b.Commit, b.Go)
}

func versionCmd(stdout io.Writer) *cobra.Command {
	out := &printer{w: stdout}
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print this binary's version, commit and Go version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b := currentBuild()
			if done, err := out.structured(b); done {
				return err
			}
			_, err := fmt.Fprintln(stdout, b.String())
			return err
		},
	}
	out.registerFlags(cmd.Flags())
	return cmd
}
