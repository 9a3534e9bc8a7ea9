package bap

import "slices"

// State is the lifecycle state of an engine (SPEC §5).
type State string

// The engine states.
const (
	StateProvisioning State = "provisioning"
	StateRunning      State = "running"
	StateSleeping     State = "sleeping"
	StateStopped      State = "stopped"
	StateFailed       State = "failed"
	StateDestroying   State = "destroying"
)

// States lists every state in a stable order (used for filters and metrics).
var States = []State{StateProvisioning, StateRunning, StateSleeping, StateStopped, StateFailed, StateDestroying}

// Valid reports whether s is one of the known states.
func (s State) Valid() bool { return slices.Contains(States, s) }

// transitions is the table of allowed state changes. Destroying is reachable
// from every state; a destroyed engine has no row, so it has no state.
var transitions = map[State][]State{
	StateProvisioning: {StateRunning, StateFailed, StateDestroying},
	StateRunning:      {StateSleeping, StateStopped, StateFailed, StateDestroying, StateRunning},
	StateSleeping:     {StateRunning, StateStopped, StateFailed, StateDestroying},
	StateStopped:      {StateRunning, StateFailed, StateDestroying},
	StateFailed:       {StateRunning, StateFailed, StateStopped, StateDestroying},
	StateDestroying:   {StateDestroying},
}

// CanTransition reports whether an engine may move from one state to another.
// running→running is allowed for rotate-key, failed→failed for a failed
// restart attempt.
func CanTransition(from, to State) bool { return slices.Contains(transitions[from], to) }
