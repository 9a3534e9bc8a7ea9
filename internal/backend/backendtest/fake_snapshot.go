package backendtest

import (
	"context"
	"fmt"
	"strconv"

	"github.com/september/bap-engine/internal/backend"
)

// fakeSnap is one snapshot of a brain.
type fakeSnap struct {
	n       int
	counter int
}

// RefuseImage makes engines created with image answer /health 503
// {"status":"refused"}, as the reference engine does for a version named
// by ENGINE_REFUSE_VERSIONS.
func (f *Fake) RefuseImage(image string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refused[image] = true
}

// Snapshots names the engine's snapshots, oldest first.
func (f *Fake) Snapshots(engineID string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, s := range f.snaps[engineID] {
		out = append(out, "snap-"+strconv.Itoa(s.n))
	}
	return out
}

// Snapshot copies the engine's brain (its counter) as the next snapshot.
// ErrConflict while it runs.
func (f *Fake) Snapshot(_ context.Context, engineID string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter(MethodSnapshot); err != nil {
		return "", err
	}
	e := f.engines[engineID]
	if _, brain := f.brains[engineID]; e == nil && !brain {
		return "", fmt.Errorf("snapshot %s: no data: %w", engineID, backend.ErrNotFound)
	}
	if e != nil && e.run != nil {
		return "", fmt.Errorf("snapshot %s: running: %w", engineID, backend.ErrConflict)
	}
	n := 1
	if ss := f.snaps[engineID]; len(ss) > 0 {
		n = ss[len(ss)-1].n + 1
	}
	f.snaps[engineID] = append(f.snaps[engineID], fakeSnap{n: n, counter: f.brains[engineID]})
	return "snap-" + strconv.Itoa(n), nil
}

// Restore puts the snapshot's counter back. ErrNotFound, ErrConflict.
func (f *Fake) Restore(_ context.Context, engineID, snapshot string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter(MethodRestore); err != nil {
		return err
	}
	if e := f.engines[engineID]; e != nil && e.run != nil {
		return fmt.Errorf("restore %s: running: %w", engineID, backend.ErrConflict)
	}
	for _, s := range f.snaps[engineID] {
		if "snap-"+strconv.Itoa(s.n) == snapshot {
			f.brains[engineID] = s.counter
			return nil
		}
	}
	return fmt.Errorf("restore %s: no snapshot %s: %w", engineID, snapshot, backend.ErrNotFound)
}

// PruneSnapshots keeps the newest keep snapshots.
func (f *Fake) PruneSnapshots(_ context.Context, engineID string, keep int) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter(MethodPrune); err != nil {
		return nil, err
	}
	ss := f.snaps[engineID]
	if drop := len(ss) - max(keep, 0); drop > 0 {
		ss = ss[drop:]
	}
	if len(ss) == 0 {
		delete(f.snaps, engineID)
	} else {
		f.snaps[engineID] = ss
	}
	kept := []string{}
	for _, s := range ss {
		kept = append(kept, "snap-"+strconv.Itoa(s.n))
	}
	return kept, nil
}
