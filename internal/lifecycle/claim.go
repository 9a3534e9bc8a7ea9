package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// Operations are owned in the database (SPEC §15). An operation begins with
// a transaction that locks the engine's row, checks it, and writes a claim
// on it: the operation, this replica's id and the next epoch. Every later
// write of the operation re-reads the row under its lock and goes ahead
// only if the claim is still this one (commitOp), and its last write ends
// the claim. So two replicas never run operations on one engine at once, a
// replica whose claim was taken over cannot commit, and a claim whose owner
// died is visible to everyone (takeover.go finishes or fails it).

// opClaim is an operation this replica claimed on an engine's row.
type opClaim struct {
	engineID string
	op       bap.Op
	epoch    int64
	released bool
}

// claimSpec says what to claim and when.
type claimSpec struct {
	op bap.Op
	// lease, when its ReplicaID is set, must still be held: background work
	// (restarts, sleeps, takeovers) runs only on the shard's holder.
	lease registry.Lease
	// hard refuses at once, whatever else runs on the engine (e.g.
	// ENGINE_BUSY for an engine in provisioning).
	hard func(cur bap.Engine) error
	// pre checks the engine once no other operation holds it, in the
	// claim's transaction: errDone when the engine already is where the
	// operation would take it, an error to refuse, nil to claim.
	pre func(ctx context.Context, tx registry.Store, cur bap.Engine) error
	// takeover, when set, claims only if the row still carries exactly this
	// claim and its owner is dead.
	takeover *bap.Claim
}

// errDone: the engine is already in the state the operation would reach.
var errDone = errors.New("engine already in the wanted state")

// claimOutcome is what claim found.
type claimOutcome struct {
	claim  *opClaim   // set when this call claimed the engine
	cur    bap.Engine // the row as read under its lock
	done   bool       // pre said errDone
	busy   bool       // a live replica (this one included) holds another claim
	orphan bool       // the claim's owner is dead: it must be taken over first
}

// claim makes one attempt to claim spec.op on engine id.
func (m *Manager) claim(ctx context.Context, id string, spec claimSpec) (claimOutcome, error) {
	var out claimOutcome
	err := m.store.InTx(ctx, func(tx registry.Store) error {
		cur, err := tx.LockEngine(ctx, id)
		if err != nil {
			return err
		}
		out.cur = cur
		if spec.takeover != nil {
			if !cur.Claim.Same(*spec.takeover) {
				return errSkip
			}
			if cur.Claim.Held() {
				alive, err := m.ownerAlive(ctx, tx, cur.Claim.Owner)
				if err != nil || alive {
					return cmpErr(err, errSkip)
				}
			}
		} else {
			if spec.hard != nil {
				if err := spec.hard(cur); err != nil {
					return err
				}
			}
			if cur.Claim.Held() {
				alive, err := m.ownerAlive(ctx, tx, cur.Claim.Owner)
				if err != nil {
					return err
				}
				out.busy, out.orphan = alive, !alive
				return nil
			}
			if spec.pre != nil {
				switch err := spec.pre(ctx, tx, cur); {
				case errors.Is(err, errDone):
					out.done = true
					return nil
				case err != nil:
					return err
				}
			}
		}
		if spec.lease.ReplicaID != "" {
			if err := tx.CheckLease(ctx, spec.lease); err != nil {
				return err
			}
		}
		op := spec.op
		if op == "" {
			op = bap.OpRepair
		}
		var detail string
		if spec.takeover != nil {
			// The takeover finishes or undoes what the detail says was done.
			detail = cur.Claim.Detail
		}
		cur.Claim = bap.Claim{Op: op, Owner: m.rep.ID(), Epoch: cur.Claim.Epoch + 1, StartedAt: ptr(bap.Now()), Detail: detail}
		if err := tx.UpdateEngine(ctx, cur); err != nil {
			return err
		}
		out.claim = &opClaim{engineID: id, op: op, epoch: cur.Claim.Epoch}
		out.cur = cur
		return nil
	})
	if err != nil {
		if _, ok := bap.AsError(err); ok {
			return claimOutcome{}, err
		}
		if errors.Is(err, errSkip) {
			return claimOutcome{}, err
		}
		return claimOutcome{}, engineErr("claim engine", err)
	}
	return out, nil
}

// ownerAlive reports whether the replica owning a claim is alive: this one
// always is (its claims are its running operations, or leftovers it ends
// itself); another is asked through q, the claim's own transaction, so a
// claim never needs a second connection while it holds a row lock.
func (m *Manager) ownerAlive(ctx context.Context, q registry.Store, owner string) (bool, error) {
	if owner == m.rep.ID() {
		return true, nil
	}
	if owner == "" {
		return false, nil
	}
	return q.ReplicaAlive(ctx, owner, m.rep.TTL())
}

func cmpErr(err, otherwise error) error {
	if err != nil {
		return err
	}
	return otherwise
}

// joinFunc decides, when another replica's run of the same operation
// ended, whether its outcome is this caller's too: ok with the result (or
// the error it left), or not ok to try again.
type joinFunc func(before, after bap.Engine, gone bool) (res Result, ok bool, err error)

// observe reports an operation that began at began, and the error *err it
// ended with, to the observer under its engine's product, once the
// operation has learnt that (*productID). Each operation defers it.
func (m *Manager) observe(productID *string, op string, began time.Time, err *error) {
	if *productID != "" {
		m.obs.Operation(*productID, op, time.Since(began), *err)
	}
}

// runOp runs a caller's operation on engine id: it claims the engine,
// waiting first for another operation to end (or taking over one whose
// owner died), runs body under the claim, and ends the claim if body did
// not. When the operation that held the engine was the same one, join may
// hand its outcome to this caller, as an in-process join would.
func (m *Manager) runOp(ctx context.Context, id string, spec claimSpec, join joinFunc,
	body func(ctx context.Context, c *opClaim, e bap.Engine) (Result, error)) (Result, error) {
	for {
		out, err := m.claim(ctx, id, spec)
		if err != nil {
			return Result{}, err
		}
		switch {
		case out.done:
			return Result{Engine: out.cur}, nil
		case out.orphan:
			err := m.takeOver(ctx, out.cur, registry.Lease{})
			if errors.Is(err, errSkip) {
				// Someone else is taking it over: wait for that to end.
				if _, _, err := m.awaitRelease(ctx, out.cur); err != nil {
					return Result{}, err
				}
			} else if err != nil {
				return Result{}, err
			}
			continue
		case out.busy:
			after, gone, err := m.awaitRelease(ctx, out.cur)
			if err != nil {
				return Result{}, err
			}
			if join != nil && out.cur.Claim.Op == spec.op {
				if res, ok, err := join(out.cur, after, gone); ok {
					return res, err
				}
			}
			continue
		}
		return m.underClaim(ctx, out.claim, func(ctx context.Context) (Result, error) {
			return body(ctx, out.claim, out.cur)
		})
	}
}

// underClaim runs fn as the work of c, then ends c if fn did not. fn's
// context carries c: every backend call made with it first checks that c
// still holds the engine (guarded), so a replica that lost its claim (it
// was frozen, or cut off, past its TTL) cannot act on the engine after
// waking, only fail.
func (m *Manager) underClaim(ctx context.Context, c *opClaim, fn func(ctx context.Context) (Result, error)) (Result, error) {
	m.active.Store(c.engineID, c.epoch)
	defer func() {
		m.release(ctx, c)
		m.active.CompareAndDelete(c.engineID, c.epoch)
	}()
	return fn(context.WithValue(ctx, claimKey{}, c))
}

// claimKey is the context key of the claim a backend call is made under.
type claimKey struct{}

func claimOf(ctx context.Context) *opClaim {
	c, _ := ctx.Value(claimKey{}).(*opClaim)
	return c
}

// awaitRelease waits until the claim e carries ends (the row then has
// another claim, none, or is gone) and returns the row as it then is. It
// polls, quickly at first; it returns early when the claim's owner dies, so
// the caller can take the operation over. Bounded by ctx.
func (m *Manager) awaitRelease(ctx context.Context, e bap.Engine) (bap.Engine, bool, error) {
	delay := 5 * time.Millisecond
	checked := time.Now()
	for {
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return bap.Engine{}, false, bap.Errorf(bap.CodeEngineBusy, "The engine is changing state; retry shortly.")
		case <-t.C:
		}
		delay = min(delay*2, 200*time.Millisecond)
		cur, err := m.store.GetEngine(ctx, e.ID)
		if errors.Is(err, registry.ErrNotFound) {
			return bap.Engine{}, true, nil
		}
		if err != nil {
			return bap.Engine{}, false, engineErr("read engine", err)
		}
		if !cur.Claim.Same(e.Claim) {
			return cur, false, nil
		}
		if time.Since(checked) >= time.Second {
			checked = time.Now()
			alive, err := m.ownerAlive(ctx, m.store, cur.Claim.Owner)
			if err != nil {
				return bap.Engine{}, false, storeErr("read replica", err)
			}
			if !alive {
				return cur, false, nil
			}
		}
	}
}

// mutator changes the engine read under its lock and names the audit entry
// of the change (nil: none).
type mutator func(cur *bap.Engine) (*audit.Entry, error)

// commitOp writes a step of the operation c: the row is re-read under its
// lock, the write goes ahead only if c still holds it, and the state change
// must be in the transition table. release ends the claim in the same
// transaction (the operation's last write).
func (m *Manager) commitOp(ctx context.Context, c *opClaim, release bool, mutate mutator) error {
	err := m.store.InTx(ctx, func(tx registry.Store) error {
		cur, err := tx.LockEngine(ctx, c.engineID)
		if err != nil {
			return err
		}
		if cur.Claim.Owner != m.rep.ID() || cur.Claim.Epoch != c.epoch {
			return fmt.Errorf("%s of engine %s at epoch %d (now %s by %s at %d): %w",
				c.op, c.engineID, c.epoch, cur.Claim.Op, cur.Claim.Owner, cur.Claim.Epoch, errFenced)
		}
		before := cur
		entry, err := mutate(&cur)
		if err != nil {
			return err
		}
		if release {
			cur.Claim = bap.Claim{Epoch: c.epoch}
		}
		return writeEngine(ctx, tx, before, cur, entry)
	})
	if errors.Is(err, errFenced) {
		c.released = true // someone else's now: nothing of ours to end
		m.log.WarnContext(ctx, "operation lost its claim; nothing more is written", "engine_id", c.engineID, "op", c.op, "err", err)
	}
	if err == nil && release {
		c.released = true
	}
	return commitErr(err)
}

// commitLeased writes a change made without a claim (an engine found dead
// by a probe, an event or reconciliation): only while no operation is
// claimed on the engine, and, when lease names a holder, while it holds the
// engine's shard. mutate sees the row and decides.
func (m *Manager) commitLeased(ctx context.Context, id string, lease registry.Lease, mutate mutator) error {
	err := m.store.InTx(ctx, func(tx registry.Store) error {
		cur, err := tx.LockEngine(ctx, id)
		if err != nil {
			return err
		}
		if cur.Claim.Held() {
			return errSkip
		}
		if lease.ReplicaID != "" {
			if err := tx.CheckLease(ctx, lease); err != nil {
				return err
			}
		}
		before := cur
		entry, err := mutate(&cur)
		if err != nil {
			return err
		}
		return writeEngine(ctx, tx, before, cur, entry)
	})
	return commitErr(err)
}

func commitErr(err error) error {
	if err == nil || errors.Is(err, errSkip) {
		return err
	}
	if _, ok := bap.AsError(err); ok {
		return err
	}
	return engineErr("update engine", err)
}

// writeEngine writes cur (read as before) with its audit entry, refusing a
// state change the transition table does not allow. Nothing is written when
// nothing changed and there is no entry.
func writeEngine(ctx context.Context, tx registry.Store, before, cur bap.Engine, entry *audit.Entry) error {
	if before.Status != cur.Status && !bap.CanTransition(before.Status, cur.Status) {
		return fmt.Errorf("engine %s: %s → %s is not in the transition table", cur.ID, before.Status, cur.Status)
	}
	if entry == nil {
		if cur == before {
			return nil
		}
		return tx.UpdateEngine(ctx, cur)
	}
	entry.ProductID = cur.ProductID
	entry.UserID = cur.UserID
	entry.EngineID = cur.ID
	return tx.UpdateEngine(ctx, cur, *entry)
}

// release ends c if it was not ended by the operation's last write (the
// operation failed before it, or its work left the state as it was). A
// claim another replica took over is left alone.
func (m *Manager) release(ctx context.Context, c *opClaim) {
	if c == nil || c.released {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err := m.store.InTx(ctx, func(tx registry.Store) error {
		cur, err := tx.LockEngine(ctx, c.engineID)
		if errors.Is(err, registry.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if cur.Claim.Owner != m.rep.ID() || cur.Claim.Epoch != c.epoch {
			return nil
		}
		cur.Claim = bap.Claim{Epoch: c.epoch}
		return tx.UpdateEngine(ctx, cur)
	})
	if err != nil {
		// The claim stays until this process's repair pass or, if it dies,
		// another replica's takeover ends it.
		m.log.WarnContext(ctx, "end operation claim", "engine_id", c.engineID, "op", c.op, "err", err)
		return
	}
	c.released = true
}

// hardBusy refuses at once an operation on an engine that is provisioning
// or destroying.
func hardBusy(cur bap.Engine) error {
	switch cur.Status {
	case bap.StateProvisioning, bap.StateDestroying:
		return bap.Errorf(bap.CodeEngineBusy, "Engine is %s.", cur.Status)
	}
	return nil
}

// checkMaxRunning enforces the policy's max_running in the claim's
// transaction: the count locks the product's row, so two replicas starting
// two engines of one product cannot both pass.
func (m *Manager) checkMaxRunning(ctx context.Context, tx registry.Store, productID string) error {
	p, err := tx.GetProduct(ctx, productID)
	if err != nil {
		return productErr("read product", err)
	}
	if p.Policy.MaxRunning == nil {
		return nil
	}
	n, err := tx.CountRunning(ctx, productID)
	if err != nil {
		return storeErr("count engines", err)
	}
	if n >= *p.Policy.MaxRunning {
		return bap.Errorf(bap.CodeQuotaExceeded, "Product at max_running limit (%d).", *p.Policy.MaxRunning)
	}
	return nil
}
