package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Version is the reference engine's version, reported by GET /health. The
// build may override it with -ldflags "-X ...internal/engine.Version=v".
var Version = "0.1.0"

// Defaults of the engine contract.
const (
	defaultPort   = 8000
	defaultDBPath = "/data/brain.sqlite"
	// shutdownTimeout bounds how long in-flight requests may run after the
	// context is cancelled; the orchestrator kills the engine after 30 s.
	shutdownTimeout = 25 * time.Second
)

// config is the engine's environment, validated.
type config struct {
	host       string
	port       int
	keyHash    [sha256.Size]byte
	dbPath     string
	catalogDir string
	// warmup keeps /health answering "starting" this long after the
	// listener is up, as an engine loading a model would (ENGINE_WARMUP_S).
	warmup time.Duration
	// drain keeps serving this long after SIGTERM before shutting down, as
	// an engine behind a load balancer would (ENGINE_SHUTDOWN_DELAY_S).
	drain time.Duration
	// engineVersion is what the orchestrator runs this engine as
	// (ENGINE_VERSION: the image reference, or its subprocess stand-in);
	// reported by /health.
	engineVersion string
	// refused says why this engine will not serve: its engineVersion is
	// named by ENGINE_REFUSE_VERSIONS (a comma-separated list), as an engine
	// whose brain is newer than it understands would refuse. /health then
	// answers 503 {"status":"refused","reason":...} and nothing is served;
	// the tests drive an upgrade's rollback with it.
	refused string
}

// optionalSeconds parses a non-negative, possibly fractional, number of
// seconds; empty is zero.
func optionalSeconds(getenv func(string) string, name string) (time.Duration, error) {
	v := getenv(name)
	if v == "" {
		return 0, nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 || f > 3600 {
		return 0, fmt.Errorf("%s: %q is not a number of seconds between 0 and 3600", name, v)
	}
	return time.Duration(f * float64(time.Second)), nil
}

// loadConfig reads the contract's variables through getenv. Errors name the
// variable and never echo a secret.
func loadConfig(getenv func(string) string) (config, error) {
	cfg := config{
		host:       getenv("ENGINE_LISTEN_HOST"),
		port:       defaultPort,
		dbPath:     getenv("SQLITE_DB_PATH"),
		catalogDir: getenv("CATALOG_DIR"),
	}
	if cfg.dbPath == "" {
		cfg.dbPath = defaultDBPath
	}
	if v := getenv("PORT"); v != "" {
		p, err := strconv.Atoi(v)
		if err != nil || p < 0 || p > 65535 {
			return config{}, fmt.Errorf("PORT: %q is not a port number (0-65535)", v)
		}
		cfg.port = p
	}
	var err error
	if cfg.warmup, err = optionalSeconds(getenv, "ENGINE_WARMUP_S"); err != nil {
		return config{}, err
	}
	if cfg.drain, err = optionalSeconds(getenv, "ENGINE_SHUTDOWN_DELAY_S"); err != nil {
		return config{}, err
	}
	cfg.engineVersion = getenv("ENGINE_VERSION")
	for _, v := range strings.Split(getenv("ENGINE_REFUSE_VERSIONS"), ",") {
		if v = strings.TrimSpace(v); v != "" && v == cfg.engineVersion {
			cfg.refused = fmt.Sprintf("engine version %s is refused (ENGINE_REFUSE_VERSIONS)", v)
		}
	}
	h := getenv("ENGINE_KEY_HASH")
	if h == "" {
		return config{}, errors.New("ENGINE_KEY_HASH is required (lowercase hex SHA-256 of the engine key)")
	}
	raw, err := hex.DecodeString(h)
	if err != nil || len(raw) != sha256.Size {
		return config{}, errors.New("ENGINE_KEY_HASH: must be 64 hex characters (a SHA-256 digest)")
	}
	copy(cfg.keyHash[:], raw)
	return cfg, nil
}

// Run serves the reference engine until ctx is cancelled, then finishes the
// in-flight requests (bounded), closes the brain and returns nil. It reads
// PORT (default 8000), ENGINE_KEY_HASH (required), SQLITE_DB_PATH (default
// /data/brain.sqlite; its directory is created), CATALOG_DIR (optional) and
// ENGINE_LISTEN_HOST (default: all interfaces), ENGINE_WARMUP_S and
// ENGINE_SHUTDOWN_DELAY_S (optional, seconds), ENGINE_VERSION and
// ENGINE_REFUSE_VERSIONS (optional) through getenv, and writes
// JSON log lines to logw.
func Run(ctx context.Context, getenv func(string) string, logw io.Writer) error {
	log := slog.New(slog.NewJSONHandler(logw, nil))
	cfg, err := loadConfig(getenv)
	if err != nil {
		return fmt.Errorf("engine config: %w", err)
	}
	b, err := openBrain(ctx, cfg.dbPath)
	if err != nil {
		return err
	}
	defer b.close()

	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.host, strconv.Itoa(cfg.port)))
	if err != nil {
		return fmt.Errorf("engine listen on port %d: %w", cfg.port, err)
	}
	s := newServer(cfg, b, log)
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	if cfg.refused != "" {
		log.Warn("engine refuses to serve", "reason", cfg.refused)
	}
	if cfg.warmup > 0 {
		log.Info("engine warming up", "addr", ln.Addr().String(), "for", cfg.warmup.String())
	}
	warm := time.After(cfg.warmup)
wait:
	for {
		select {
		case <-warm:
			warm = nil
			s.ready.Store(true)
			log.Info("engine ready", "addr", ln.Addr().String(), "version", Version, "brain", cfg.dbPath)
		case err := <-serveErr:
			s.ready.Store(false)
			return fmt.Errorf("engine serve: %w", err)
		case <-ctx.Done():
			break wait
		}
	}
	s.ready.Store(false)
	s.stopping.Store(true)
	if cfg.drain > 0 {
		log.Info("engine draining before shutdown", "for", cfg.drain.String())
		t := time.NewTimer(cfg.drain)
		select {
		case <-t.C:
		case err := <-serveErr:
			t.Stop()
			return fmt.Errorf("engine serve: %w", err)
		}
	}
	log.Info("engine shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		_ = srv.Close()
		<-serveErr
		return fmt.Errorf("engine shutdown: %w", err)
	}
	if err := <-serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("engine serve: %w", err)
	}
	log.Info("engine stopped")
	return nil
}

// Main runs the engine from the process's environment until SIGTERM or
// SIGINT, then exits: 0 after a clean stop, 1 (with the error on stderr)
// otherwise. Test binaries that stand in for the engine command call it
// from TestMain.
func Main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err := Run(ctx, os.Getenv, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}
