// Package audit names the audit actions and defines the Entry value. Rows are
// written by the registry, inside the transaction of the change they record.
package audit

import "time"

// Action is the name of an audited event.
type Action string

// The audit actions (SPEC §5, §8, §9 and the original audit page).
const (
	Provision          Action = "provision"
	ProvisionFailed    Action = "provision_failed"
	Start              Action = "start"
	StartFailed        Action = "start_failed"
	Stop               Action = "stop"
	Sleep              Action = "sleep"
	Wake               Action = "wake"
	Destroy            Action = "destroy"
	RotateKey          Action = "rotate_key"
	RotateKeyFailed    Action = "rotate_key_failed"
	HealthCheck        Action = "health_check"
	HealthFailed       Action = "health_failed"
	EngineDied         Action = "engine_died"
	AutoRestartStart   Action = "auto_restart_start"
	AutoRestartSuccess Action = "auto_restart_success"
	AutoRestartFailed  Action = "auto_restart_failed"
	AutoRestartGaveUp  Action = "auto_restart_gave_up"
	PolicyRegister     Action = "policy_register"
	PolicyUpdate       Action = "policy_update"
	PlatformKeyRotated Action = "platform_key_rotate"
	AdmitDenied        Action = "admit_denied"
	OrphanRemoved      Action = "orphan_removed"
	ReconcileFailed    Action = "reconcile_failed"
	// Upgrades (SPEC §16): an engine moved to another image, or an upgrade
	// that did not come up and was undone; a rollout's changes of state.
	Upgrade           Action = "upgrade"
	UpgradeRolledBack Action = "upgrade_rolled_back"
	RolloutCreate     Action = "rollout_create"
	RolloutUpdate     Action = "rollout_update"
)

// CrashActions are the actions that record a transition to failed; /metrics
// counts them as crashes.
var CrashActions = []Action{ProvisionFailed, HealthFailed, EngineDied, ReconcileFailed}

// Actors other than a product slug.
const (
	ActorAdmin  = "admin"
	ActorSystem = "system"
)

// Entry is one audit_log row. Empty ids are stored as NULL.
type Entry struct {
	ID         int64
	Timestamp  time.Time
	ProductID  string
	UserID     string
	EngineID   string
	Action     Action
	Actor      string
	Metadata   map[string]any
	DurationMS *int64
}
