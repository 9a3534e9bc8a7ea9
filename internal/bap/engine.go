package bap

import "time"

// Product is a tenant of the orchestrator.
type Product struct {
	ID          string
	Slug        string
	DisplayName string
	// APIKeyHash is the lowercase hex SHA-256 of the platform key.
	APIKeyHash string
	// PrevAPIKeyHash is the hash of the key replaced by the last rotation; it
	// authenticates until PrevKeyExpiresAt. Empty when there is none.
	PrevAPIKeyHash   string
	PrevKeyExpiresAt *time.Time
	Policy           Policy
	CreatedAt        time.Time
}

// Engine is one user's engine as the registry records it.
type Engine struct {
	ID        string
	ProductID string
	UserID    string
	Status    State
	Port      int
	// KeyHash is the lowercase hex SHA-256 of the engine key (ENGINE_KEY_HASH).
	KeyHash string
	// KeyEnc is the Fernet token of the plaintext engine key.
	KeyEnc string
	// Image is the engine image reference (engine_version in the API).
	Image string
	URL   string
	// InstanceID is the backend's identity for the running instance: a
	// container id, or a process identity for the subprocess backend.
	InstanceID      string
	BootDurationMS  *int64
	HealthFailures  int
	RestartAttempts int
	NextRestartAt   *time.Time
	LastHealthAt    *time.Time
	LastActiveAt    *time.Time
	FailureReason   string
	// Claim is the operation in flight on the engine, if any.
	Claim     Claim
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Timestamp normalises t for storage and comparison: UTC, truncated to
// microseconds, which both databases keep exactly.
func Timestamp(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// Now is Timestamp(time.Now()).
func Now() time.Time { return Timestamp(time.Now()) }

// FormatTime renders t as the API does: RFC 3339 UTC with milliseconds.
func FormatTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }
