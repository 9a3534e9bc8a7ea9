package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/backend/docker"
	"github.com/september/bap-engine/internal/backend/kubernetes"
	"github.com/september/bap-engine/internal/backend/subprocess"
	"github.com/september/bap-engine/internal/config"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/postgres"
	"github.com/september/bap-engine/internal/registry/sqlite"
	"github.com/september/bap-engine/internal/replica"
	"github.com/september/bap-engine/internal/requestid"
)

// newLogger builds the slog logger ORCH_LOG_LEVEL and ORCH_LOG_FORMAT ask for.
func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	// requestid.Handler adds the request id of the work a line belongs to
	// (an API request's, or a health restart's) to lines logged with its
	// context.
	if cfg.LogFormat == config.LogFormatText {
		return slog.New(requestid.Handler(slog.NewTextHandler(w, opts)))
	}
	return slog.New(requestid.Handler(slog.NewJSONHandler(w, opts)))
}

// openStore opens (and migrates) the registry ORCH_DATABASE_URL names.
func openStore(ctx context.Context, cfg config.Config) (registry.Store, error) {
	switch cfg.DatabaseDriver {
	case config.DriverPostgres:
		s, err := postgres.Open(ctx, cfg.DatabaseURL)
		if err != nil {
			return nil, fmt.Errorf("open PostgreSQL registry: %w", err)
		}
		return s, nil
	case config.DriverSQLite:
		s, err := sqlite.Open(ctx, cfg.SQLitePath)
		if err != nil {
			return nil, fmt.Errorf("open SQLite registry %s: %w", cfg.SQLitePath, err)
		}
		return s, nil
	default:
		return nil, errors.New("ORCH_DATABASE_URL: not set")
	}
}

// openBackend connects the backend ORCH_ENGINE_BACKEND names.
func openBackend(ctx context.Context, cfg config.Config, getenv func(string) string, rep *replica.Replica, log *slog.Logger) (backend.Backend, error) {
	switch cfg.EngineBackend {
	case config.BackendKubernetes:
		b, err := kubernetes.New(ctx, kubernetes.Config{
			Namespace:    cfg.K8sNamespace,
			StorageClass: cfg.K8sStorageClass,
			VolumeSize:   cfg.K8sVolumeSize,
			CatalogPVC:   cfg.K8sCatalogPVC,
			Passthrough:  cfg.EngineEnvPassthrough,
			Getenv:       getenv,
			Deployment:   cfg.DeploymentID,
			DefaultImage: cfg.EngineImage,
			HelperImage:  cfg.HelperImage,
			StartTimeout: cfg.BootTimeout,
			Shard:        replica.ShardOf,
			// Each replica hears of the deaths of its own shards' engines.
			Owns:   func(engineID string) bool { _, ok := rep.Lease(engineID); return ok },
			Logger: log,
		})
		if err != nil {
			return nil, fmt.Errorf("kubernetes backend: %w", err)
		}
		return b, nil
	case config.BackendSubprocess:
		cmd := cfg.SubprocessCommand
		if len(cmd) == 0 {
			self, err := os.Executable()
			if err != nil {
				return nil, fmt.Errorf("find this binary for ORCH_SUBPROCESS_COMMAND: %w", err)
			}
			cmd = []string{self, "engine"}
		}
		b, err := subprocess.New(subprocess.Config{
			Command:     cmd,
			DataRoot:    cfg.DataRoot,
			CatalogDir:  cfg.CatalogMountPath,
			Passthrough: cfg.EngineEnvPassthrough,
			Deployment:  cfg.DeploymentID,
			Getenv:      getenv,
			Host:        cfg.EngineHost,
			OnOverlap: func(engineID, op string) {
				log.Error(overlapMessage, "engine_id", engineID, "op", op)
			},
		})
		if err != nil {
			return nil, fmt.Errorf("subprocess backend: %w", err)
		}
		return b, nil
	default:
		b, err := docker.New(ctx, docker.Config{
			Network:      cfg.EngineNetwork,
			CatalogPath:  cfg.CatalogMountPath,
			Passthrough:  cfg.EngineEnvPassthrough,
			Getenv:       getenv,
			Deployment:   cfg.DeploymentID,
			URLMode:      cfg.EngineURLMode,
			EngineHost:   cfg.EngineHost,
			DefaultImage: cfg.EngineImage,
			HelperImage:  cfg.HelperImage,
			Host:         cfg.DockerHost,
		})
		if err != nil {
			return nil, fmt.Errorf("docker backend: %w", err)
		}
		return b, nil
	}
}
