package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/september/bap-engine/client"
)

// upgradePhases are the upgrade's phases as the API shows them
// (operation.phase) and as the progress line names them.
var upgradePhases = map[string]string{
	"snapshotting":       "snapshotting the brain",
	"creating":           "creating the engine on the new version",
	"waiting_for_health": "waiting for health",
	"rolling_back":       "rolling back to the old version",
}

// upgradeCmd is `engines upgrade USER_ID --engine-version V`: the upgrade
// runs in one request; meanwhile the engine is polled and the progress line
// follows its phase.
func upgradeCmd(f *cliFlags, out *printer, stderr io.Writer) *cobra.Command {
	var version string
	cmd := &cobra.Command{
		Use:   "upgrade USER_ID",
		Short: "Move an engine to another version on the same brain, key and URL (snapshot first, rolled back if it does not come up)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if strings.TrimSpace(version) == "" {
				return fmt.Errorf("--engine-version is required")
			}
			c := f.client()
			p := startProgress(stderr, "upgrade "+args[0], "starting")
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			watched := make(chan struct{})
			go func() {
				defer close(watched)
				for {
					if e, err := c.Get(ctx, args[0]); err == nil && e.Operation != nil && e.Operation.Op == "upgrade" {
						if name := upgradePhases[e.Operation.Phase]; name != "" {
							p.phase(name)
						}
					}
					select {
					case <-ctx.Done():
						return
					case <-time.After(100 * time.Millisecond):
					}
				}
			}()
			res, err := c.Upgrade(cmd.Context(), args[0], version)
			cancel()
			<-watched
			p.done(err)
			if err != nil {
				return err
			}
			return out.kv(res, [][2]string{{"user_id", res.UserID}, {"status", res.Status},
				{"engine_version", res.EngineVersion}, {"previous_version", res.PreviousVersion}, {"url", res.URL}})
		},
	}
	cmd.Flags().StringVar(&version, "engine-version", "", "the version (image) to move to (required)")
	return cmd
}

// rolloutsCmd is the `rollouts` group (admin key).
func rolloutsCmd(getenv func(string) string, f *cliFlags, out *printer) *cobra.Command {
	group := &cobra.Command{Use: "rollouts", Short: "Canary and fleet upgrades of a product's engines (BAP_ADMIN_KEY)"}
	f.register(group, getenv)
	show := func(ro client.Rollout) error {
		return out.kv(ro, [][2]string{
			{"rollout_id", ro.RolloutID}, {"engine_version", ro.EngineVersion}, {"state", ro.State},
			{"percent", strconv.Itoa(ro.Percent)}, {"max_parallel", strconv.Itoa(ro.MaxParallel)},
			{"max_failures", strconv.Itoa(ro.MaxFailures)}, {"reason", firstNonEmpty(ro.Reason, "-")},
			{"counts", countsText(ro.Counts)}, {"created_at", fmtTime(&ro.CreatedAt)}, {"updated_at", fmtTime(&ro.UpdatedAt)},
		})
	}
	var req client.RolloutRequest
	create := &cobra.Command{
		Use:   "create PRODUCT",
		Short: "Upgrade percent of the product's engines (id or slug) to --engine-version, max-parallel at a time",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ro, err := f.client().CreateRollout(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			return show(ro)
		},
	}
	create.Flags().StringVar(&req.EngineVersion, "engine-version", "", "the version (image) to move engines to")
	create.Flags().IntVar(&req.Percent, "percent", 0, "share of the product's engines, 1-100 (raise it later with `rollouts raise`)")
	create.Flags().IntVar(&req.MaxParallel, "max-parallel", 0, "upgrades at a time (default 2)")
	create.Flags().IntVar(&req.MaxFailures, "max-failures", 0, "rolled-back upgrades before the rollout pauses itself (default 1)")
	ls := &cobra.Command{
		Use:   "ls PRODUCT",
		Short: "List the product's rollouts, newest first",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			list, err := f.client().Rollouts(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			rows := [][]string{{"ROLLOUT", "VERSION", "STATE", "PERCENT", "COUNTS", "CREATED", "REASON"}}
			for _, ro := range list.Rollouts {
				rows = append(rows, []string{ro.RolloutID, ro.EngineVersion, ro.State, strconv.Itoa(ro.Percent) + "%",
					countsText(ro.Counts), fmtTime(&ro.CreatedAt), firstNonEmpty(ro.Reason, "-")})
			}
			return out.wideTable(list, rows, 6, fmt.Sprintf("%d rollouts", list.Total))
		},
	}
	get := &cobra.Command{
		Use:   "get PRODUCT ROLLOUT_ID",
		Short: "Show one rollout and its counts",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ro, err := f.client().Rollout(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			return show(ro)
		},
	}
	raise := &cobra.Command{
		Use:   "raise PRODUCT ROLLOUT_ID PERCENT",
		Short: "Raise a rollout's percent (the same engines come first; never lower)",
		Args:  cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := strconv.Atoi(strings.TrimSuffix(args[2], "%"))
			if err != nil {
				return fmt.Errorf("PERCENT must be a whole number: %q", args[2])
			}
			ro, err := f.client().RaiseRollout(cmd.Context(), args[0], args[1], n)
			if err != nil {
				return err
			}
			return show(ro)
		},
	}
	group.AddCommand(create, ls, get, raise)
	for _, a := range []struct{ name, short string }{
		{"pause", "Stop starting upgrades (those in flight finish)"},
		{"resume", "Run a paused rollout again"},
		{"abort", "End a rollout for good (nothing is undone)"},
	} {
		group.AddCommand(&cobra.Command{
			Use:   a.name + " PRODUCT ROLLOUT_ID",
			Short: a.short,
			Args:  cobra.ExactArgs(2),
			RunE: func(cmd *cobra.Command, args []string) error {
				ro, err := f.client().RolloutAction(cmd.Context(), args[0], args[1], a.name)
				if err != nil {
					return err
				}
				return show(ro)
			},
		})
	}
	return group
}

func countsText(c client.RolloutCounts) string {
	return fmt.Sprintf("%d upgraded, %d pending, %d rolled back, %d skipped", c.Upgraded, c.Pending, c.RolledBack, c.Skipped)
}
