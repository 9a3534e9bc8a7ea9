package bap

import "time"

// RolloutState is where a rollout stands (SPEC §16).
type RolloutState string

// Rollout states. Running and paused are under way: a product has at most
// one rollout under way.
const (
	RolloutRunning RolloutState = "running"
	RolloutPaused  RolloutState = "paused"
	RolloutDone    RolloutState = "done"
	RolloutAborted RolloutState = "aborted"
)

// Rollout upgrades a share of a product's engines to one image.
type Rollout struct {
	ID            string
	ProductID     string
	EngineVersion string
	// Percent of the product's engines to upgrade, 1–100; only raised.
	Percent     int
	MaxParallel int
	MaxFailures int
	State       RolloutState
	// Reason says why the rollout paused itself (empty otherwise).
	Reason string
	// FailureBase is how many of its upgrades had been rolled back when it
	// was last resumed: max_failures counts the rolled-back ones since.
	FailureBase int
	CreatedAt   time.Time
	UpdatedAt   time.Time
}

// Active reports whether the rollout is under way (running or paused).
func (r Rollout) Active() bool { return r.State == RolloutRunning || r.State == RolloutPaused }

// RolloutOutcome is what a rollout did to one engine.
type RolloutOutcome string

// Outcomes of a rollout's engines.
const (
	OutcomeUpgrading  RolloutOutcome = "upgrading"
	OutcomeUpgraded   RolloutOutcome = "upgraded"
	OutcomeRolledBack RolloutOutcome = "rolled_back"
	OutcomeSkipped    RolloutOutcome = "skipped"
)

// RolloutEngine records a rollout's outcome for one engine.
type RolloutEngine struct {
	RolloutID string
	EngineID  string
	UserID    string
	Outcome   RolloutOutcome
	Reason    string
	UpdatedAt time.Time
}
