package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"runtime/debug"
	"time"

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

// probeCmd GETs a URL and succeeds on a 2xx answer: a health check for
// images without a shell or curl (docker-compose.yml's healthcheck).
func probeCmd(stdout io.Writer) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "probe URL",
		Short: "GET URL and exit 0 on a 2xx answer (a container health check, e.g. http://127.0.0.1:8000/livez)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, args[0], nil)
			if err != nil {
				return err
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode/100 != 2 {
				return fmt.Errorf("%s answered %s", args[0], resp.Status)
			}
			_, err = fmt.Fprintln(stdout, resp.Status)
			return err
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 3*time.Second, "how long the answer may take")
	return cmd
}
