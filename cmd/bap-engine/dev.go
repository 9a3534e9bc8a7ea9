package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/config"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/secret"
)

// devDir is where dev mode keeps everything, relative to the working
// directory.
const devDir = ".bap-engine"

// Keys of dev.env besides the ORCH_* variables it pins.
const demoKeyVar = "BAP_DEMO_PLATFORM_KEY"

func devCmd(getenv func(string) string, stdout io.Writer) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a zero-configuration orchestrator: SQLite, subprocess engines, generated keys, a demo product",
		Long: "dev keeps its state in ./.bap-engine/ (database, engine data, and dev.env with the\n" +
			"generated keys, mode 0600). ORCH_* variables in the environment override its defaults.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDev(cmd.Context(), dir, getenv, stdout, cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&dir, "dir", devDir, "state directory")
	return cmd
}

func runDev(ctx context.Context, dir string, getenv func(string) string, stdout, stderr io.Writer) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("dev directory %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return fmt.Errorf("create dev directory: %w", err)
	}
	envPath := filepath.Join(abs, "dev.env")
	kept, err := loadDevEnv(envPath)
	if err != nil {
		return err
	}
	defaults := map[string]string{
		"ORCH_DATABASE_URL":   "sqlite:///" + strings.TrimPrefix(filepath.Join(abs, "bap-engine.db"), "/"),
		"ORCH_ENGINE_BACKEND": config.BackendSubprocess,
		"ORCH_DATA_ROOT":      filepath.Join(abs, "engine-data"),
		"ORCH_LISTEN_ADDR":    "127.0.0.1:8000",
		"ORCH_LOG_FORMAT":     config.LogFormatText,
		"ORCH_DEPLOYMENT_ID":  "dev",
	}
	if kept["ORCH_MASTER_KEY"] == "" {
		if kept["ORCH_MASTER_KEY"], err = secret.NewFernetKey(); err != nil {
			return err
		}
	}
	if kept["ORCH_ADMIN_KEY"] == "" {
		k, err := secret.NewPlatformKey()
		if err != nil {
			return err
		}
		kept["ORCH_ADMIN_KEY"] = "adm-" + strings.TrimPrefix(k, "pk-sept-")
	}
	devGetenv := func(name string) string {
		if v := getenv(name); v != "" {
			return v
		}
		if v, ok := kept[name]; ok {
			return v
		}
		return defaults[name]
	}
	cfg, err := config.LoadServe(devGetenv)
	if err != nil {
		return fmt.Errorf("configuration:\n%w", err)
	}
	log := newLogger(cfg, stderr)
	srv, err := newServer(ctx, cfg, devGetenv, log, nil)
	if err != nil {
		return err
	}
	defer srv.close()

	demoKey, err := ensureDemoProduct(ctx, srv.store, kept[demoKeyVar])
	if err != nil {
		return err
	}
	kept[demoKeyVar] = demoKey
	if err := saveDevEnv(envPath, kept); err != nil {
		return err
	}

	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("ORCH_LISTEN_ADDR %s: %w (another bap-engine dev running? set ORCH_LISTEN_ADDR=127.0.0.1:8001)", cfg.ListenAddr, err)
	}
	base := "http://" + displayAddr(ln.Addr())
	// The CLI's variables, as one line to paste and as lines of dev.env, so
	// that `. .bap-engine/dev.env` sets the CLI up too.
	cliEnv := fmt.Sprintf("export BAP_URL=%s BAP_PLATFORM_KEY=%s BAP_ADMIN_KEY=%s", base, demoKey, kept["ORCH_ADMIN_KEY"])
	if err := saveDevEnv(envPath, kept, cliEnv); err != nil {
		ln.Close()
		return err
	}
	banner := fmt.Sprintf(`bap-engine dev is running at %s
  dashboard:    %s/ui/ (sign in with the admin key, or the demo platform key)
  state:        %s (keys in dev.env, mode 0600)
  admin key:    %s
  demo product: demo, platform key %s

Use the CLI (or run: . %s):
  %s

Try:
  curl -s %s/health
  curl -s -X POST %s/engines/alice/admit -H 'X-Platform-Key: %s' -H 'Content-Type: application/json' -d '{"auto_provision": true, "auto_wake": true}'
  curl -s %s/status -H 'X-Platform-Key: %s'

Stop with Ctrl-C (engines keep running and are adopted on the next start).
`, base, base, abs, kept["ORCH_ADMIN_KEY"], demoKey, filepath.Join(dir, "dev.env"), cliEnv, base, base, demoKey, base, demoKey)
	return srv.serve(ctx, openFrontDoor(cfg, ln, log, newStartup().handler()), func() { fmt.Fprint(stdout, banner) })
}

// ensureDemoProduct registers the demo product on first run and returns its
// platform key. A kept key that no longer matches (the database was reset)
// gets a fresh key for the demo product.
func ensureDemoProduct(ctx context.Context, store registry.Store, kept string) (string, error) {
	if kept != "" {
		if _, err := store.GetProductByKeyHash(ctx, secret.Hash(kept), bap.Now()); err == nil {
			return kept, nil
		} else if !errors.Is(err, registry.ErrNotFound) {
			return "", fmt.Errorf("look up demo product: %w", err)
		}
	}
	key, err := secret.NewPlatformKey()
	if err != nil {
		return "", err
	}
	products, err := store.ListProducts(ctx)
	if err != nil {
		return "", fmt.Errorf("list products: %w", err)
	}
	for _, p := range products {
		if p.Slug == "demo" {
			err := store.RotateProductKey(ctx, p.ID, secret.Hash(key), bap.Now(), audit.Entry{
				ProductID: p.ID, Action: audit.PlatformKeyRotated, Actor: audit.ActorAdmin,
				Metadata: map[string]any{"reason": "dev key reset"},
			})
			if err != nil {
				return "", fmt.Errorf("reset demo key: %w", err)
			}
			return key, nil
		}
	}
	policy, _ := bap.ParsePolicy(nil)
	p := bap.Product{
		ID: uuid.NewString(), Slug: "demo", DisplayName: "Demo product",
		APIKeyHash: secret.Hash(key), Policy: policy, CreatedAt: bap.Now(),
	}
	err = store.CreateProduct(ctx, p, audit.Entry{
		ProductID: p.ID, Action: audit.PolicyRegister, Actor: audit.ActorAdmin,
		Metadata: map[string]any{"slug": p.Slug, "policy": map[string]any{}},
	})
	if err != nil {
		return "", fmt.Errorf("register demo product: %w", err)
	}
	return key, nil
}

func displayAddr(a net.Addr) string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	if tcp.IP.IsUnspecified() {
		return fmt.Sprintf("127.0.0.1:%d", tcp.Port)
	}
	return tcp.String()
}

// loadDevEnv reads KEY=value lines; a missing file is empty.
func loadDevEnv(path string) (map[string]string, error) {
	out := map[string]string{}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "export ") {
			continue // export lines are the CLI's, derived again on every start
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s line %d: expected KEY=value", path, n)
		}
		out[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return out, nil
}

// saveDevEnv writes the kept values with mode 0600, then the extra lines
// (the CLI's export line).
func saveDevEnv(path string, kv map[string]string, extra ...string) error {
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("# Generated by `bap-engine dev` on first run. Secrets: keep this file private.\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s\n", k, kv[k])
	}
	for _, line := range extra {
		b.WriteString(line + "\n")
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
