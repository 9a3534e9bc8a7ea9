package backend

import (
	"strconv"
	"strings"
	"time"
)

// Brain snapshots (SPEC §16) are named snap-<n>, n counting from 1 per
// engine. The Docker and Kubernetes backends keep each in a volume or claim
// labelled with the engine (LabelSnapshotOf) and the number
// (LabelSnapshot), filled by a short-lived helper of the orchestrator's own
// image running `bap-engine snapshot FROM TO` with the source mounted at
// SnapshotFrom and the target at SnapshotTo.
const (
	// LabelSnapshotOf names the engine a snapshot or a snapshot helper
	// belongs to. Helpers carry no LabelEngineID, so neither List nor an
	// event stream mistakes one for an engine.
	LabelSnapshotOf = "bap-engine.snapshot_of"
	// LabelSnapshot is a snapshot's number.
	LabelSnapshot = "bap-engine.snapshot"
	// SnapshotFrom and SnapshotTo are where a snapshot helper mounts the
	// data it copies and the data it replaces.
	SnapshotFrom = "/from"
	SnapshotTo   = "/to"
	// SnapshotHelperWait bounds one copy (brains are small; a large one on
	// a slow disk still has minutes).
	SnapshotHelperWait = 10 * time.Minute
)

// SnapshotName is the name of an engine's snapshot n.
func SnapshotName(n int) string { return "snap-" + strconv.Itoa(n) }

// ParseSnapshotName returns n of a SnapshotName, and false for any other
// name.
func ParseSnapshotName(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, "snap-")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil && n > 0
}

// DataName is the name of an engine's data volume (Docker) or claim
// (Kubernetes): engine-data-<first 12 characters of engine_id>, the
// original's naming, so existing volumes are found again.
func DataName(engineID string) string {
	const idLen = 12
	if len(engineID) > idLen {
		engineID = engineID[:idLen]
	}
	return "engine-data-" + engineID
}
