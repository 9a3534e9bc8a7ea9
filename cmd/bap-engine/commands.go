package main

import (
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/spf13/cobra"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/config"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/secret"
)

func serveCmd(getenv func(string) string, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "serve",
		Short: "Run the orchestrator in production: everything from ORCH_* variables",
		Long: "Run the orchestrator in production. It is configured only by environment\n" +
			"variables; ORCH_DATABASE_URL, ORCH_MASTER_KEY and ORCH_ADMIN_KEY are required.\n\n" +
			"Environment:\n" + config.Text(80),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadServe(getenv)
			if err != nil {
				return fmt.Errorf("configuration:\n%w", err)
			}
			log := newLogger(cfg, cmd.ErrOrStderr())
			if cfg.WeakAdminKey() {
				log.Warn("ORCH_ADMIN_KEY is short; use at least 16 random characters (e.g. openssl rand -hex 32)")
			}
			// Listen first: /livez answers while the database and the
			// engine backend are waited for, and /readyz says which.
			ln, err := net.Listen("tcp", cfg.ListenAddr)
			if err != nil {
				return fmt.Errorf("ORCH_LISTEN_ADDR %s: %w", cfg.ListenAddr, err)
			}
			st := newStartup()
			door := openFrontDoor(cfg, ln, log, st.handler())
			srv, err := newServer(cmd.Context(), cfg, getenv, log, st)
			if err != nil {
				door.close()
				if cmd.Context().Err() != nil {
					return nil // stopped while waiting
				}
				return err
			}
			defer srv.close()
			return srv.serve(cmd.Context(), door, func() {
				fmt.Fprintf(stdout, "bap-engine listening on http://%s\n", displayAddr(ln.Addr()))
			})
		},
	}
}

func migrateCmd(getenv func(string) string, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Apply the registry's database migrations (serve and dev also do it at start-up)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(getenv)
			if err != nil {
				return fmt.Errorf("configuration:\n%w", err)
			}
			if cfg.DatabaseURL == "" {
				return errors.New("ORCH_DATABASE_URL: required (postgresql://… or sqlite:///path.db)")
			}
			store, err := openStore(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			defer store.Close()
			fmt.Fprintf(stdout, "migrations applied (%s)\n", cfg.DatabaseDriver)
			return nil
		},
	}
}

func keygenCmd(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "keygen",
		Short: "Print a new Fernet key for ORCH_MASTER_KEY",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := secret.NewFernetKey()
			if err != nil {
				return err
			}
			fmt.Fprintln(stdout, k)
			return nil
		},
	}
}

func rekeyCmd(getenv func(string) string, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "rekey",
		Short: "Re-encrypt every engine key under the first key of ORCH_MASTER_KEY",
		Long: "Put the new Fernet key first in ORCH_MASTER_KEY and keep the old ones after it,\n" +
			"run rekey, then drop the old keys.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg, err := config.Load(getenv)
			if err != nil {
				return fmt.Errorf("configuration:\n%w", err)
			}
			if cfg.DatabaseURL == "" {
				return errors.New("ORCH_DATABASE_URL: required")
			}
			sealer, err := secret.NewSealer(cfg.MasterKey)
			if err != nil {
				return fmt.Errorf("ORCH_MASTER_KEY: %w", err)
			}
			store, err := openStore(ctx, cfg)
			if err != nil {
				return err
			}
			defer store.Close()
			engines, err := store.EnginesByStatus(ctx, bap.States...)
			if err != nil {
				return fmt.Errorf("list engines: %w", err)
			}
			var changed, failed int
			for _, e := range engines {
				err := store.InTx(ctx, func(tx registry.Store) error {
					cur, err := tx.LockEngine(ctx, e.ID)
					if err != nil {
						return err
					}
					token, ok, err := sealer.Rotate(cur.KeyEnc)
					if err != nil || !ok {
						return err
					}
					cur.KeyEnc = token
					changed++
					return tx.UpdateEngine(ctx, cur)
				})
				if err != nil {
					failed++
					fmt.Fprintf(cmd.ErrOrStderr(), "engine %s: %v\n", e.ID, err)
				}
			}
			fmt.Fprintf(stdout, "rekey: %d engines, %d re-encrypted, %d failed\n", len(engines), changed, failed)
			if failed > 0 {
				return fmt.Errorf("%d engine keys could not be re-encrypted (is every old key still in ORCH_MASTER_KEY?)", failed)
			}
			return nil
		},
	}
}
