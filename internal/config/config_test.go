package config

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Fernet keys made by Python's Fernet.generate_key().
const (
	pyKey    = "L7ySRpaEPL0VnhLgDJgn1ddNOywIlGj33J6-8yb9xyw="
	pyOldKey = "2voNLOYuiqWNObTJAHcuq6QittJIAtfExRBPRiZNwV0="
)

// env returns a getenv over the given name/value pairs.
func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(name string) string { return m[name] }
}

// varErrors splits a Load or ValidateServe error into its *Error parts.
func varErrors(t *testing.T, err error) []*Error {
	t.Helper()
	require.Error(t, err)
	joined, ok := err.(interface{ Unwrap() []error })
	require.True(t, ok, "want an errors.Join error, got %T", err)
	var out []*Error
	for _, e := range joined.Unwrap() {
		var ve *Error
		require.True(t, errors.As(e, &ve), "want *Error, got %T: %v", e, e)
		out = append(out, ve)
	}
	return out
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	c, err := Load(env())
	require.NoError(t, err)
	require.Equal(t, Config{
		EngineImage:         "september-engine:latest",
		HelperImage:         "bap-engine:latest",
		SnapshotsKept:       2,
		EngineBackend:       "docker",
		EngineNetwork:       "engine_net",
		PortMin:             9001,
		PortMax:             9999,
		HealthCheckInterval: 30 * time.Second,
		HealthCheckTimeout:  10 * time.Second,
		HealthMaxFailures:   3,
		RestartBackoffBase:  5 * time.Second,
		RestartBackoffMax:   300 * time.Second,
		RestartMaxAttempts:  8,
		BootTimeout:         60 * time.Second,
		ListenAddr:          ":8000",
		HTTPReadTimeout:     30 * time.Second,
		HTTPIdleTimeout:     120 * time.Second,
		HTTPMaxConns:        10000,
		DataRoot:            "/data/engine-data",
		DeploymentID:        "default",
		K8sVolumeSize:       "1Gi",
		IdleTimeout:         1800 * time.Second,
		SleepMode:           "mark",
		EngineURLMode:       "host",
		EngineHost:          "127.0.0.1",
		PlatformKeyGrace:    300 * time.Second,
		ReconcileGrace:      120 * time.Second,
		ReplicaTTL:          10 * time.Second,
		AdmitCache:          5 * time.Second,
		AuditRetentionDays:  0,
		LogLevel:            slog.LevelInfo,
		LogFormat:           "json",
	}, c)

	// Blank values mean "unset".
	blank, err := Load(func(string) string { return "  " })
	require.NoError(t, err)
	require.Equal(t, c, blank)
}

// getters read the field each variable sets.
var getters = map[string]func(Config) any{
	"ORCH_DATABASE_URL":              func(c Config) any { return [3]string{c.DatabaseURL, c.DatabaseDriver, c.SQLitePath} },
	"ORCH_MASTER_KEY":                func(c Config) any { return c.MasterKey },
	"ORCH_ADMIN_KEY":                 func(c Config) any { return c.AdminKey },
	"ORCH_ENGINE_IMAGE":              func(c Config) any { return c.EngineImage },
	"ORCH_ENGINE_BACKEND":            func(c Config) any { return c.EngineBackend },
	"ORCH_ENGINE_ENV_PASSTHROUGH":    func(c Config) any { return c.EngineEnvPassthrough },
	"ORCH_ENGINE_NETWORK":            func(c Config) any { return c.EngineNetwork },
	"ORCH_PORT_MIN":                  func(c Config) any { return c.PortMin },
	"ORCH_PORT_MAX":                  func(c Config) any { return c.PortMax },
	"ORCH_HEALTH_CHECK_INTERVAL_S":   func(c Config) any { return c.HealthCheckInterval },
	"ORCH_HEALTH_CHECK_TIMEOUT_S":    func(c Config) any { return c.HealthCheckTimeout },
	"ORCH_HEALTH_MAX_FAILURES":       func(c Config) any { return c.HealthMaxFailures },
	"ORCH_RESTART_BACKOFF_BASE_S":    func(c Config) any { return c.RestartBackoffBase },
	"ORCH_RESTART_BACKOFF_MAX_S":     func(c Config) any { return c.RestartBackoffMax },
	"ORCH_RESTART_MAX_ATTEMPTS":      func(c Config) any { return c.RestartMaxAttempts },
	"ORCH_BOOT_TIMEOUT_S":            func(c Config) any { return c.BootTimeout },
	"ORCH_CATALOG_MOUNT_PATH":        func(c Config) any { return c.CatalogMountPath },
	"DOCKER_HOST":                    func(c Config) any { return c.DockerHost },
	"ORCH_LISTEN_ADDR":               func(c Config) any { return c.ListenAddr },
	"ORCH_DATA_ROOT":                 func(c Config) any { return c.DataRoot },
	"ORCH_HTTP_READ_TIMEOUT_S":       func(c Config) any { return c.HTTPReadTimeout },
	"ORCH_HTTP_IDLE_TIMEOUT_S":       func(c Config) any { return c.HTTPIdleTimeout },
	"ORCH_HTTP_MAX_CONNS":            func(c Config) any { return c.HTTPMaxConns },
	"ORCH_SUBPROCESS_COMMAND":        func(c Config) any { return c.SubprocessCommand },
	"ORCH_DEPLOYMENT_ID":             func(c Config) any { return c.DeploymentID },
	"ORCH_K8S_NAMESPACE":             func(c Config) any { return c.K8sNamespace },
	"ORCH_K8S_STORAGE_CLASS":         func(c Config) any { return c.K8sStorageClass },
	"ORCH_K8S_VOLUME_SIZE":           func(c Config) any { return c.K8sVolumeSize },
	"ORCH_K8S_CATALOG_PVC":           func(c Config) any { return c.K8sCatalogPVC },
	"ORCH_IDLE_TIMEOUT_S":            func(c Config) any { return c.IdleTimeout },
	"ORCH_SLEEP_MODE":                func(c Config) any { return c.SleepMode },
	"ORCH_ENGINE_URL_MODE":           func(c Config) any { return c.EngineURLMode },
	"ORCH_ENGINE_HOST":               func(c Config) any { return c.EngineHost },
	"ORCH_PLATFORM_KEY_GRACE_S":      func(c Config) any { return c.PlatformKeyGrace },
	"ORCH_RECONCILE_GRACE_S":         func(c Config) any { return c.ReconcileGrace },
	"ORCH_REPLICA_TTL_S":             func(c Config) any { return c.ReplicaTTL },
	"ORCH_SNAPSHOTS_KEPT":            func(c Config) any { return c.SnapshotsKept },
	"ORCH_HELPER_IMAGE":              func(c Config) any { return c.HelperImage },
	"ORCH_PPROF_ADDR":                func(c Config) any { return c.PprofAddr },
	"ORCH_METRICS_TOKEN":             func(c Config) any { return c.MetricsToken },
	"ORCH_MAX_CONCURRENT_PROVISIONS": func(c Config) any { return c.MaxConcurrentProvisions },
	"ORCH_ADMIT_CACHE_S":             func(c Config) any { return c.AdmitCache },
	"ORCH_AUDIT_RETENTION_DAYS":      func(c Config) any { return c.AuditRetentionDays },
	"ORCH_LOG_LEVEL":                 func(c Config) any { return c.LogLevel },
	"ORCH_LOG_FORMAT":                func(c Config) any { return c.LogFormat },
}

type goodCase struct {
	value string
	want  any
}

var goodCases = map[string][]goodCase{
	"ORCH_DATABASE_URL": {
		{"postgresql://orch:pw@postgres:5432/orchestrator", [3]string{"postgresql://orch:pw@postgres:5432/orchestrator", "postgres", ""}},
		{"postgres://orch@localhost/db?sslmode=disable", [3]string{"postgres://orch@localhost/db?sslmode=disable", "postgres", ""}},
		{"PostgreSQL://h/db", [3]string{"postgresql://h/db", "postgres", ""}},
		{"postgresql+asyncpg://u:p@h:5432/db", [3]string{"postgresql://u:p@h:5432/db", "postgres", ""}},
		{"postgres:///db?host=/var/run/postgresql", [3]string{"postgres:///db?host=/var/run/postgresql", "postgres", ""}},
		{"sqlite:///var/lib/bap/bap.db", [3]string{"sqlite:///var/lib/bap/bap.db", "sqlite", "/var/lib/bap/bap.db"}},
		{"sqlite://bap.db", [3]string{"sqlite://bap.db", "sqlite", "bap.db"}},
		{"sqlite://.bap-engine/bap.db", [3]string{"sqlite://.bap-engine/bap.db", "sqlite", ".bap-engine/bap.db"}},
		{"sqlite+aiosqlite:///tmp/x.db", [3]string{"sqlite:///tmp/x.db", "sqlite", "/tmp/x.db"}},
		{" sqlite:///tmp/x.db\n", [3]string{"sqlite:///tmp/x.db", "sqlite", "/tmp/x.db"}},
	},
	"ORCH_MASTER_KEY": {
		{pyKey, pyKey},
		{strings.TrimSuffix(pyKey, "="), strings.TrimSuffix(pyKey, "=")},
		{strings.NewReplacer("-", "+", "_", "/").Replace(pyKey), strings.NewReplacer("-", "+", "_", "/").Replace(pyKey)},
		{pyKey + "," + pyOldKey, pyKey + "," + pyOldKey},
		{pyKey + " , " + pyOldKey, pyKey + " , " + pyOldKey},
		{"  " + pyKey + "  ", pyKey},
	},
	"ORCH_ADMIN_KEY": {
		{"dev-admin-key", "dev-admin-key"},
		{" 0123456789abcdef0123 ", "0123456789abcdef0123"},
	},
	"ORCH_ENGINE_IMAGE": {
		{"september-engine:2.3.0", "september-engine:2.3.0"},
		{"registry.example.com:5000/team/engine@sha256:abc", "registry.example.com:5000/team/engine@sha256:abc"},
	},
	"ORCH_ENGINE_BACKEND":    {{"docker", "docker"}, {"subprocess", "subprocess"}, {"Subprocess", "subprocess"}, {"kubernetes", "kubernetes"}},
	"ORCH_K8S_NAMESPACE":     {{"engines", "engines"}, {"bap-engine-1", "bap-engine-1"}},
	"ORCH_K8S_STORAGE_CLASS": {{"gp3", "gp3"}, {"premium-rwo", "premium-rwo"}, {"ebs.csi.aws.com", "ebs.csi.aws.com"}},
	"ORCH_K8S_VOLUME_SIZE":   {{"1Gi", "1Gi"}, {"512Mi", "512Mi"}, {"10G", "10G"}, {"1.5Gi", "1.5Gi"}},
	"ORCH_K8S_CATALOG_PVC":   {{"catalog", "catalog"}, {"shared-catalog.v2", "shared-catalog.v2"}},
	"ORCH_ENGINE_ENV_PASSTHROUGH": {
		{"LLM_API_KEY,OPENAI_API_KEY,ANTHROPIC_API_KEY,GEMINI_API_KEY", []string{"LLM_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"}},
		{" A , _b,A,, c9 ,", []string{"A", "_b", "c9"}},
		{",", []string(nil)},
	},
	"ORCH_ENGINE_NETWORK":      {{"myproj_engine_net", "myproj_engine_net"}, {"net.1-a", "net.1-a"}},
	"ORCH_PORT_MIN":            {{"1", 1}, {"9500", 9500}},
	"ORCH_PORT_MAX":            {{"65535", 65535}, {" 9001 ", 9001}},
	"ORCH_HEALTH_MAX_FAILURES": {{"1", 1}, {"10", 10}},
	"ORCH_HEALTH_CHECK_INTERVAL_S": {
		{"0.2", 200 * time.Millisecond}, {"1", time.Second}, {"2.5", 2500 * time.Millisecond},
		{".05", 50 * time.Millisecond}, {"1e1", 10 * time.Second}, {"0.000000001", time.Nanosecond},
	},
	"ORCH_HEALTH_CHECK_TIMEOUT_S": {{"0.1", 100 * time.Millisecond}, {"10", 10 * time.Second}},
	"ORCH_RESTART_BACKOFF_BASE_S": {{"0.2", 200 * time.Millisecond}},
	"ORCH_RESTART_BACKOFF_MAX_S":  {{"5", 5 * time.Second}, {"3600", time.Hour}},
	"ORCH_RESTART_MAX_ATTEMPTS":   {{"0", 0}, {"100", 100}},
	"ORCH_BOOT_TIMEOUT_S":         {{"0.5", 500 * time.Millisecond}, {"120", 2 * time.Minute}},
	"ORCH_CATALOG_MOUNT_PATH":     {{"/srv/catalog", "/srv/catalog"}, {"./catalog", "./catalog"}},
	"DOCKER_HOST": {
		{"unix:///var/run/docker.sock", "unix:///var/run/docker.sock"},
		{"tcp://10.0.0.5:2376", "tcp://10.0.0.5:2376"},
		{"ssh://deploy@host", "ssh://deploy@host"},
	},
	"ORCH_LISTEN_ADDR":         {{"127.0.0.1:0", "127.0.0.1:0"}, {"[::1]:8080", "[::1]:8080"}, {":9000", ":9000"}},
	"ORCH_DATA_ROOT":           {{"./.bap-engine/engine-data", "./.bap-engine/engine-data"}, {"/tmp/d", "/tmp/d"}},
	"ORCH_HTTP_READ_TIMEOUT_S": {{"0.5", 500 * time.Millisecond}, {"300", 5 * time.Minute}},
	"ORCH_HTTP_IDLE_TIMEOUT_S": {{"1.5", 1500 * time.Millisecond}, {"3600", time.Hour}},
	"ORCH_HTTP_MAX_CONNS":      {{"1", 1}, {" 50000 ", 50000}},
	"ORCH_SUBPROCESS_COMMAND": {
		{"/usr/local/bin/bap-engine engine", []string{"/usr/local/bin/bap-engine", "engine"}},
		{`python3 -m engine --name 'my engine' "two words"`, []string{"python3", "-m", "engine", "--name", "my engine", "two words"}},
		{`a  "x \"q\" \\ \$" 'it''s' b\ c`, []string{"a", `x "q" \ $`, "its", "b c"}},
	},
	"ORCH_DEPLOYMENT_ID":   {{"prod-eu.1_a", "prod-eu.1_a"}},
	"ORCH_IDLE_TIMEOUT_S":  {{"0", time.Duration(0)}, {"0.3", 300 * time.Millisecond}, {"86400", 24 * time.Hour}},
	"ORCH_SLEEP_MODE":      {{"mark", "mark"}, {"pause", "pause"}, {"STOP", "stop"}},
	"ORCH_ENGINE_URL_MODE": {{"host", "host"}, {"network", "network"}},
	"ORCH_ENGINE_HOST": {
		{"localhost", "localhost"}, {"host.docker.internal", "host.docker.internal"},
		{"10.1.2.3", "10.1.2.3"}, {"::1", "::1"}, {"[fe80::1]", "fe80::1"},
	},
	"ORCH_PLATFORM_KEY_GRACE_S":      {{"0", time.Duration(0)}, {"1.5", 1500 * time.Millisecond}},
	"ORCH_RECONCILE_GRACE_S":         {{"0", time.Duration(0)}, {"0.5", 500 * time.Millisecond}},
	"ORCH_REPLICA_TTL_S":             {{"10", 10 * time.Second}, {"2.5", 2500 * time.Millisecond}},
	"ORCH_SNAPSHOTS_KEPT":            {{"1", 1}, {"5", 5}},
	"ORCH_HELPER_IMAGE":              {{"registry.local/bap-engine:1.2", "registry.local/bap-engine:1.2"}},
	"ORCH_PPROF_ADDR":                {{"127.0.0.1:6060", "127.0.0.1:6060"}, {"[::1]:0", "[::1]:0"}},
	"ORCH_METRICS_TOKEN":             {{"scrape-token-0123456789", "scrape-token-0123456789"}},
	"ORCH_MAX_CONCURRENT_PROVISIONS": {{"0", 0}, {"64", 64}},
	"ORCH_ADMIT_CACHE_S":             {{"0", time.Duration(0)}, {"30", 30 * time.Second}},
	"ORCH_AUDIT_RETENTION_DAYS":      {{"0", 0}, {"90", 90}, {"36500", 36500}},
	"ORCH_LOG_LEVEL": {
		{"debug", slog.LevelDebug}, {"INFO", slog.LevelInfo}, {"warn", slog.LevelWarn},
		{"warning", slog.LevelWarn}, {"error", slog.LevelError},
	},
	"ORCH_LOG_FORMAT": {{"json", "json"}, {"Text", "text"}},
}

func TestGoodValues(t *testing.T) {
	t.Parallel()
	for name, cases := range goodCases {
		get, ok := getters[name]
		require.True(t, ok, "no getter for %s", name)
		for _, tc := range cases {
			t.Run(name+"="+tc.value, func(t *testing.T) {
				t.Parallel()
				c, err := Load(env(name, tc.value))
				require.NoError(t, err)
				require.Equal(t, tc.want, get(c))
			})
		}
	}
}

type badCase struct {
	value string
	want  string // part of the reason
}

var badCases = map[string][]badCase{
	"ORCH_DATABASE_URL": {
		{"mysql://u:hunter2pw@h/db", `unsupported scheme "mysql"`},
		{"hunter2-not-a-url", "not a URL"},
		{"://hunter2pw@h", "not a URL"},
		{"sqlite://", "names no database file"},
		{"sqlite:///tmp/x.db?mode=memory", "plain file path"},
		{"postgresql://u:hunter2pw@h:port/db", "not a valid postgresql:// URL"},
		{"pass:word@hunter2://h", `unsupported scheme "(unreadable)"`},
	},
	"ORCH_MASTER_KEY": {
		{"hunter2-master", "not a Fernet key"},
		{strings.Repeat("ab", 32), "not a Fernet key"},
		{pyKey + ",,", "keys 2, 3 of 3 are not Fernet keys"},
		{pyKey + ",!" + pyOldKey[1:], "key 2 of 2 is not a Fernet key"},
		{pyKey[:42] + "=", "not a Fernet key"},
	},
	"ORCH_ENGINE_IMAGE":      {{"my image", "whitespace"}},
	"ORCH_ENGINE_BACKEND":    {{"nomad", "not one of docker, subprocess, kubernetes"}},
	"ORCH_K8S_NAMESPACE":     {{"Engines", "not a Kubernetes namespace"}, {"my_ns", "not a Kubernetes namespace"}, {"-ns", "not a Kubernetes namespace"}},
	"ORCH_K8S_STORAGE_CLASS": {{"Fast SSD", "not a Kubernetes storage class"}},
	"ORCH_K8S_VOLUME_SIZE":   {{"1GB", "not a positive Kubernetes quantity"}, {"0", "not a positive"}, {"-1Gi", "not a positive"}, {"big", "not a positive"}},
	"ORCH_K8S_CATALOG_PVC":   {{"Catalog", "not a Kubernetes PVC name"}},
	"ORCH_ENGINE_ENV_PASSTHROUGH": {
		{"GOOD,1BAD", `"1BAD" is not a variable name`},
		{"A-B", "not a variable name"},
		{"LLM_API_KEY,ORCH_MASTER_KEY", "ORCH_MASTER_KEY is the orchestrator's own"},
		{"orch_admin_key", "orchestrator's own"},
		{"ENGINE_KEY_HASH", "set by the orchestrator"},
		{"SQLITE_DB_PATH", "set by the orchestrator"},
	},
	"ORCH_ENGINE_NETWORK":            {{"-net", "not a Docker network name"}, {"my net", "not a Docker network name"}},
	"ORCH_PORT_MIN":                  {{"0", "between 1 and 65535"}, {"65536", "between 1 and 65535"}, {"9001.5", "not a whole number"}, {"x", "not a whole number"}},
	"ORCH_PORT_MAX":                  {{"-1", "between 1 and 65535"}, {"100000", "between 1 and 65535"}, {"1e4", "not a whole number"}},
	"ORCH_HEALTH_CHECK_INTERVAL_S":   {{"0", "greater than 0"}, {"-1", "negative"}, {"NaN", "not a number"}, {"inf", "not a number"}, {"30s", "not a number"}, {"abc", "not a number"}, {"0.0000000001", "greater than 0"}},
	"ORCH_HEALTH_CHECK_TIMEOUT_S":    {{"0", "greater than 0"}, {"-0.5", "negative"}},
	"ORCH_HEALTH_MAX_FAILURES":       {{"0", "between 1"}, {"three", "not a whole number"}},
	"ORCH_RESTART_BACKOFF_BASE_S":    {{"0", "greater than 0"}, {"1e300", "too large"}},
	"ORCH_RESTART_BACKOFF_MAX_S":     {{"0", "greater than 0"}, {"-Infinity", "not a number"}},
	"ORCH_RESTART_MAX_ATTEMPTS":      {{"-1", "between 0"}, {"8x", "not a whole number"}},
	"ORCH_BOOT_TIMEOUT_S":            {{"0", "greater than 0"}, {"1,5", "not a number"}},
	"DOCKER_HOST":                    {{"/var/run/docker.sock", "not a daemon address"}, {"tcp://", "not a daemon address"}},
	"ORCH_HTTP_READ_TIMEOUT_S":       {{"0", "greater than 0"}, {"-30", "negative"}, {"30s", "not a number"}},
	"ORCH_HTTP_IDLE_TIMEOUT_S":       {{"0", "greater than 0"}, {"two minutes", "not a number"}},
	"ORCH_HTTP_MAX_CONNS":            {{"0", "between 1"}, {"-5", "between 1"}, {"10k", "not a whole number"}, {"1e4", "not a whole number"}},
	"ORCH_LISTEN_ADDR":               {{"8000", "not host:port"}, {"localhost", "not host:port"}, {"127.0.0.1:", "not host:port"}},
	"ORCH_SUBPROCESS_COMMAND":        {{`engine --name 'oops`, "unterminated single quote"}, {`engine "oops`, "unterminated double quote"}, {`engine oops\`, "trailing backslash"}, {`"" x`, "program name is empty"}},
	"ORCH_DEPLOYMENT_ID":             {{"prod/eu", "only letters"}, {"a b", "only letters"}, {"prod:1", "only letters"}},
	"ORCH_IDLE_TIMEOUT_S":            {{"-1", "negative"}, {"soon", "not a number"}},
	"ORCH_SLEEP_MODE":                {{"hibernate", "not one of mark, pause, stop"}},
	"ORCH_ENGINE_URL_MODE":           {{"proxy", "not one of host, network"}},
	"ORCH_ENGINE_HOST":               {{"http://127.0.0.1", "not a host name"}, {"127.0.0.1:9000", "not a host name"}, {"host/path", "not a host name"}, {"[localhost]", "not a host name"}},
	"ORCH_PLATFORM_KEY_GRACE_S":      {{"-300", "negative"}, {"five", "not a number"}},
	"ORCH_RECONCILE_GRACE_S":         {{"-1", "negative"}, {"soon", "not a number"}},
	"ORCH_REPLICA_TTL_S":             {{"0", "greater than 0"}, {"-3", "negative"}, {"ever", "not a number"}},
	"ORCH_SNAPSHOTS_KEPT":            {{"0", "between 1 and 1000"}, {"two", "not a whole number"}},
	"ORCH_HELPER_IMAGE":              {{"two words", "whitespace"}},
	"ORCH_PPROF_ADDR":                {{":6060", "loopback"}, {"0.0.0.0:6060", "loopback"}, {"localhost", "not host:port"}},
	"ORCH_METRICS_TOKEN":             {{"short", "at least 16"}, {"has a space in it, long enough", "without spaces"}},
	"ORCH_MAX_CONCURRENT_PROVISIONS": {{"-1", "between 0 and"}, {"many", "not a whole number"}},
	"ORCH_ADMIT_CACHE_S":             {{"-5", "negative"}, {"long", "not a number"}},
	"ORCH_AUDIT_RETENTION_DAYS":      {{"-1", "between 0 and 36500"}, {"36501", "between 0 and 36500"}, {"7.5", "not a whole number"}},
	"ORCH_LOG_LEVEL":                 {{"verbose", "not one of debug, info, warn, error"}},
	"ORCH_LOG_FORMAT":                {{"xml", "not one of json, text"}},
}

// noBadValue lists the variables that accept any value.
var noBadValue = map[string]bool{
	"ORCH_ADMIN_KEY":          true, // strength is checked by ValidateServe
	"ORCH_CATALOG_MOUNT_PATH": true,
	"ORCH_DATA_ROOT":          true,
}

func TestBadValues(t *testing.T) {
	t.Parallel()
	secret := map[string]bool{}
	for _, v := range Vars() {
		secret[v.Name] = v.Secret
	}
	for name, cases := range badCases {
		for _, tc := range cases {
			t.Run(name+"="+tc.value, func(t *testing.T) {
				t.Parallel()
				c, err := Load(env(name, tc.value))
				require.Equal(t, Config{}, c, "a failed Load returns no half-made config")
				errs := varErrors(t, err)
				require.Len(t, errs, 1, "%v", err)
				require.Equal(t, name, errs[0].Var)
				msg := err.Error()
				require.True(t, strings.HasPrefix(msg, name+": "), "error must name the variable: %s", msg)
				require.Contains(t, msg, tc.want)
				if secret[name] {
					require.NotContains(t, msg, tc.value, "secret value echoed")
					require.NotContains(t, msg, "hunter2", "secret value echoed")
				} else {
					shown := tc.value
					if name == "ORCH_ENGINE_ENV_PASSTHROUGH" {
						shown = shown[strings.LastIndex(shown, ",")+1:] // the offending name
					}
					require.True(t, strings.Contains(msg, shown) || strings.Contains(msg, strconv.Quote(shown)),
						"the error should show the bad value: %s", msg)
				}
			})
		}
	}
}

func TestEveryVarIsTested(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	secrets := map[string]bool{}
	for _, v := range Vars() {
		require.False(t, seen[v.Name], "%s declared twice", v.Name)
		seen[v.Name] = true
		require.True(t, strings.HasPrefix(v.Name, "ORCH_") || v.Name == "DOCKER_HOST", v.Name)
		require.NotEmpty(t, v.Help, v.Name)
		require.NotNil(t, v.parse, v.Name)
		require.Contains(t, getters, v.Name)
		require.NotEmpty(t, goodCases[v.Name], "no good values tested for %s", v.Name)
		require.True(t, noBadValue[v.Name] || len(badCases[v.Name]) > 0, "no bad values tested for %s", v.Name)
		if v.Secret {
			secrets[v.Name] = true
		}
	}
	require.Len(t, seen, len(getters), "getters name a variable that is not in the table")
	require.Equal(t, map[string]bool{"ORCH_DATABASE_URL": true, "ORCH_MASTER_KEY": true, "ORCH_ADMIN_KEY": true, "ORCH_METRICS_TOKEN": true}, secrets)

	// Vars returns a copy: changing it does not change Load.
	vs := Vars()
	vs[0].Default = "changed"
	require.NotEqual(t, "changed", Vars()[0].Default)
}

func TestCrossChecks(t *testing.T) {
	t.Parallel()
	_, err := Load(env("ORCH_PORT_MIN", "9500", "ORCH_PORT_MAX", "9400"))
	errs := varErrors(t, err)
	require.Len(t, errs, 1)
	require.Equal(t, "ORCH_PORT_MAX", errs[0].Var)
	require.Contains(t, err.Error(), "9400 is below ORCH_PORT_MIN (9500)")

	c, err := Load(env("ORCH_PORT_MIN", "9500", "ORCH_PORT_MAX", "9500"))
	require.NoError(t, err)
	require.Equal(t, [2]int{9500, 9500}, [2]int{c.PortMin, c.PortMax})

	// A default on one side counts too.
	_, err = Load(env("ORCH_PORT_MIN", "10000"))
	require.Contains(t, err.Error(), "ORCH_PORT_MAX: 9999 is below ORCH_PORT_MIN (10000)")

	// A bad value is reported once, not again by the comparison.
	_, err = Load(env("ORCH_PORT_MIN", "x", "ORCH_PORT_MAX", "2"))
	errs = varErrors(t, err)
	require.Len(t, errs, 1)
	require.Equal(t, "ORCH_PORT_MIN", errs[0].Var)

	_, err = Load(env("ORCH_RESTART_BACKOFF_BASE_S", "10", "ORCH_RESTART_BACKOFF_MAX_S", "2.5"))
	errs = varErrors(t, err)
	require.Len(t, errs, 1)
	require.Equal(t, "ORCH_RESTART_BACKOFF_MAX_S", errs[0].Var)
	require.Contains(t, err.Error(), "2.5s is below ORCH_RESTART_BACKOFF_BASE_S (10s)")

	// Kubernetes cannot freeze a Pod: pause sleep is refused at start-up.
	_, err = Load(env("ORCH_ENGINE_BACKEND", "kubernetes", "ORCH_SLEEP_MODE", "pause"))
	errs = varErrors(t, err)
	require.Len(t, errs, 1)
	require.Equal(t, "ORCH_SLEEP_MODE", errs[0].Var)
	require.Contains(t, err.Error(), "not possible with ORCH_ENGINE_BACKEND=kubernetes")
	for _, mode := range []string{"mark", "stop"} {
		_, err = Load(env("ORCH_ENGINE_BACKEND", "kubernetes", "ORCH_SLEEP_MODE", mode))
		require.NoError(t, err)
	}

	c, err = Load(env("ORCH_RESTART_BACKOFF_BASE_S", "0.2", "ORCH_RESTART_BACKOFF_MAX_S", "0.2"))
	require.NoError(t, err)
	require.Equal(t, c.RestartBackoffBase, c.RestartBackoffMax)
}

func TestLoadReportsEveryError(t *testing.T) {
	t.Parallel()
	bad := env(
		"ORCH_DATABASE_URL", "mysql://x",
		"ORCH_MASTER_KEY", "nope",
		"ORCH_ENGINE_BACKEND", "k8s",
		"ORCH_HEALTH_CHECK_INTERVAL_S", "0",
		"ORCH_BOOT_TIMEOUT_S", "-1",
		"ORCH_LOG_LEVEL", "loud",
		"ORCH_PORT_MIN", "9999", "ORCH_PORT_MAX", "9001",
		"ORCH_ENGINE_URL_MODE", "ORCH_ENGINE_URL_MODE",
	)
	_, err := Load(bad)
	var names []string
	for _, e := range varErrors(t, err) {
		names = append(names, e.Var)
	}
	// Table order, then the cross-variable checks.
	require.Equal(t, []string{
		"ORCH_DATABASE_URL", "ORCH_MASTER_KEY", "ORCH_ENGINE_BACKEND", "ORCH_HEALTH_CHECK_INTERVAL_S",
		"ORCH_BOOT_TIMEOUT_S", "ORCH_ENGINE_URL_MODE", "ORCH_LOG_LEVEL", "ORCH_PORT_MAX",
	}, names)
	require.Len(t, strings.Split(err.Error(), "\n"), len(names), "one line per bad variable")
}

func TestValidateServe(t *testing.T) {
	t.Parallel()
	good := env(
		"ORCH_DATABASE_URL", "sqlite:///tmp/bap.db",
		"ORCH_MASTER_KEY", pyKey+","+pyOldKey,
		"ORCH_ADMIN_KEY", "0123456789abcdef",
	)
	c, err := Load(good)
	require.NoError(t, err)
	require.NoError(t, c.ValidateServe())

	empty, err := Load(env())
	require.NoError(t, err, "Load knows no mode: missing keys are fine for client commands")
	errs := varErrors(t, empty.ValidateServe())
	require.Len(t, errs, 3)
	for i, name := range []string{"ORCH_DATABASE_URL", "ORCH_MASTER_KEY", "ORCH_ADMIN_KEY"} {
		require.Equal(t, name, errs[i].Var)
		require.Contains(t, errs[i].Error(), "required by serve")
	}
	require.Contains(t, errs[1].Error(), "bap-engine keygen")

	for _, weak := range []string{"dev-admin-key", "zq", "fifteen-chars!!", "ünïcødé-ünïcødé"} {
		w := c
		w.AdminKey = weak
		require.NoError(t, w.ValidateServe(), "any admin key is accepted, as by the original")
		require.True(t, w.WeakAdminKey())
	}
	require.False(t, c.WeakAdminKey())

	// A Config assembled by hand (as the dev command may) is checked in full.
	hand := c
	hand.MasterKey = "hand-made-secret"
	hand.DatabaseURL = "mysql://u:hunter2@h/db"
	errs = varErrors(t, hand.ValidateServe())
	require.Len(t, errs, 2)
	require.Equal(t, "ORCH_DATABASE_URL", errs[0].Var)
	require.Equal(t, "ORCH_MASTER_KEY", errs[1].Var)
	require.NotContains(t, errs[0].Error(), "hunter2")
	require.NotContains(t, errs[1].Error(), "hand-made-secret")
}

func TestSecretsNeverShown(t *testing.T) {
	t.Parallel()
	c, err := Load(env(
		"ORCH_DATABASE_URL", "postgresql://orch:hunter2pw@db:5432/orch?password=hunter3pw",
		"ORCH_MASTER_KEY", pyKey,
		"ORCH_ADMIN_KEY", "admin-hunter4-secret",
	))
	require.NoError(t, err)
	var logged strings.Builder
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("starting", "config", c)
	for _, out := range []string{logged.String(), c.String(), fmt.Sprintf("%v", c), fmt.Sprintf("%+v", c)} {
		for _, secret := range []string{"hunter2pw", "hunter3pw", "hunter4", pyKey[:20]} {
			require.NotContains(t, out, secret)
		}
		require.Contains(t, out, "db:5432", "non-secret parts stay visible")
		require.Contains(t, out, "september-engine:latest")
	}

	// The safety net hides a secret value even if a parser message quoted it.
	v := Var{Name: "ORCH_X", Secret: true}
	e := v.error("s3cr3t-value", fmt.Errorf("bad %q", "s3cr3t-value"))
	require.NotContains(t, e.Error(), "s3cr3t-value")
	require.Equal(t, "ORCH_X", e.Var)
}

func TestSplitCommand(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"   \t", nil},
		{"a", []string{"a"}},
		{" a\tb\n c ", []string{"a", "b", "c"}},
		{`'a b' "c d"`, []string{"a b", "c d"}},
		{`pre'mid dle'post`, []string{"premid dlepost"}},
		{`''`, []string{""}},
		{`a '' b`, []string{"a", "", "b"}},
		{`'\n' "\n"`, []string{`\n`, `\n`}},
		{`"a\"b" 'a"b' "a'b"`, []string{`a"b`, `a"b`, `a'b`}},
		{`a\ b \'c\'`, []string{"a b", "'c'"}},
		{`"ünï code" ✓`, []string{"ünï code", "✓"}},
	} {
		got, err := splitCommand(tc.in)
		require.NoError(t, err, tc.in)
		require.Equal(t, tc.want, got, tc.in)
	}
}

func TestLoadServeReportsEverythingAtOnce(t *testing.T) {
	_, err := LoadServe(env("ORCH_PORT_MIN", "banana", "ORCH_MASTER_KEY", "not-a-key"))
	require.Error(t, err)
	for _, name := range []string{"ORCH_PORT_MIN", "ORCH_MASTER_KEY", "ORCH_ADMIN_KEY", "ORCH_DATABASE_URL"} {
		require.Contains(t, err.Error(), name)
	}
	require.NotContains(t, err.Error(), "not-a-key")
	require.Equal(t, 1, strings.Count(err.Error(), "ORCH_MASTER_KEY"), "a variable is reported once")
}
