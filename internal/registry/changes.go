package registry

import (
	"context"
	"sync"

	"github.com/september/bap-engine/internal/hub"
)

// ChangeKind says what a Change reports.
type ChangeKind int

// Kinds of Change.
const (
	// ChangeEngine: an engine's status, port, address, keys or image
	// changed, or its row was deleted. ID is the engine's.
	ChangeEngine ChangeKind = iota + 1
	// ChangeProduct: a product's policy or platform keys changed. ID is the
	// product's.
	ChangeProduct
	// ChangesLive: from now on every change is reported; changes before it
	// may have gone unreported.
	ChangesLive
	// ChangesLost: changes made by other processes may go unreported until
	// the next ChangesLive.
	ChangesLost
)

// Change is one report of a Watcher.
type Change struct {
	Kind ChangeKind
	ID   string
}

// Watcher reports committed changes to what an admit reads
// (engines' status, port, url, keys and image; products' policy and keys),
// so that a reader can cache rows and drop them when they change.
type Watcher interface {
	// WatchChanges calls fn with changes until ctx ends, then returns
	// ctx's error; it reports ChangesLive when it starts delivering and
	// ChangesLost when it stops, also on return. A change made through this
	// Store is reported before the method that made it returns (for a
	// method called inside InTx: before InTx returns), whether or not it
	// committed. Changes made by other processes sharing the database are
	// reported as soon as the Store learns of them, between a ChangesLive
	// and a ChangesLost. fn must be quick and must not call the Store.
	WatchChanges(ctx context.Context, fn func(Change)) error
}

// ChangeHub fans changes out to the functions watching one Store. A Store
// holds one and publishes after every write that changes what Watcher
// reports.
type ChangeHub = hub.Hub[Change]

// WatchLocal is WatchChanges for a Store that only learns of its own
// changes (one process owns the database): it reports ChangesLive, then
// what h publishes, then ChangesLost when ctx ends.
func WatchLocal(ctx context.Context, h *ChangeHub, fn func(Change)) error {
	var mu sync.Mutex
	live := true
	deliver := func(c Change) {
		mu.Lock()
		defer mu.Unlock()
		if live {
			fn(c)
		}
	}
	unsubscribe := h.Subscribe(deliver)
	deliver(Change{Kind: ChangesLive})
	<-ctx.Done()
	unsubscribe()
	mu.Lock()
	live = false
	mu.Unlock()
	fn(Change{Kind: ChangesLost})
	return ctx.Err()
}

// TxChanges collects the changes of one transaction, emitted when it ends.
type TxChanges struct {
	mu      sync.Mutex
	pending []Change
}

// Add records changes to emit when the transaction ends.
func (t *TxChanges) Add(changes ...Change) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pending = append(t.pending, changes...)
}

// Flush emits the recorded changes to h (after commit or rollback: a change
// reported for a rolled-back write only costs a reader a re-read).
func (t *TxChanges) Flush(h *ChangeHub) {
	t.mu.Lock()
	pending := t.pending
	t.pending = nil
	t.mu.Unlock()
	h.Publish(pending...)
}
