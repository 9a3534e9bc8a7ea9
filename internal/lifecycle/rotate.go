package lifecycle

import (
	"context"
	"time"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/secret"
)

// RotateKey gives a running engine a new key: it is recreated with the new
// ENGINE_KEY_HASH on the same data and port, waited healthy, and only then
// the new hash and token are committed, under the operation's claim (a
// replica that lost the claim cannot commit a key the engine does not
// have). If the new instance does not come up, the old key's instance is
// restored. Callers on other replicas during a rotation get its key.
// Errors: ENGINE_NOT_FOUND, ENGINE_NOT_RUNNING, ENGINE_BUSY, BOOT_TIMEOUT,
// BACKEND_*, DATABASE_UNAVAILABLE.
func (m *Manager) RotateKey(ctx context.Context, engineID, actor string) (Result, error) {
	return m.flights.do(ctx, engineID, "rotate-key", func(ctx context.Context) (res Result, err error) {
		began := time.Now()
		var productID string
		defer m.observe(&productID, "rotate_key", began, &err)
		notRunning := func(cur bap.Engine) error {
			productID = cur.ProductID
			if cur.Status != bap.StateRunning {
				return bap.Errorf(bap.CodeEngineNotRunning, "Engine is not running (status %s).", cur.Status)
			}
			return nil
		}
		spec := claimSpec{
			op: bap.OpRotateKey,
			hard: func(cur bap.Engine) error {
				if cur.Status == bap.StateProvisioning || cur.Status == bap.StateDestroying {
					return notRunning(cur)
				}
				return nil
			},
			pre: func(_ context.Context, _ registry.Store, cur bap.Engine) error { return notRunning(cur) },
		}
		join := func(before, after bap.Engine, gone bool) (Result, bool, error) {
			if gone || after.Status != bap.StateRunning || after.KeyHash == before.KeyHash {
				return Result{}, false, nil
			}
			key, err := m.APIKey(after)
			return Result{Engine: after, APIKey: key}, true, err
		}
		return m.runOp(ctx, engineID, spec, join, func(ctx context.Context, c *opClaim, e bap.Engine) (Result, error) {
			p, err := m.store.GetProduct(ctx, e.ProductID)
			if err != nil {
				return Result{}, productErr("read product", err)
			}
			plain, token, err := m.newKey()
			if err != nil {
				return Result{}, err
			}
			next := e
			next.KeyHash = secret.Hash(plain)
			next.KeyEnc = token
			inst, err := m.recreate(ctx, next, p)
			if err != nil {
				m.log.WarnContext(ctx, "rotate-key failed, restoring the old key", "engine_id", e.ID, "reason", failureReason(err))
				if _, rerr := m.recreate(ctx, e, p); rerr != nil {
					return Result{}, m.failBringUp(ctx, c, e, audit.RotateKeyFailed, actor, err)
				}
				return Result{}, opErr(err, m.cfg.BootTimeout)
			}
			err = m.commitOp(ctx, c, true, func(cur *bap.Engine) (*audit.Entry, error) {
				if cur.Status != bap.StateRunning {
					return nil, bap.Errorf(bap.CodeEngineBusy, "Engine is %s.", cur.Status)
				}
				cur.KeyHash = next.KeyHash
				cur.KeyEnc = next.KeyEnc
				cur.InstanceID = inst.ID
				cur.URL = m.addr(*cur)
				return &audit.Entry{Action: audit.RotateKey, Actor: actor, DurationMS: ptr(time.Since(began).Milliseconds())}, nil
			})
			if err != nil {
				return Result{}, err
			}
			e, err = m.load(ctx, engineID)
			return Result{Engine: e, APIKey: plain}, err
		})
	})
}

// recreate replaces the engine's instance with one built from e (same data
// and port) and waits for it to be healthy.
func (m *Manager) recreate(ctx context.Context, e bap.Engine, p bap.Product) (backend.Instance, error) {
	if err := m.backend.Stop(ctx, e.ID, m.cfg.StopGrace); err != nil {
		return backend.Instance{}, err
	}
	if err := m.backend.Remove(ctx, e.ID); err != nil {
		return backend.Instance{}, err
	}
	inst, err := m.createAndStart(ctx, m.spec(e, p))
	if err != nil {
		return backend.Instance{}, err
	}
	return inst, m.waitHealthy(ctx, m.addr(e), m.cfg.BootTimeout)
}
