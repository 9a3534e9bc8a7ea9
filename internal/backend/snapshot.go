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

// SnapshotDataName is the name of the volume or claim holding an engine's
// snapshot n: its DataName with -snap-<n>.
func SnapshotDataName(engineID string, n int) string {
	return DataName(engineID) + "-snap-" + strconv.Itoa(n)
}

// SnapshotLabels are the labels of the engine's snapshot helpers in
// deployment; a snapshot's own add LabelSnapshot.
func SnapshotLabels(deployment, engineID string) map[string]string {
	return map[string]string{
		LabelManaged:    "true",
		LabelDeployment: deployment,
		LabelSnapshotOf: engineID,
	}
}

// SnapshotNumber is the number of the engine's snapshot that a volume or
// claim named name with labels holds, and false when it holds none (a
// foreign or mislabelled one).
func SnapshotNumber(labels map[string]string, name, engineID string) (int, bool) {
	n, err := strconv.Atoi(labels[LabelSnapshot])
	return n, err == nil && n > 0 && name == SnapshotDataName(engineID, n)
}

// NextSnapshot is the number of the snapshot to take after nums (ascending).
func NextSnapshot(nums []int) int {
	if len(nums) == 0 {
		return 1
	}
	return nums[len(nums)-1] + 1
}

// PruneSnapshots removes, with remove, all but the newest keep of the
// snapshot numbers nums (ascending), oldest first, and returns the names of
// those kept; it stops at the first error.
func PruneSnapshots(nums []int, keep int, remove func(n int) error) ([]string, error) {
	cut := max(0, len(nums)-max(keep, 0))
	for _, n := range nums[:cut] {
		if err := remove(n); err != nil {
			return nil, err
		}
	}
	kept := make([]string, 0, len(nums)-cut)
	for _, n := range nums[cut:] {
		kept = append(kept, SnapshotName(n))
	}
	return kept, nil
}
