package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"
)

// Values of the enumerated settings.
const (
	// DriverPostgres is DatabaseDriver for postgres:// and postgresql:// URLs.
	DriverPostgres = "postgres"
	// DriverSQLite is DatabaseDriver for sqlite:// URLs.
	DriverSQLite = "sqlite"

	// BackendDocker runs engines as Docker containers (production).
	BackendDocker = "docker"
	// BackendSubprocess runs engines as local processes (dev and tests).
	BackendSubprocess = "subprocess"
	// BackendKubernetes runs engines as Pods with a PVC each (SPEC §10).
	BackendKubernetes = "kubernetes"

	// SleepMark only records that an idle engine sleeps; it keeps running.
	SleepMark = "mark"
	// SleepPause freezes an idle engine (container pause / SIGSTOP).
	SleepPause = "pause"
	// SleepStop stops an idle engine; waking it starts it again.
	SleepStop = "stop"

	// URLModeHost gives products http://<ORCH_ENGINE_HOST>:<port> URLs.
	URLModeHost = "host"
	// URLModeNetwork gives products http://engine-<id>:8000 URLs on the engine network.
	URLModeNetwork = "network"

	// LogFormatJSON writes one JSON object per log line.
	LogFormatJSON = "json"
	// LogFormatText writes slog's key=value text lines.
	LogFormatText = "text"
)

// MinAdminKeyLen is the shortest ORCH_ADMIN_KEY that serve does not warn about.
const MinAdminKeyLen = 16

// Config is the orchestrator's settings, parsed and validated.
type Config struct {
	// DatabaseURL is ORCH_DATABASE_URL as given, except that an SQLAlchemy
	// driver suffix (postgresql+asyncpg://) is dropped. Empty when unset.
	DatabaseURL string
	// DatabaseDriver is DriverPostgres or DriverSQLite; empty when DatabaseURL is.
	DatabaseDriver string
	// SQLitePath is the database file of a sqlite:// URL: sqlite:///abs/x.db
	// gives /abs/x.db, sqlite://rel.db gives rel.db.
	SQLitePath string
	// MasterKey is ORCH_MASTER_KEY: comma-separated Fernet keys, first seals.
	MasterKey string
	// AdminKey is ORCH_ADMIN_KEY, the X-Admin-Key secret.
	AdminKey string

	// EngineImage is the default image of engine containers.
	EngineImage string
	// HelperImage is the orchestrator's own image, run briefly by the
	// docker backend to copy brain snapshots.
	HelperImage string
	// SnapshotsKept is how many brain snapshots are kept per engine.
	SnapshotsKept int
	// EngineBackend is BackendDocker, BackendSubprocess or BackendKubernetes.
	EngineBackend string
	// EngineEnvPassthrough names the orchestrator variables forwarded to engines.
	EngineEnvPassthrough []string
	// EngineNetwork is the Docker network engines join.
	EngineNetwork string
	// PortMin and PortMax bound the engine port range (inclusive).
	PortMin, PortMax int

	// HealthCheckInterval is the time between two probes of one engine.
	HealthCheckInterval time.Duration
	// HealthCheckTimeout bounds one probe.
	HealthCheckTimeout time.Duration
	// HealthMaxFailures is the number of consecutive failed probes that fail an engine.
	HealthMaxFailures int
	// RestartBackoffBase is the wait before the first automatic restart; it doubles per attempt.
	RestartBackoffBase time.Duration
	// RestartBackoffMax caps the wait between automatic restarts.
	RestartBackoffMax time.Duration
	// RestartMaxAttempts is the number of automatic restarts before giving up (0: none).
	RestartMaxAttempts int
	// BootTimeout bounds the wait for a started engine to answer /health.
	BootTimeout time.Duration

	// CatalogMountPath is the host catalog directory given to engines; empty for none.
	CatalogMountPath string
	// DockerHost is DOCKER_HOST; empty means the client's default socket.
	DockerHost string
	// ListenAddr is the HTTP listen address.
	ListenAddr string
	// HTTPReadTimeout bounds the reading of one request's headers and body,
	// and the delivery of an answer (or of each piece of a stream) once it
	// begins.
	HTTPReadTimeout time.Duration
	// HTTPIdleTimeout is how long an idle keep-alive connection is kept.
	HTTPIdleTimeout time.Duration
	// HTTPMaxConns is the most client connections held at once.
	HTTPMaxConns int
	// DataRoot holds the data directories of subprocess engines.
	DataRoot string
	// SubprocessCommand is the command line that starts one subprocess engine;
	// nil means this binary's own `engine` subcommand.
	SubprocessCommand []string
	// DeploymentID scopes the labels reconciliation looks at.
	DeploymentID string
	// K8sNamespace is the engines' namespace; empty: the orchestrator pod's
	// own, else default.
	K8sNamespace string
	// K8sStorageClass is the class of engine PVCs; empty: the cluster's default.
	K8sStorageClass string
	// K8sVolumeSize is each engine PVC's size (a Kubernetes quantity).
	K8sVolumeSize string
	// K8sCatalogPVC is a PVC mounted read-only at /catalog; empty for none.
	K8sCatalogPVC string

	// IdleTimeout is the time without admit before an engine sleeps; 0 disables sleep.
	IdleTimeout time.Duration
	// SleepMode is SleepMark, SleepPause or SleepStop.
	SleepMode string
	// EngineURLMode is URLModeHost or URLModeNetwork.
	EngineURLMode string
	// EngineHost is the host part of engine URLs in host mode (no brackets for IPv6).
	EngineHost string
	// PlatformKeyGrace is how long a replaced platform key keeps working.
	PlatformKeyGrace time.Duration
	// ReconcileGrace is the age before reconciliation removes an instance
	// with no row whose creating replica is alive.
	ReconcileGrace time.Duration
	// ReplicaTTL is how long a replica without heartbeat stays alive.
	ReplicaTTL time.Duration
	// PprofAddr is the loopback address serving /debug/pprof; empty: off.
	PprofAddr string
	// MetricsToken is ORCH_METRICS_TOKEN: a bearer token accepted by
	// /metrics/prometheus besides the admin key; empty: none.
	MetricsToken string
	// MaxConcurrentProvisions bounds the provisions in flight; 0 sizes it
	// to the engine backend.
	MaxConcurrentProvisions int
	// AdmitCache is how long an admit keeps a running engine in memory; 0
	// turns the engine cache off.
	AdmitCache time.Duration
	// AuditRetentionDays is the age at which audit rows are pruned; 0 keeps them forever.
	AuditRetentionDays int
	// LogLevel is the minimum level logged.
	LogLevel slog.Level
	// LogFormat is LogFormatJSON or LogFormatText.
	LogFormat string
}

// Error is one environment variable with a bad value.
type Error struct {
	// Var is the variable's name.
	Var string
	// Err says what is wrong; it never holds the value of a secret variable.
	Err error
}

// Error returns "NAME: reason".
func (e *Error) Error() string { return e.Var + ": " + e.Err.Error() }

// Unwrap returns the reason.
func (e *Error) Unwrap() error { return e.Err }

// Load reads every variable of Vars through getenv (os.Getenv in production).
// An unset or blank variable takes its default; surrounding whitespace is
// ignored. All bad values are reported together, joined with errors.Join,
// each as an *Error naming its variable.
func Load(getenv func(string) string) (Config, error) {
	c, _, errs := load(getenv)
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	return c, nil
}

// LoadServe is Load followed by ValidateServe, reporting the problems of
// both at once, so an operator fixes every variable in one go.
func LoadServe(getenv func(string) string) (Config, error) {
	c, failed, errs := load(getenv)
	if err := c.ValidateServe(); err != nil {
		for _, e := range unjoin(err) {
			var ve *Error
			if errors.As(e, &ve) && failed[ve.Var] {
				continue // already reported by Load
			}
			errs = append(errs, e)
		}
	}
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	return c, nil
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// load parses every variable, returning what parsed, which variables
// failed and the errors.
func load(getenv func(string) string) (Config, map[string]bool, []error) {
	var c Config
	var errs []error
	failed := map[string]bool{}
	for _, v := range table {
		raw := strings.TrimSpace(getenv(v.Name))
		if raw == "" {
			raw = v.Default
		}
		if err := v.parse(&c, raw); err != nil {
			errs = append(errs, v.error(raw, err))
			failed[v.Name] = true
		}
	}
	if !failed[varPortMin] && !failed[varPortMax] && c.PortMin > c.PortMax {
		errs = append(errs, &Error{varPortMax, fmt.Errorf("%d is below %s (%d)", c.PortMax, varPortMin, c.PortMin)})
	}
	if !failed[varBackend] && !failed[varSleepMode] && c.EngineBackend == BackendKubernetes && c.SleepMode == SleepPause {
		errs = append(errs, &Error{varSleepMode, errors.New(
			"pause is not possible with ORCH_ENGINE_BACKEND=kubernetes (a Pod cannot be frozen): use mark or stop")})
	}
	if !failed[varBackoffBase] && !failed[varBackoffMax] && c.RestartBackoffMax < c.RestartBackoffBase {
		errs = append(errs, &Error{varBackoffMax, fmt.Errorf("%s is below %s (%s)",
			seconds(c.RestartBackoffMax), varBackoffBase, seconds(c.RestartBackoffBase))})
	}
	return c, failed, errs
}

// seconds formats d the way the *_S variables are written.
func seconds(d time.Duration) string {
	return fmt.Sprintf("%gs", d.Seconds())
}

// ValidateServe reports what serve needs beyond Load: a database URL, a
// well-formed master key and an admin key. Any non-empty admin key is
// accepted, as the original did, so existing deployments keep working;
// WeakAdminKey lets serve warn about short ones. Like Load it reports every problem at once without echoing
// secrets.
func (c Config) ValidateServe() error {
	var errs []error
	if c.DatabaseURL == "" {
		errs = append(errs, &Error{varDatabaseURL, errors.New(
			"required by serve: set postgresql://user:password@host:5432/dbname or sqlite:///path/to/bap-engine.db")})
	} else if err := parseDatabaseURL(new(Config), c.DatabaseURL); err != nil {
		errs = append(errs, &Error{varDatabaseURL, err})
	}
	if c.MasterKey == "" {
		errs = append(errs, &Error{varMasterKey, errors.New(
			"required by serve: generate a key with `bap-engine keygen`")})
	} else if err := validateMasterKey(c.MasterKey); err != nil {
		errs = append(errs, &Error{varMasterKey, err})
	}
	switch {
	case c.AdminKey == "":
		errs = append(errs, &Error{varAdminKey, errors.New(
			"required by serve: set a long random string, e.g. the output of `openssl rand -hex 32`")})
	}
	return errors.Join(errs...)
}

// WeakAdminKey reports whether the admin key is shorter than MinAdminKeyLen.
func (c Config) WeakAdminKey() bool { return len([]rune(c.AdminKey)) < MinAdminKeyLen }

// LogValue lets a Config be logged with slog without its secrets: keys show
// only whether they are set and the database password is masked.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("database_url", redactURL(c.DatabaseURL)),
		slog.String("database_driver", c.DatabaseDriver),
		slog.String("master_key", redactSecret(c.MasterKey)),
		slog.String("admin_key", redactSecret(c.AdminKey)),
		slog.String("engine_image", c.EngineImage),
		slog.String("helper_image", c.HelperImage),
		slog.Int("snapshots_kept", c.SnapshotsKept),
		slog.String("engine_backend", c.EngineBackend),
		slog.Any("engine_env_passthrough", c.EngineEnvPassthrough),
		slog.String("engine_network", c.EngineNetwork),
		slog.Int("port_min", c.PortMin),
		slog.Int("port_max", c.PortMax),
		slog.Duration("health_check_interval", c.HealthCheckInterval),
		slog.Duration("health_check_timeout", c.HealthCheckTimeout),
		slog.Int("health_max_failures", c.HealthMaxFailures),
		slog.Duration("restart_backoff_base", c.RestartBackoffBase),
		slog.Duration("restart_backoff_max", c.RestartBackoffMax),
		slog.Int("restart_max_attempts", c.RestartMaxAttempts),
		slog.Duration("boot_timeout", c.BootTimeout),
		slog.String("catalog_mount_path", c.CatalogMountPath),
		slog.String("docker_host", c.DockerHost),
		slog.String("listen_addr", c.ListenAddr),
		slog.Duration("http_read_timeout", c.HTTPReadTimeout),
		slog.Duration("http_idle_timeout", c.HTTPIdleTimeout),
		slog.Int("http_max_conns", c.HTTPMaxConns),
		slog.String("data_root", c.DataRoot),
		slog.Any("subprocess_command", c.SubprocessCommand),
		slog.String("deployment_id", c.DeploymentID),
		slog.String("k8s_namespace", c.K8sNamespace),
		slog.String("k8s_storage_class", c.K8sStorageClass),
		slog.String("k8s_volume_size", c.K8sVolumeSize),
		slog.String("k8s_catalog_pvc", c.K8sCatalogPVC),
		slog.Duration("idle_timeout", c.IdleTimeout),
		slog.String("sleep_mode", c.SleepMode),
		slog.String("engine_url_mode", c.EngineURLMode),
		slog.String("engine_host", c.EngineHost),
		slog.Duration("platform_key_grace", c.PlatformKeyGrace),
		slog.Duration("reconcile_grace", c.ReconcileGrace),
		slog.Duration("replica_ttl", c.ReplicaTTL),
		slog.String("pprof_addr", c.PprofAddr),
		slog.Int("max_concurrent_provisions", c.MaxConcurrentProvisions),
		slog.Int("audit_retention_days", c.AuditRetentionDays),
		slog.String("log_level", c.LogLevel.String()),
		slog.String("log_format", c.LogFormat),
	)
}

// String prints the settings without secrets, so %v never leaks a key.
func (c Config) String() string {
	return "config" + c.LogValue().String()
}

func redactSecret(s string) string {
	if s == "" {
		return ""
	}
	return "[redacted]"
}

// redactURL masks the password of a database URL (in the user part or a
// password= parameter); anything it cannot parse is hidden entirely.
func redactURL(s string) string {
	if s == "" {
		return ""
	}
	u, err := url.Parse(s)
	if err != nil {
		return "[redacted]"
	}
	if q := u.Query(); q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}
