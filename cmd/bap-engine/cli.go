package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/september/bap-engine/client"
)

// cliFlags are the options every client command shares.
type cliFlags struct {
	url         string
	platformKey string
	adminKey    string
	out         *printer
}

// register gives a command group the shared flags (--url, -o/--json) and
// checks the output format before any of its commands calls the API.
func (f *cliFlags) register(cmd *cobra.Command, getenv func(string) string) {
	cmd.PersistentFlags().StringVar(&f.url, "url", firstNonEmpty(getenv("BAP_URL"), "http://127.0.0.1:8000"), "orchestrator URL (BAP_URL)")
	f.out.registerFlags(cmd.PersistentFlags())
	cmd.PersistentPreRunE = func(*cobra.Command, []string) error {
		_, err := f.out.mode()
		return err
	}
	f.platformKey = getenv("BAP_PLATFORM_KEY")
	f.adminKey = getenv("BAP_ADMIN_KEY")
}

func (f *cliFlags) client() *client.Client {
	return client.New(f.url, client.WithPlatformKey(f.platformKey), client.WithAdminKey(f.adminKey))
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// clientCmds are the operator commands over the HTTP API.
func clientCmds(getenv func(string) string, stdout, stderr io.Writer) []*cobra.Command {
	out := &printer{w: stdout}
	f := &cliFlags{out: out}

	products := &cobra.Command{Use: "products", Short: "Register products and set their policies (BAP_ADMIN_KEY)"}
	f.register(products, getenv)
	var displayName, policyJSON string
	register := &cobra.Command{
		Use:   "register SLUG",
		Short: "Register a product and print its platform key (shown once)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pol, err := parsePolicyFlag(policyJSON)
			if err != nil {
				return err
			}
			p, err := f.client().RegisterProduct(cmd.Context(), client.ProductRequest{
				Slug: args[0], DisplayName: firstNonEmpty(displayName, args[0]), Policy: pol})
			if err != nil {
				return err
			}
			return out.kv(p, [][2]string{{"product_id", p.ProductID}, {"slug", p.Slug}, {"platform_api_key", p.PlatformAPIKey}})
		},
	}
	register.Flags().StringVar(&displayName, "display-name", "", "human-readable name (default: the slug)")
	register.Flags().StringVar(&policyJSON, "policy", "", `policy JSON, e.g. '{"max_engines": 100, "rate_limit_rpm": 600}'`)
	policy := &cobra.Command{
		Use:   "policy PRODUCT_ID POLICY_JSON",
		Short: "Replace a product's policy",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			pol, err := parsePolicyFlag(args[1])
			if err != nil {
				return err
			}
			got, err := f.client().UpdatePolicy(cmd.Context(), args[0], pol)
			if err != nil {
				return err
			}
			b, _ := json.Marshal(got)
			return out.kv(map[string]any{"policy": got}, [][2]string{{"policy", string(b)}})
		},
	}
	products.AddCommand(register, policy)

	engines := &cobra.Command{Use: "engines", Short: "Manage the product's engines (BAP_PLATFORM_KEY)"}
	f.register(engines, getenv)
	var lsStatus string
	var lsLimit, lsOffset int
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List engines",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			page, err := f.client().List(cmd.Context(), client.ListOptions{Status: lsStatus, Limit: lsLimit, Offset: lsOffset})
			if err != nil {
				return err
			}
			rows := [][]string{{"USER", "STATUS", "URL", "VERSION", "CREATED", "LAST HEALTH"}}
			for _, e := range page.Engines {
				rows = append(rows, []string{e.UserID, e.Status, e.URL, e.EngineVersion, fmtTime(&e.CreatedAt), fmtTime(e.LastHealthAt)})
			}
			return out.table(page, rows, fmt.Sprintf("%d of %d engines", len(page.Engines), page.Total))
		},
	}
	ls.Flags().StringVar(&lsStatus, "status", "", "only engines in this state")
	ls.Flags().IntVar(&lsLimit, "limit", 100, "page size (max 1000)")
	ls.Flags().IntVar(&lsOffset, "offset", 0, "page offset")
	get := userCmd("get", "Show one engine, with its key", func(ctx context.Context, c *client.Client, user string) (any, error) {
		return c.Get(ctx, user)
	}, f, out, nil, "")
	var version string
	provision := userCmd("provision", "Provision an engine and wait until it is healthy", func(ctx context.Context, c *client.Client, user string) (any, error) {
		return c.Provision(ctx, client.ProvisionRequest{UserID: user, EngineVersion: version})
	}, f, out, stderr, "creating the engine and waiting for its health")
	provision.Flags().StringVar(&version, "engine-version", "", "engine image (default: the orchestrator's ORCH_ENGINE_IMAGE)")
	var autoProvision, autoWake bool
	admit := userCmd("admit", "Admit a user: the engine URL and key, or why not", func(ctx context.Context, c *client.Client, user string) (any, error) {
		return c.Admit(ctx, user, client.AdmitOptions{AutoProvision: autoProvision, AutoWake: autoWake})
	}, f, out, stderr, "admitting (provisioning or waking as asked)")
	admit.Flags().BoolVar(&autoProvision, "auto-provision", false, "provision an engine if the user has none")
	admit.Flags().BoolVar(&autoWake, "auto-wake", false, "wake a sleeping or stopped engine")
	start := userCmd("start", "Start a stopped, sleeping or failed engine", func(ctx context.Context, c *client.Client, user string) (any, error) {
		return c.Start(ctx, user)
	}, f, out, stderr, "starting and waiting for health")
	stop := userCmd("stop", "Stop an engine (its data is kept)", func(ctx context.Context, c *client.Client, user string) (any, error) {
		return c.Stop(ctx, user)
	}, f, out, stderr, "stopping (up to the 30 s grace)")
	destroy := userCmd("destroy", "Destroy an engine and its data", func(ctx context.Context, c *client.Client, user string) (any, error) {
		return c.Destroy(ctx, user)
	}, f, out, stderr, "destroying the engine and its data")
	rotate := userCmd("rotate-key", "Give an engine a new key (the old one stops working)", func(ctx context.Context, c *client.Client, user string) (any, error) {
		return c.RotateKey(ctx, user)
	}, f, out, stderr, "recreating with the new key and waiting for health")
	var auLimit, auOffset int
	auditCmd := &cobra.Command{
		Use:   "audit USER_ID",
		Short: "Show an engine's audit trail, newest first",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			page, err := f.client().Audit(cmd.Context(), args[0], client.AuditOptions{Limit: auLimit, Offset: auOffset})
			if err != nil {
				return err
			}
			rows := [][]string{{"TIME", "ACTION", "ACTOR", "DURATION", "METADATA"}}
			for _, e := range page.Entries {
				d := ""
				if e.DurationMS != nil {
					d = strconv.FormatInt(*e.DurationMS, 10) + "ms"
				}
				meta, _ := json.Marshal(e.Metadata)
				rows = append(rows, []string{fmtTime(&e.Timestamp), e.Action, e.Actor, d, string(meta)})
			}
			return out.table(page, rows, fmt.Sprintf("%d of %d entries", len(page.Entries), page.Total))
		},
	}
	auditCmd.Flags().IntVar(&auLimit, "limit", 50, "page size")
	auditCmd.Flags().IntVar(&auOffset, "offset", 0, "page offset")
	engines.AddCommand(ls, get, provision, admit, start, stop, destroy, rotate, auditCmd)

	status := &cobra.Command{
		Use:   "status",
		Short: "Show the product's fleet status and metrics (BAP_PLATFORM_KEY)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := f.client()
			st, err := c.Status(cmd.Context())
			if err != nil {
				return err
			}
			m, err := c.Metrics(cmd.Context())
			if err != nil {
				return err
			}
			pairs := [][2]string{{"health", st.Health}, {"total", strconv.Itoa(st.Total)}, {"unhealthy", strconv.Itoa(st.UnhealthyCount)}}
			for _, s := range []string{"provisioning", "running", "sleeping", "stopped", "failed", "destroying"} {
				if n := st.ByStatus[s]; n > 0 {
					pairs = append(pairs, [2]string{s, strconv.Itoa(n)})
				}
			}
			pairs = append(pairs,
				[2]string{"provisions_1h", strconv.Itoa(m.Provisions1h)},
				[2]string{"crashes_1h", strconv.Itoa(m.Crashes1h)},
				[2]string{"restarts_1h", strconv.Itoa(m.Restarts1h)},
				[2]string{"avg_boot_ms", strconv.FormatFloat(m.AvgBootMS, 'f', 0, 64)},
				[2]string{"total_provisions", strconv.Itoa(m.TotalProvisions)},
				[2]string{"total_destroys", strconv.Itoa(m.TotalDestroys)})
			return out.kv(map[string]any{"status": st, "metrics": m}, pairs)
		},
	}
	f.register(status, getenv)

	replicas := &cobra.Command{Use: "replicas", Short: "The orchestrator replicas sharing the database (BAP_ADMIN_KEY)"}
	f.register(replicas, getenv)
	replicas.AddCommand(&cobra.Command{
		Use:   "ls",
		Short: "List the replicas, their heartbeats and the shards each holds",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			list, err := f.client().Replicas(cmd.Context())
			if err != nil {
				return err
			}
			rows := [][]string{{"REPLICA", "HOST", "PID", "VERSION", "ALIVE", "SHARDS", "STARTED", "HEARTBEAT"}}
			alive := 0
			for _, r := range list.Replicas {
				state := "no"
				if r.Alive {
					state = "yes"
					alive++
				}
				rows = append(rows, []string{r.ReplicaID, r.Host, strconv.Itoa(r.Pid), r.Version, state,
					strconv.Itoa(r.Shards), fmtTime(&r.StartedAt), fmtTime(&r.HeartbeatAt)})
			}
			return out.table(list, rows, fmt.Sprintf("%d replicas, %d alive", len(list.Replicas), alive))
		},
	})
	return []*cobra.Command{products, engines, status, replicas}
}

// userCmd builds a command taking one USER_ID whose call may take long:
// when stderr is given, progress naming phase is shown there while it runs.
func userCmd(name, short string, call func(context.Context, *client.Client, string) (any, error), f *cliFlags, out *printer, stderr io.Writer, phase string) *cobra.Command {
	return &cobra.Command{
		Use:   name + " USER_ID",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := startProgress(stderr, name+" "+args[0], phase)
			v, err := call(cmd.Context(), f.client(), args[0])
			p.done(err)
			if err != nil {
				return err
			}
			return out.value(v)
		},
	}
}

func parsePolicyFlag(s string) (client.Policy, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var p client.Policy
	if err := json.Unmarshal([]byte(s), &p); err != nil {
		return nil, fmt.Errorf("policy must be a JSON object: %w", err)
	}
	return p, nil
}

func fmtTime(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// describeError renders an error for the terminal, with the API code when
// there is one.
func describeError(err error) string {
	var ce *client.Error
	if errors.As(err, &ce) {
		return fmt.Sprintf("%s (%d): %s", ce.Code, ce.Status, ce.Message)
	}
	return err.Error()
}
