package config

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Var describes one environment variable that Load reads.
type Var struct {
	// Name is the environment variable.
	Name string
	// Default is the value used when the variable is unset or blank.
	Default string
	// Help says what the variable is for, for the README and the CLI.
	Help string
	// Secret marks variables whose values are never printed or put in errors.
	Secret bool

	parse func(c *Config, v string) error
}

// error wraps a parse failure of v, making sure a secret value never leaks
// through it even if a parser forgot.
func (v Var) error(raw string, err error) *Error {
	if v.Secret && raw != "" && strings.Contains(err.Error(), raw) {
		return &Error{Var: v.Name, Err: errInvalidSecret}
	}
	return &Error{Var: v.Name, Err: err}
}

// Vars returns every variable Load reads, in a stable order.
func Vars() []Var {
	return slices.Clone(table)
}

// Names used by the cross-variable checks and ValidateServe.
const (
	varDatabaseURL = "ORCH_DATABASE_URL"
	varMasterKey   = "ORCH_MASTER_KEY"
	varAdminKey    = "ORCH_ADMIN_KEY"
	varPortMin     = "ORCH_PORT_MIN"
	varPortMax     = "ORCH_PORT_MAX"
	varBackoffBase = "ORCH_RESTART_BACKOFF_BASE_S"
	varBackoffMax  = "ORCH_RESTART_BACKOFF_MAX_S"
	varBackend     = "ORCH_ENGINE_BACKEND"
	varSleepMode   = "ORCH_SLEEP_MODE"
)

// table declares every variable once. Defaults go through the same parsers
// as user values, so a bad default fails every test of Load.
var table = []Var{
	{
		Name: varDatabaseURL, Secret: true,
		Help:  "Database URL: postgresql://user:password@host:5432/dbname (PostgreSQL) or sqlite:///abs/path.db, sqlite://relative.db (embedded SQLite). Required by serve.",
		parse: parseDatabaseURL,
	},
	{
		Name: varMasterKey, Secret: true,
		Help: "Fernet key(s) encrypting engine keys at rest, comma-separated: the first encrypts, all decrypt. Generate with `bap-engine keygen`; `bap-engine rekey` re-encrypts under the first. Required by serve.",
		parse: func(c *Config, v string) error {
			if v == "" {
				return nil
			}
			if err := validateMasterKey(v); err != nil {
				return err
			}
			c.MasterKey = v
			return nil
		},
	},
	{
		Name: varAdminKey, Secret: true,
		Help:  "Admin key expected in X-Admin-Key (at least 16 characters). Required by serve.",
		parse: func(c *Config, v string) error { c.AdminKey = v; return nil },
	},
	{
		Name: "ORCH_ENGINE_IMAGE", Default: "september-engine:latest",
		Help:  "Docker image of engine containers when a provision names no engine_version.",
		parse: word(func(c *Config) *string { return &c.EngineImage }),
	},
	{
		Name: varBackend, Default: BackendDocker,
		Help:  "What runs engines: docker (production, one host), kubernetes (Pods with a PVC each, in-cluster config or KUBECONFIG) or subprocess (dev, tests).",
		parse: oneOf(func(c *Config) *string { return &c.EngineBackend }, BackendDocker, BackendSubprocess, BackendKubernetes),
	},
	{
		Name:  "ORCH_ENGINE_ENV_PASSTHROUGH",
		Help:  "Comma-separated names of orchestrator variables forwarded to engines, e.g. LLM_API_KEY,OPENAI_API_KEY. ORCH_* variables are never forwarded.",
		parse: parsePassthrough,
	},
	{
		Name: "ORCH_ENGINE_NETWORK", Default: "engine_net",
		Help:  "Docker network engine containers join (created if missing).",
		parse: parseNetwork,
	},
	{
		Name: varPortMin, Default: "9001",
		Help:  "Lowest host port given to an engine.",
		parse: integer(func(c *Config) *int { return &c.PortMin }, 1, 65535),
	},
	{
		Name: varPortMax, Default: "9999",
		Help:  "Highest host port given to an engine.",
		parse: integer(func(c *Config) *int { return &c.PortMax }, 1, 65535),
	},
	{
		Name: "ORCH_HEALTH_CHECK_INTERVAL_S", Default: "30",
		Help:  "Seconds between two health probes of an engine (fractions allowed).",
		parse: duration(func(c *Config) *time.Duration { return &c.HealthCheckInterval }, positive),
	},
	{
		Name: "ORCH_HEALTH_CHECK_TIMEOUT_S", Default: "10",
		Help:  "Seconds one health probe may take.",
		parse: duration(func(c *Config) *time.Duration { return &c.HealthCheckTimeout }, positive),
	},
	{
		Name: "ORCH_HEALTH_MAX_FAILURES", Default: "3",
		Help:  "Consecutive failed probes before an engine is marked failed.",
		parse: integer(func(c *Config) *int { return &c.HealthMaxFailures }, 1, maxCount),
	},
	{
		Name: varBackoffBase, Default: "5",
		Help:  "Seconds before the first automatic restart of a failed engine; doubles per attempt.",
		parse: duration(func(c *Config) *time.Duration { return &c.RestartBackoffBase }, positive),
	},
	{
		Name: varBackoffMax, Default: "300",
		Help:  "Cap in seconds on the wait between automatic restarts.",
		parse: duration(func(c *Config) *time.Duration { return &c.RestartBackoffMax }, positive),
	},
	{
		Name: "ORCH_RESTART_MAX_ATTEMPTS", Default: "8",
		Help:  "Automatic restarts before giving up (0: never restart automatically).",
		parse: integer(func(c *Config) *int { return &c.RestartMaxAttempts }, 0, maxCount),
	},
	{
		Name: "ORCH_BOOT_TIMEOUT_S", Default: "60",
		Help:  "Seconds a started engine has to answer GET /health.",
		parse: duration(func(c *Config) *time.Duration { return &c.BootTimeout }, positive),
	},
	{
		Name:  "ORCH_CATALOG_MOUNT_PATH",
		Help:  "Host directory mounted read-only at /catalog in engines (CATALOG_DIR); empty for none.",
		parse: func(c *Config, v string) error { c.CatalogMountPath = v; return nil },
	},
	{
		Name:  "DOCKER_HOST",
		Help:  "Docker daemon address, e.g. unix:///var/run/docker.sock or tcp://host:2376; empty for the default socket.",
		parse: parseDockerHost,
	},
	{
		Name: "ORCH_LISTEN_ADDR", Default: ":8000",
		Help:  "HTTP listen address (host:port).",
		parse: parseListenAddr,
	},
	{
		Name:  "ORCH_PPROF_ADDR",
		Help:  "Loopback address (127.0.0.1:port or [::1]:port) serving Go's /debug/pprof profiles, with block and mutex profiling on; empty: off.",
		parse: parsePprofAddr,
	},
	{
		Name: "ORCH_METRICS_TOKEN", Secret: true,
		Help: "Bearer token GET /metrics/prometheus also accepts (Authorization: Bearer <token>), so a scraper need not hold the admin key; at least 16 characters; empty: the admin key only.",
		parse: func(c *Config, v string) error {
			if v != "" && (len(v) < MinAdminKeyLen || strings.ContainsAny(v, " \t\r\n")) {
				return fmt.Errorf("must be at least %d characters without spaces", MinAdminKeyLen)
			}
			c.MetricsToken = v
			return nil
		},
	},
	{
		Name: "ORCH_HTTP_READ_TIMEOUT_S", Default: "30",
		Help:  "Seconds a client has to send a request's headers and body; a slower request is closed. Also the time it has to take an answer (or each piece of a streamed one) once it begins.",
		parse: duration(func(c *Config) *time.Duration { return &c.HTTPReadTimeout }, positive),
	},
	{
		Name: "ORCH_HTTP_IDLE_TIMEOUT_S", Default: "120",
		Help:  "Seconds an idle keep-alive connection is kept open waiting for its next request.",
		parse: duration(func(c *Config) *time.Duration { return &c.HTTPIdleTimeout }, positive),
	},
	{
		Name: "ORCH_HTTP_MAX_CONNS", Default: "10000",
		Help:  "Most client connections held at once; further ones wait in the kernel's listen backlog until others close.",
		parse: integer(func(c *Config) *int { return &c.HTTPMaxConns }, 1, maxCount),
	},
	{
		Name: "ORCH_DATA_ROOT", Default: "/data/engine-data",
		Help:  "Directory holding each subprocess engine's data directory (dev uses ./.bap-engine/engine-data).",
		parse: func(c *Config, v string) error { c.DataRoot = v; return nil },
	},
	{
		Name:  "ORCH_SUBPROCESS_COMMAND",
		Help:  "Command line starting one subprocess engine (spaces separate arguments; quotes and backslashes as in a shell); empty for this binary's `engine` subcommand.",
		parse: parseSubprocessCommand,
	},
	{
		Name: "ORCH_DEPLOYMENT_ID", Default: "default",
		Help:  "Label value scoping reconciliation to this deployment's containers and processes (letters, digits, _ . -).",
		parse: parseDeploymentID,
	},
	{
		Name:  "ORCH_K8S_NAMESPACE",
		Help:  "kubernetes backend: namespace of engine Pods and PVCs; empty: the orchestrator pod's own namespace, else default.",
		parse: k8sName(func(c *Config) *string { return &c.K8sNamespace }, dnsLabelRE, "namespace name (a DNS label)"),
	},
	{
		Name:  "ORCH_K8S_STORAGE_CLASS",
		Help:  "kubernetes backend: storage class of engine PVCs (ReadWriteOnce block storage; never RWX/NFS for SQLite brains); empty: the cluster's default class.",
		parse: k8sName(func(c *Config) *string { return &c.K8sStorageClass }, dnsSubdomainRE, "storage class name"),
	},
	{
		Name: "ORCH_K8S_VOLUME_SIZE", Default: "1Gi",
		Help:  "kubernetes backend: size of each engine's PVC (a Kubernetes quantity such as 512Mi, 1Gi, 10G).",
		parse: parseVolumeSize,
	},
	{
		Name:  "ORCH_K8S_CATALOG_PVC",
		Help:  "kubernetes backend: PVC mounted read-only at /catalog in every engine (CATALOG_DIR); empty for none.",
		parse: k8sName(func(c *Config) *string { return &c.K8sCatalogPVC }, dnsSubdomainRE, "PVC name"),
	},
	{
		Name: "ORCH_IDLE_TIMEOUT_S", Default: "1800",
		Help:  "Seconds without admit before an engine is put to sleep; 0 disables sleep.",
		parse: duration(func(c *Config) *time.Duration { return &c.IdleTimeout }, zeroAllowed),
	},
	{
		Name: varSleepMode, Default: SleepMark,
		Help:  "What sleep does: mark (status only), pause (freeze the engine; not with kubernetes) or stop (stop it; kubernetes deletes the Pod and keeps the PVC).",
		parse: oneOf(func(c *Config) *string { return &c.SleepMode }, SleepMark, SleepPause, SleepStop),
	},
	{
		Name: "ORCH_ENGINE_URL_MODE", Default: URLModeHost,
		Help:  "Engine URLs given to products: host (http://ORCH_ENGINE_HOST:port) or network (http://engine-<id>:8000).",
		parse: oneOf(func(c *Config) *string { return &c.EngineURLMode }, URLModeHost, URLModeNetwork),
	},
	{
		Name: "ORCH_ENGINE_HOST", Default: "127.0.0.1",
		Help:  "Host part of engine URLs in host mode (a name or an IP address).",
		parse: parseEngineHost,
	},
	{
		Name: "ORCH_PLATFORM_KEY_GRACE_S", Default: "300",
		Help:  "Seconds a replaced platform key keeps working after rotation; 0 revokes it at once.",
		parse: duration(func(c *Config) *time.Duration { return &c.PlatformKeyGrace }, zeroAllowed),
	},
	{
		Name: "ORCH_RECONCILE_GRACE_S", Default: "120",
		Help:  "Age before reconciliation removes an instance that has no engine row while the replica that created it is alive (one made by a dead replica is removed at once).",
		parse: duration(func(c *Config) *time.Duration { return &c.ReconcileGrace }, zeroAllowed),
	},
	{
		Name: "ORCH_SNAPSHOTS_KEPT", Default: "2",
		Help:  "Brain snapshots kept per engine: an upgrade snapshots the brain first and deletes all but this many (they are deleted with the engine).",
		parse: integer(func(c *Config) *int { return &c.SnapshotsKept }, 1, 1000),
	},
	{
		Name: "ORCH_HELPER_IMAGE", Default: "bap-engine:latest",
		Help:  "The orchestrator's own image (docker and kubernetes backends): a short-lived container or Pod of it copies an engine's brain to a snapshot volume or PVC and back. Nothing else needs to be pulled.",
		parse: word(func(c *Config) *string { return &c.HelperImage }),
	},
	{
		Name: "ORCH_REPLICA_TTL_S", Default: "10",
		Help:  "Seconds without a heartbeat after which an orchestrator replica is dead: its shards move and its unfinished operations are taken over within this plus 5 s.",
		parse: duration(func(c *Config) *time.Duration { return &c.ReplicaTTL }, positive),
	},
	{
		Name: "ORCH_MAX_CONCURRENT_PROVISIONS", Default: "0",
		Help:  "Provisions in flight at once in this process; the others wait their turn first come, first served (up to ORCH_BOOT_TIMEOUT_S, then 429 with Retry-After). 0 sizes it to the engine backend.",
		parse: integer(func(c *Config) *int { return &c.MaxConcurrentProvisions }, 0, 100000),
	},
	{
		Name: "ORCH_ADMIT_CACHE_S", Default: "5",
		Help:  "Seconds a running engine found by an admit is kept in memory, dropped at once when any process changes it (PostgreSQL LISTEN/NOTIFY); 0 makes every admit read the database.",
		parse: duration(func(c *Config) *time.Duration { return &c.AdmitCache }, zeroAllowed),
	},
	{
		Name: "ORCH_AUDIT_RETENTION_DAYS", Default: "0",
		Help:  "Days audit rows are kept; 0 keeps them forever.",
		parse: integer(func(c *Config) *int { return &c.AuditRetentionDays }, 0, maxRetentionDays),
	},
	{
		Name: "ORCH_LOG_LEVEL", Default: "info",
		Help:  "Minimum log level: debug, info, warn or error.",
		parse: parseLogLevel,
	},
	{
		Name: "ORCH_LOG_FORMAT", Default: LogFormatJSON,
		Help:  "Log line format: json or text.",
		parse: oneOf(func(c *Config) *string { return &c.LogFormat }, LogFormatJSON, LogFormatText),
	},
}
