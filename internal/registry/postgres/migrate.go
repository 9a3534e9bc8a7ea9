package postgres

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed migrations/*.sql
var embedded embed.FS

// migrations is the directory of goose SQL files, named <version>_<what>.sql.
var migrations = func() fs.FS {
	sub, err := fs.Sub(embedded, "migrations")
	if err != nil {
		panic(err)
	}
	return sub
}()

// latestVersion is the version of the newest embedded migration: the schema
// this build needs.
var latestVersion = func() int64 {
	names, err := fs.Glob(migrations, "*.sql")
	if err != nil || len(names) == 0 {
		panic("postgres: no embedded migrations")
	}
	var latest int64
	for _, name := range names {
		digits, _, _ := strings.Cut(path.Base(name), "_")
		v, err := strconv.ParseInt(digits, 10, 64)
		if err != nil {
			panic("postgres: migration without a numeric version: " + name)
		}
		latest = max(latest, v)
	}
	return latest
}()

// Migrate applies every pending migration to the database at url. Concurrent
// callers (several orchestrators starting at once) are serialized by goose's
// session advisory lock.
func Migrate(ctx context.Context, url string) error {
	cfg, err := parseURL(url)
	if err != nil {
		return err
	}
	return migrateConfig(ctx, cfg.ConnConfig)
}

func migrateConfig(ctx context.Context, cfg *pgx.ConnConfig) error {
	db := stdlib.OpenDB(*cfg)
	defer db.Close()
	// One-second retries, up to ten minutes: a long migration by another
	// process is waited for rather than failed.
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 600))
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	provider, err := goose.NewProvider(goose.DialectPostgres, db, migrations,
		goose.WithSessionLocker(locker), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if _, err := provider.Up(ctx); err != nil {
		return fmt.Errorf("migrate: %w", translate(err))
	}
	return nil
}
