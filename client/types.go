package client

import "time"

// Engine states as the API reports them.
const (
	StateProvisioning = "provisioning"
	StateRunning      = "running"
	StateSleeping     = "sleeping"
	StateStopped      = "stopped"
	StateFailed       = "failed"
	StateDestroying   = "destroying"
)

// Reasons an admit is denied (AdmitResult.Reason).
const (
	ReasonEngineNotFound  = "engine_not_found"
	ReasonEngineSleeping  = "engine_sleeping"
	ReasonEngineStopped   = "engine_stopped"
	ReasonEngineUnhealthy = "engine_unhealthy"
	ReasonEngineBusy      = "engine_busy"
)

// Fleet health values (FleetStatus.Health).
const (
	HealthOK       = "ok"
	HealthDegraded = "degraded"
	HealthCritical = "critical"
)

// Engine is one user's engine (EngineInfo). APIKey is empty in List
// results, which never carry keys.
type Engine struct {
	EngineID      string     `json:"engine_id"`
	UserID        string     `json:"user_id"`
	Status        string     `json:"status"`
	URL           string     `json:"url"`
	APIKey        string     `json:"api_key,omitempty"`
	EngineVersion string     `json:"engine_version"`
	CreatedAt     time.Time  `json:"created_at"`
	LastHealthAt  *time.Time `json:"last_health_at"`
	// Operation is the operation in flight, if any (an upgrade shows its
	// phase: snapshotting, creating, waiting_for_health, rolling_back).
	Operation *Operation `json:"operation,omitempty"`
}

// Operation is an operation in flight on an engine.
type Operation struct {
	Op    string `json:"op"`
	Phase string `json:"phase,omitempty"`
}

// Upgraded is the answer of Upgrade.
type Upgraded struct {
	EngineID        string `json:"engine_id"`
	UserID          string `json:"user_id"`
	Status          string `json:"status"`
	URL             string `json:"url"`
	EngineVersion   string `json:"engine_version"`
	PreviousVersion string `json:"previous_version"`
}

// ProvisionRequest asks for a new engine. EngineVersion (an image
// reference) is optional; the orchestrator's default image is used without.
type ProvisionRequest struct {
	UserID        string `json:"user_id"`
	EngineVersion string `json:"engine_version,omitempty"`
}

// Provisioned is the answer to a provision: the engine, running, and its
// plaintext key (shown here and by Get/Admit, never stored in plaintext).
type Provisioned struct {
	EngineID string `json:"engine_id"`
	UserID   string `json:"user_id"`
	Status   string `json:"status"`
	URL      string `json:"url"`
	APIKey   string `json:"api_key"`
}

// Destroyed is the answer to a destroy.
type Destroyed struct {
	Status   string `json:"status"`
	EngineID string `json:"engine_id"`
}

// Started is the answer to a start.
type Started struct {
	Status string `json:"status"`
	URL    string `json:"url"`
}

// Stopped is the answer to a stop.
type Stopped struct {
	Status   string `json:"status"`
	EngineID string `json:"engine_id"`
}

// KeyRotated is the answer to an engine key rotation: the new plaintext
// key; the old one no longer works.
type KeyRotated struct {
	EngineID string `json:"engine_id"`
	APIKey   string `json:"api_key"`
	Status   string `json:"status"`
}

// AdmitOptions says what admit may do when the engine is not running.
type AdmitOptions struct {
	// AutoProvision provisions an engine when the user has none.
	AutoProvision bool `json:"auto_provision"`
	// AutoWake wakes a sleeping or stopped engine.
	AutoWake bool `json:"auto_wake"`
}

// AdmitResult is the answer to an admit: the engine when admitted, else
// the reason (one of the Reason constants).
type AdmitResult struct {
	Admitted bool    `json:"admitted"`
	Engine   *Engine `json:"engine"`
	Reason   string  `json:"reason,omitempty"`
}

// ListOptions filters and pages List. Zero values mean any status, the
// server's default limit (100) and offset 0.
type ListOptions struct {
	Status string
	Limit  int
	Offset int
}

// EngineList is one page of engines (without keys) and the total matching.
type EngineList struct {
	Engines []Engine `json:"engines"`
	Total   int      `json:"total"`
}

// FleetStatus summarises the calling product's engines.
type FleetStatus struct {
	Total          int            `json:"total"`
	ByStatus       map[string]int `json:"by_status"`
	Health         string         `json:"health"`
	UnhealthyCount int            `json:"unhealthy_count"`
}

// FleetMetrics are the calling product's operational numbers from the
// audit log: the last hour and all time.
type FleetMetrics struct {
	Provisions1h    int     `json:"provisions_1h"`
	Crashes1h       int     `json:"crashes_1h"`
	Restarts1h      int     `json:"restarts_1h"`
	AvgBootMS       float64 `json:"avg_boot_ms"`
	TotalProvisions int     `json:"total_provisions"`
	TotalDestroys   int     `json:"total_destroys"`
}

// AuditOptions pages Audit. Zero values mean the server's default limit
// (100) and offset 0.
type AuditOptions struct {
	Limit  int
	Offset int
}

// AuditEntry is one recorded action on an engine.
type AuditEntry struct {
	Timestamp  time.Time      `json:"timestamp"`
	Action     string         `json:"action"`
	Actor      string         `json:"actor"`
	Metadata   map[string]any `json:"metadata"`
	DurationMS *int64         `json:"duration_ms"`
}

// AuditPage is one page of an engine's audit trail, newest first, and the
// total number of entries.
type AuditPage struct {
	Entries []AuditEntry `json:"entries"`
	Total   int          `json:"total"`
}

// Policy is a product's policy object. Known keys: max_engines,
// rate_limit_rpm, max_running, engine_memory_mb, engine_cpus; others are
// kept and ignored. An empty policy means no limits.
type Policy map[string]any

// ProductRequest registers a product.
type ProductRequest struct {
	Slug        string `json:"slug"`
	DisplayName string `json:"display_name"`
	Policy      Policy `json:"policy,omitempty"`
}

// Product is the answer to a registration. PlatformAPIKey is shown only
// here: the orchestrator keeps its hash.
type Product struct {
	ProductID      string `json:"product_id"`
	Slug           string `json:"slug"`
	PlatformAPIKey string `json:"platform_api_key"`
}

// PlatformKeyRotated is the answer to a platform key rotation: the new key
// (shown once) and until when the previous key keeps working.
type PlatformKeyRotated struct {
	ProductID            string    `json:"product_id"`
	PlatformAPIKey       string    `json:"platform_api_key"`
	PreviousKeyExpiresAt time.Time `json:"previous_key_expires_at"`
}

// Health is the orchestrator's own health.
type Health struct {
	Status string `json:"status"`
}

// Build is the orchestrator's build (Version): the release ("dev" unless
// stamped), the source commit ("unknown" when not known) and the Go version.
type Build struct {
	Version string `json:"version"`
	Commit  string `json:"commit"`
	Go      string `json:"go"`
}

// Replica is one orchestrator process sharing the database.
type Replica struct {
	ReplicaID   string    `json:"replica_id"`
	Host        string    `json:"host"`
	Pid         int       `json:"pid"`
	Version     string    `json:"version"`
	StartedAt   time.Time `json:"started_at"`
	HeartbeatAt time.Time `json:"heartbeat_at"`
	// Alive: its heartbeat is younger than ORCH_REPLICA_TTL_S.
	Alive bool `json:"alive"`
	// Shards is how many shards of the engines' background work it holds.
	Shards int `json:"shards"`
}

// ReplicaList is the answer to Replicas.
type ReplicaList struct {
	Replicas []Replica `json:"replicas"`
}

// ProductInfo is a product as operators see it (never its key), with its
// engines counted by state (every state named).
type ProductInfo struct {
	ProductID       string         `json:"product_id"`
	Slug            string         `json:"slug"`
	DisplayName     string         `json:"display_name"`
	Policy          Policy         `json:"policy"`
	CreatedAt       time.Time      `json:"created_at"`
	EnginesByStatus map[string]int `json:"engines_by_status"`
}

// ProductList is the answer to Products: every product, ordered by slug.
type ProductList struct {
	Products []ProductInfo `json:"products"`
	Total    int           `json:"total"`
}

// FleetOptions filters and pages FleetEngines. Zero values mean every
// product, any status, any user, the server's default limit (100) and
// offset 0.
type FleetOptions struct {
	// Product is a product's id or slug.
	Product string
	Status  string
	// UserID selects the user ids containing it, ignoring case.
	UserID string
	Limit  int
	Offset int
}

// FleetEngine is an engine of any product (without its key), with the
// product's slug and the engine's health counters.
type FleetEngine struct {
	Engine
	ProductSlug    string `json:"product_slug"`
	HealthFailures int    `json:"health_failures"`
	// RestartCount is how many automatic restarts were tried since the
	// engine was last healthy.
	RestartCount int `json:"restart_count"`
}

// FleetEngineList is one page of FleetEngines and the total matching.
type FleetEngineList struct {
	Engines []FleetEngine `json:"engines"`
	Total   int           `json:"total"`
}

// LogOptions choose what Logs returns. Tail 0 asks for the server's
// default (200 lines); a negative Tail for everything kept.
type LogOptions struct {
	Tail   int
	Follow bool
}

// RolloutRequest starts a rollout (SPEC §16). Zero MaxParallel and
// MaxFailures take the server's defaults (2 and 1).
type RolloutRequest struct {
	EngineVersion string `json:"engine_version"`
	Percent       int    `json:"percent"`
	MaxParallel   int    `json:"max_parallel,omitempty"`
	MaxFailures   int    `json:"max_failures,omitempty"`
}

// RolloutCounts are a rollout's chosen engines by outcome.
type RolloutCounts struct {
	Pending    int `json:"pending"`
	Upgraded   int `json:"upgraded"`
	RolledBack int `json:"rolled_back"`
	Skipped    int `json:"skipped"`
}

// Rollout is a canary or fleet upgrade of a product's engines.
type Rollout struct {
	RolloutID     string        `json:"rollout_id"`
	EngineVersion string        `json:"engine_version"`
	Percent       int           `json:"percent"`
	MaxParallel   int           `json:"max_parallel"`
	MaxFailures   int           `json:"max_failures"`
	State         string        `json:"state"`
	Reason        string        `json:"reason,omitempty"`
	Counts        RolloutCounts `json:"counts"`
	CreatedAt     time.Time     `json:"created_at"`
	UpdatedAt     time.Time     `json:"updated_at"`
}

// RolloutList is the answer of Rollouts.
type RolloutList struct {
	Rollouts []Rollout `json:"rollouts"`
	Total    int       `json:"total"`
}
