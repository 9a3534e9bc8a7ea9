package bap

import "time"

// Op names an operation claimed on an engine's row (SPEC §15): while a row
// carries one, only its owner replica runs backend operations on the engine,
// and every write of the operation is conditional on the claim's epoch.
type Op string

// The operations an engine can be claimed for.
const (
	OpProvision   Op = "provision"
	OpStart       Op = "start"
	OpWake        Op = "wake"
	OpStop        Op = "stop"
	OpSleep       Op = "sleep"
	OpRotateKey   Op = "rotate-key"
	OpDestroy     Op = "destroy"
	OpAutoRestart Op = "auto-restart"
	OpRepair      Op = "repair"
	OpUpgrade     Op = "upgrade"
)

// Ops lists every operation, for validation.
var Ops = []Op{OpProvision, OpStart, OpWake, OpStop, OpSleep, OpRotateKey, OpDestroy, OpAutoRestart, OpRepair, OpUpgrade}

// Claim is who runs an operation on an engine: the operation, the owner
// replica and the fencing epoch. The zero Claim means no operation is in
// flight.
type Claim struct {
	Op    Op
	Owner string
	// Epoch grows with every claim of the row and never goes back; a write
	// made under a claim names its epoch, so a replica that lost the claim
	// cannot commit.
	Epoch     int64
	StartedAt *time.Time
	// Detail is what the operation needs to be finished or undone by a
	// takeover after its replica died (an upgrade's images and snapshot,
	// as JSON); empty for most operations. Set by UpdateEngine.
	Detail string
}

// Held reports whether an operation is claimed.
func (c Claim) Held() bool { return c.Op != "" }

// Same reports whether c and o are the same claim (operation, owner and
// epoch; the start time is a detail of the row).
func (c Claim) Same(o Claim) bool { return c.Op == o.Op && c.Owner == o.Owner && c.Epoch == o.Epoch }

// Replica is one orchestrator process sharing the database (SPEC §15).
type Replica struct {
	ID          string
	Host        string
	Pid         int
	Version     string
	StartedAt   time.Time
	HeartbeatAt time.Time
}
