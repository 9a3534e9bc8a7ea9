package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/september/bap-engine/client"
)

// cliFlags are the options every client command shares. Each setting comes
// from its flag, else its variable (BAP_URL, BAP_PLATFORM_KEY,
// BAP_ADMIN_KEY), else the context `bap-engine login` saved.
type cliFlags struct {
	url         string
	platformKey string
	adminKey    string
	getenv      func(string) string
	out         *printer
}

// defaultURL is the orchestrator without flag, variable or login context.
const defaultURL = "http://127.0.0.1:8000"

// register gives a command group the shared flags (--url, keys, -o/--json)
// and checks the output format before any of its commands calls the API.
func (f *cliFlags) register(cmd *cobra.Command, getenv func(string) string) {
	f.getenv = getenv
	fs := cmd.PersistentFlags()
	fs.StringVar(&f.url, "url", "", "orchestrator URL (default: BAP_URL, else the login context, else "+defaultURL+")")
	fs.StringVar(&f.platformKey, "platform-key", "", "product key (default: BAP_PLATFORM_KEY, else the login context)")
	fs.StringVar(&f.adminKey, "admin-key", "", "admin key (default: BAP_ADMIN_KEY, else the login context)")
	f.out.registerFlags(fs)
	cmd.PersistentPreRunE = func(*cobra.Command, []string) error {
		_, err := f.out.mode()
		return err
	}
}

// resolve is the URL and keys to use: flag, else variable, else the login
// context (whose keys count only for its own URL).
func (f *cliFlags) resolve() (url, platformKey, adminKey string, err error) {
	ctx, err := loadContext(f.getenv)
	if err != nil {
		return "", "", "", err
	}
	url = strings.TrimRight(firstNonEmpty(f.url, f.getenv("BAP_URL"), ctx.URL, defaultURL), "/")
	if strings.TrimRight(ctx.URL, "/") != url {
		ctx = cliContext{}
	}
	return url, firstNonEmpty(f.platformKey, f.getenv("BAP_PLATFORM_KEY"), ctx.PlatformKey),
		firstNonEmpty(f.adminKey, f.getenv("BAP_ADMIN_KEY"), ctx.AdminKey), nil
}

func (f *cliFlags) client() *client.Client {
	url, pk, ak, err := f.resolve()
	if err != nil {
		// An unreadable context file is reported, not silently ignored.
		fmt.Fprintln(os.Stderr, "bap-engine:", err)
	}
	return client.New(url, client.WithPlatformKey(pk), client.WithAdminKey(ak))
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
		Use:   "policy PRODUCT POLICY_JSON",
		Short: "Replace a product's policy (PRODUCT: its slug or id)",
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
	productsLs := &cobra.Command{
		Use:   "ls",
		Short: "List products with their engines by state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			list, err := f.client().Products(cmd.Context())
			if err != nil {
				return err
			}
			rows := [][]string{{"SLUG", "PRODUCT ID", "NAME", "ENGINES", "RUNNING", "FAILED", "CREATED", "POLICY"}}
			for _, p := range list.Products {
				total := 0
				for _, n := range p.EnginesByStatus {
					total += n
				}
				pol, _ := json.Marshal(p.Policy)
				rows = append(rows, []string{p.Slug, p.ProductID, p.DisplayName, strconv.Itoa(total),
					strconv.Itoa(p.EnginesByStatus[client.StateRunning]), strconv.Itoa(p.EnginesByStatus[client.StateFailed]),
					fmtTime(&p.CreatedAt), string(pol)})
			}
			return out.wideTable(list, rows, 7, fmt.Sprintf("%d products", list.Total))
		},
	}
	productsGet := &cobra.Command{
		Use:   "get PRODUCT",
		Short: "Show one product (by slug or id) with its engines by state",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := f.client().Product(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return out.value(p)
		},
	}
	products.AddCommand(register, policy, productsLs, productsGet)

	engines := &cobra.Command{Use: "engines", Short: "Manage the product's engines (BAP_PLATFORM_KEY)"}
	f.register(engines, getenv)
	var lsStatus string
	var lsLimit, lsOffset int
	var lsWatch bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List engines (-w: keep watching, print again on every change)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return watch(cmd.Context(), lsWatch, stdout, func(ctx context.Context, out *printer) error {
				page, err := f.client().List(ctx, client.ListOptions{Status: lsStatus, Limit: lsLimit, Offset: lsOffset})
				if err != nil {
					return err
				}
				rows := [][]string{{"USER", "STATUS", "URL", "VERSION", "CREATED", "LAST HEALTH", "ENGINE ID"}}
				for _, e := range page.Engines {
					rows = append(rows, []string{e.UserID, e.Status, e.URL, e.EngineVersion, fmtTime(&e.CreatedAt), fmtTime(e.LastHealthAt), e.EngineID})
				}
				return out.wideTable(page, rows, 6, fmt.Sprintf("%d of %d engines", len(page.Engines), page.Total))
			}, f.out)
		},
	}
	ls.Flags().StringVar(&lsStatus, "status", "", "only engines in this state")
	ls.Flags().IntVar(&lsLimit, "limit", 100, "page size (max 1000)")
	ls.Flags().IntVar(&lsOffset, "offset", 0, "page offset")
	ls.Flags().BoolVarP(&lsWatch, "watch", "w", false, "keep watching: print again whenever the list changes (until Ctrl-C)")
	var getWatch bool
	get := &cobra.Command{
		Use:   "get USER_ID",
		Short: "Show one engine, with its key (-w: keep watching)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return watch(cmd.Context(), getWatch, stdout, func(ctx context.Context, out *printer) error {
				e, err := f.client().Get(ctx, args[0])
				if err != nil {
					return err
				}
				return out.value(e)
			}, f.out)
		},
	}
	get.Flags().BoolVarP(&getWatch, "watch", "w", false, "keep watching: print again whenever the engine changes (until Ctrl-C)")
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
	var yes bool
	destroy := userCmd("destroy", "Destroy an engine and its data (asks first on a terminal; --yes elsewhere)", func(ctx context.Context, c *client.Client, user string) (any, error) {
		return c.Destroy(ctx, user)
	}, f, out, stderr, "destroying the engine and its data")
	destroy.Flags().BoolVarP(&yes, "yes", "y", false, "destroy without asking (required when stdin is not a terminal)")
	destroy.PreRunE = func(cmd *cobra.Command, args []string) error {
		return confirm(cmd.InOrStdin(), stderr, yes,
			fmt.Sprintf("Destroy the engine of %s and its brain? This cannot be undone. Type the user id to confirm: ", args[0]), args[0])
	}
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
	var logTail int
	var logFollow bool
	logsCmd := &cobra.Command{
		Use:   "logs USER_ID",
		Short: "Print an engine's own output (-f: keep following it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tail := logTail
			if tail == 0 {
				tail = -1 // everything kept
			}
			rc, err := f.client().Logs(cmd.Context(), args[0], client.LogOptions{Tail: tail, Follow: logFollow})
			if err != nil {
				return err
			}
			defer rc.Close()
			_, err = io.Copy(stdout, rc)
			if cmd.Context().Err() != nil {
				return nil // Ctrl-C ends a followed log
			}
			return err
		},
	}
	logsCmd.Flags().IntVar(&logTail, "tail", 200, "how many of the last lines (0: everything kept)")
	logsCmd.Flags().BoolVarP(&logFollow, "follow", "f", false, "keep printing what the engine writes (until Ctrl-C)")
	engines.AddCommand(ls, get, provision, admit, start, stop, destroy, rotate, auditCmd, logsCmd, upgradeCmd(f, out, stderr))

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
	fleet := &cobra.Command{Use: "fleet", Short: "Engines of every product (BAP_ADMIN_KEY)"}
	f.register(fleet, getenv)
	var fo client.FleetOptions
	fleetLs := &cobra.Command{
		Use:   "ls",
		Short: "List the engines of every product, filtered by product, state and user",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			page, err := f.client().FleetEngines(cmd.Context(), fo)
			if err != nil {
				return err
			}
			rows := [][]string{{"PRODUCT", "USER", "STATUS", "URL", "VERSION", "FAILURES", "RESTARTS", "CREATED", "LAST HEALTH", "ENGINE ID"}}
			for _, e := range page.Engines {
				rows = append(rows, []string{e.ProductSlug, e.UserID, e.Status, e.URL, e.EngineVersion,
					strconv.Itoa(e.HealthFailures), strconv.Itoa(e.RestartCount), fmtTime(&e.CreatedAt), fmtTime(e.LastHealthAt), e.EngineID})
			}
			return out.wideTable(page, rows, 5, fmt.Sprintf("%d of %d engines", len(page.Engines), page.Total))
		},
	}
	fleetLs.Flags().StringVar(&fo.Product, "product", "", "only this product's engines (slug or id)")
	fleetLs.Flags().StringVar(&fo.Status, "status", "", "only engines in this state")
	fleetLs.Flags().StringVar(&fo.UserID, "user", "", "only user ids containing this (case-insensitive)")
	fleetLs.Flags().IntVar(&fo.Limit, "limit", 100, "page size (max 1000)")
	fleetLs.Flags().IntVar(&fo.Offset, "offset", 0, "page offset")
	fleet.AddCommand(fleetLs)
	return []*cobra.Command{products, engines, status, replicas, fleet, rolloutsCmd(getenv, f, out), loginCmd(getenv, stdout, f)}
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
