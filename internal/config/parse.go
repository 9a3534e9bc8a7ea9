package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// errInvalidSecret replaces any message that would repeat a secret value.
var errInvalidSecret = errors.New("invalid value (not shown: the variable is secret)")

// Limits of the integer settings; they only keep arithmetic on them safe.
const (
	maxCount         = math.MaxInt32
	maxRetentionDays = 36500
)

// Whether a duration setting may be zero.
const (
	positive    = false
	zeroAllowed = true
)

// duration parses a number of seconds (fractions allowed) into *field.
func duration(field func(*Config) *time.Duration, allowZero bool) func(*Config, string) error {
	return func(c *Config, v string) error {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return fmt.Errorf("%q is not a number of seconds", v)
		}
		if f < 0 {
			return fmt.Errorf("%q is negative", v)
		}
		ns := math.Round(f * float64(time.Second))
		if ns >= math.MaxInt64 {
			return fmt.Errorf("%q seconds is too large", v)
		}
		d := time.Duration(ns)
		if d == 0 && !allowZero {
			return fmt.Errorf("must be greater than 0 seconds, got %q", v)
		}
		*field(c) = d
		return nil
	}
}

// integer parses a whole number in [lo, hi] into *field.
func integer(field func(*Config) *int, lo, hi int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", v)
		}
		if n < lo || n > hi {
			return fmt.Errorf("must be between %d and %d, got %d", lo, hi, n)
		}
		*field(c) = n
		return nil
	}
}

// oneOf accepts one of allowed, in any letter case, into *field.
func oneOf(field func(*Config) *string, allowed ...string) func(*Config, string) error {
	return func(c *Config, v string) error {
		lv := strings.ToLower(v)
		for _, a := range allowed {
			if lv == a {
				*field(c) = a
				return nil
			}
		}
		return fmt.Errorf("%q is not one of %s", v, strings.Join(allowed, ", "))
	}
}

// word accepts any value without whitespace into *field.
func word(field func(*Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error {
		if strings.ContainsFunc(v, isSpace) {
			return fmt.Errorf("%q contains whitespace", v)
		}
		*field(c) = v
		return nil
	}
}

func isSpace(r rune) bool {
	return r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '\v' || r == '\f'
}

// parseDatabaseURL accepts postgres://, postgresql:// and sqlite:// URLs
// (with an optional SQLAlchemy driver suffix such as postgresql+asyncpg://).
// The value may hold a password, so errors name at most its scheme.
func parseDatabaseURL(c *Config, v string) error {
	if v == "" {
		return nil
	}
	scheme, rest, ok := strings.Cut(v, "://")
	if !ok || scheme == "" {
		return errors.New("not a URL: want postgresql://user:password@host:5432/dbname or sqlite:///path/to/file.db")
	}
	base, _, _ := strings.Cut(strings.ToLower(scheme), "+")
	switch base {
	case "postgres", "postgresql":
		normalized := base + "://" + rest
		if _, err := url.Parse(normalized); err != nil {
			return errors.New("not a valid postgresql:// URL (check the user, password, host and port parts; special characters in the password must be percent-encoded)")
		}
		c.DatabaseURL, c.DatabaseDriver, c.SQLitePath = normalized, DriverPostgres, ""
	case "sqlite":
		if rest == "" {
			return errors.New("sqlite URL names no database file: put an absolute path after three slashes or a relative one after two")
		}
		if strings.ContainsAny(rest, "?#") {
			return errors.New("sqlite URL must be a plain file path, without ?parameters or #fragment")
		}
		c.DatabaseURL, c.DatabaseDriver, c.SQLitePath = "sqlite://"+rest, DriverSQLite, filepath.Clean(rest)
	default:
		return fmt.Errorf("unsupported scheme %q: want postgresql:// (or postgres://) or sqlite://", safeScheme(scheme))
	}
	return nil
}

var schemeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]{0,20}$`)

// safeScheme returns a scheme only when it looks like one, so a value pasted
// without "scheme://" (a password, say) is not echoed.
func safeScheme(s string) string {
	if schemeRE.MatchString(s) {
		return s
	}
	return "(unreadable)"
}

// fernetKeyLen is the length of an encoded Fernet key without its one '='.
const fernetKeyLen = 43

// validateMasterKey checks the shape of a comma-separated Fernet key list the
// way secret.NewSealer parses it: each key is base64 (URL-safe or standard
// alphabet, padding optional) of exactly 32 bytes. Errors give positions only.
func validateMasterKey(v string) error {
	parts := strings.Split(v, ",")
	var bad []string
	for i, p := range parts {
		if !isFernetKey(strings.TrimSpace(p)) {
			bad = append(bad, strconv.Itoa(i+1))
		}
	}
	switch {
	case len(bad) == 0:
		return nil
	case len(parts) == 1:
		return errors.New("not a Fernet key: want URL-safe base64 of 32 bytes, as printed by `bap-engine keygen`")
	case len(bad) == 1:
		return fmt.Errorf("key %s of %d is not a Fernet key: want URL-safe base64 of 32 bytes, as printed by `bap-engine keygen`",
			bad[0], len(parts))
	default:
		return fmt.Errorf("keys %s of %d are not Fernet keys: want URL-safe base64 of 32 bytes, as printed by `bap-engine keygen`",
			strings.Join(bad, ", "), len(parts))
	}
}

func isFernetKey(s string) bool {
	s = strings.TrimSuffix(s, "=")
	if len(s) != fernetKeyLen {
		return false
	}
	s = strings.NewReplacer("+", "-", "/", "_").Replace(s)
	b, err := base64.RawURLEncoding.DecodeString(s)
	return err == nil && len(b) == 32
}

var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// reservedEngineVars are set by the orchestrator itself for every engine.
var reservedEngineVars = []string{"ENGINE_KEY_HASH", "SQLITE_DB_PATH", "CATALOG_DIR", "PORT"}

// parsePassthrough reads a comma-separated list of variable names. It
// refuses ORCH_* names (they hold the orchestrator's secrets) and the names
// the orchestrator sets for engines itself.
func parsePassthrough(c *Config, v string) error {
	var names, problems []string
	seen := map[string]bool{}
	for _, n := range strings.Split(v, ",") {
		n = strings.TrimSpace(n)
		switch {
		case n == "" || seen[n]:
			continue
		case !envNameRE.MatchString(n):
			problems = append(problems, fmt.Sprintf("%q is not a variable name", n))
		case strings.HasPrefix(strings.ToUpper(n), "ORCH_"):
			problems = append(problems, fmt.Sprintf("%s is the orchestrator's own and is never passed to engines", n))
		case containsFold(reservedEngineVars, n):
			problems = append(problems, fmt.Sprintf("%s is set by the orchestrator for each engine", n))
		default:
			names = append(names, n)
		}
		seen[n] = true
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	c.EngineEnvPassthrough = names
	return nil
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

var networkRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

func parseNetwork(c *Config, v string) error {
	if !networkRE.MatchString(v) {
		return fmt.Errorf("%q is not a Docker network name (letters, digits, _ . -, starting with a letter or digit)", v)
	}
	c.EngineNetwork = v
	return nil
}

func parseDockerHost(c *Config, v string) error {
	if v == "" {
		c.DockerHost = ""
		return nil
	}
	scheme, addr, ok := strings.Cut(v, "://")
	if !ok || scheme == "" || addr == "" || strings.ContainsFunc(v, isSpace) {
		return fmt.Errorf("%q is not a daemon address such as unix:///var/run/docker.sock or tcp://host:2376", v)
	}
	c.DockerHost = v
	return nil
}

func parseListenAddr(c *Config, v string) error {
	_, port, err := net.SplitHostPort(v)
	if err != nil || port == "" {
		return fmt.Errorf("%q is not host:port, e.g. :8000 or 127.0.0.1:8000", v)
	}
	c.ListenAddr = v
	return nil
}

// parsePprofAddr accepts a loopback host:port only: profiles show the
// process's insides and must not be reachable from the network.
func parsePprofAddr(c *Config, v string) error {
	if v == "" {
		c.PprofAddr = ""
		return nil
	}
	host, port, err := net.SplitHostPort(v)
	if err != nil || port == "" {
		return fmt.Errorf("%q is not host:port, e.g. 127.0.0.1:6060", v)
	}
	if ip, err := netip.ParseAddr(host); err != nil || !ip.IsLoopback() {
		return fmt.Errorf("%q must be a loopback address (127.0.0.1 or ::1): profiles are not for the network", v)
	}
	c.PprofAddr = v
	return nil
}

var deploymentRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

func parseDeploymentID(c *Config, v string) error {
	if !deploymentRE.MatchString(v) {
		return fmt.Errorf("%q may hold only letters, digits, _ . and -", v)
	}
	c.DeploymentID = v
	return nil
}

var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$`)

// parseEngineHost accepts a host name, an IPv4 address or an IPv6 address
// (brackets optional; stored without them so net.JoinHostPort adds them).
func parseEngineHost(c *Config, v string) error {
	h := v
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	if addr, err := netip.ParseAddr(h); err == nil {
		c.EngineHost = addr.String()
		return nil
	}
	if h != v || !hostnameRE.MatchString(h) {
		return fmt.Errorf("%q is not a host name or IP address (no scheme, port or path)", v)
	}
	c.EngineHost = h
	return nil
}

func parseLogLevel(c *Config, v string) error {
	switch strings.ToLower(v) {
	case "debug":
		c.LogLevel = slog.LevelDebug
	case "info":
		c.LogLevel = slog.LevelInfo
	case "warn", "warning":
		c.LogLevel = slog.LevelWarn
	case "error":
		c.LogLevel = slog.LevelError
	default:
		return fmt.Errorf("%q is not one of debug, info, warn, error", v)
	}
	return nil
}

// parseSubprocessCommand splits a command line the way a POSIX shell does
// for plain words: blanks separate arguments, single quotes keep text as is,
// double quotes keep text but honour \" \\ \$ and \`, and a backslash outside
// quotes escapes the next character. There is no expansion of any kind.
func parseSubprocessCommand(c *Config, v string) error {
	args, err := splitCommand(v)
	if err != nil {
		return fmt.Errorf("%q: %w", v, err)
	}
	if len(args) > 0 && args[0] == "" {
		return fmt.Errorf("%q: the program name is empty", v)
	}
	c.SubprocessCommand = args
	return nil
}

func splitCommand(s string) ([]string, error) {
	var args []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return nil, errors.New("unterminated single quote")
			}
			cur.WriteString(s[i+1 : i+1+end])
			i += end + 1
			inWord = true
		case ch == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\$`", s[i+1]) >= 0 {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, errors.New("unterminated double quote")
			}
			inWord = true
		case ch == '\\':
			if i+1 >= len(s) {
				return nil, errors.New("trailing backslash")
			}
			i++
			cur.WriteByte(s[i])
			inWord = true
		case isSpace(rune(ch)):
			if inWord {
				args = append(args, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(ch)
			inWord = true
		}
	}
	if inWord {
		args = append(args, cur.String())
	}
	return args, nil
}

// Kubernetes object names.
var (
	dnsLabelRE     = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	dnsSubdomainRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$`)
	quantityRE     = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$`)
)

// k8sName accepts an empty value or a Kubernetes object name matching re.
func k8sName(field func(*Config) *string, re *regexp.Regexp, what string) func(*Config, string) error {
	return func(c *Config, v string) error {
		if v != "" && !re.MatchString(v) {
			return fmt.Errorf("%q is not a Kubernetes %s: lowercase letters, digits and -", v, what)
		}
		*field(c) = v
		return nil
	}
}

// parseVolumeSize accepts a positive Kubernetes quantity.
func parseVolumeSize(c *Config, v string) error {
	if !quantityRE.MatchString(v) || strings.Trim(v, "0.KMGTPEimk") == "" {
		return fmt.Errorf("%q is not a positive Kubernetes quantity such as 1Gi or 500Mi", v)
	}
	c.K8sVolumeSize = v
	return nil
}
