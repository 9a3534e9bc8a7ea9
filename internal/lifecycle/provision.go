package lifecycle

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/secret"
)

// Provision creates a product's engine for userID (SPEC §5): the quota
// checks (max_engines, max_running) and the insert of the provisioning row,
// claimed by this replica, with the lowest free port are one transaction;
// then the backend creates and starts it and the engine is waited healthy.
// Concurrent provisions for the same user in this process join one flight;
// in other processes they find the row and wait for it (AwaitProvision).
// Errors: VALIDATION_ERROR (an image), ENGINE_ALREADY_EXISTS, QUOTA_EXCEEDED,
// PORT_EXHAUSTION, BOOT_TIMEOUT, IMAGE_NOT_FOUND, BACKEND_UNAVAILABLE,
// BACKEND_ERROR, DATABASE_UNAVAILABLE.
func (m *Manager) Provision(ctx context.Context, p bap.Product, uid bap.UserID, image, actor string) (Result, error) {
	userID := string(uid)
	if image == "" && p.Policy.EngineVersion != nil {
		// The product's pinned image (policy.engine_version, SPEC §16).
		image = *p.Policy.EngineVersion
	}
	if image == "" {
		image = m.cfg.DefaultImage
	} else if err := validateImage(image); err != nil {
		return Result{}, err
	}
	return m.flights.do(ctx, provisionKey(p.ID, userID), "provision", func(ctx context.Context) (Result, error) {
		return m.provision(ctx, p, userID, image, actor)
	})
}

func provisionKey(productID, userID string) string { return "provision/" + productID + "/" + userID }

// AwaitProvision waits for an engine in provisioning to leave that state —
// joining the provision when it runs in this process, else watching the
// registry (and taking the provision over if its replica died) — and
// returns the engine as it then is. Errors: ENGINE_NOT_FOUND (the
// provision failed and was destroyed), BOOT_TIMEOUT, DATABASE_UNAVAILABLE.
func (m *Manager) AwaitProvision(ctx context.Context, e bap.Engine) (bap.Engine, error) {
	if err := m.flights.idle(ctx, provisionKey(e.ProductID, e.UserID)); err != nil {
		return bap.Engine{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.BootTimeout+5*time.Second)
	defer cancel()
	delay := probeFirstDelay
	checked := time.Now()
	for {
		cur, err := m.load(ctx, e.ID)
		if err != nil || cur.Status != bap.StateProvisioning {
			return cur, err
		}
		if time.Since(checked) >= time.Second {
			checked = time.Now()
			if alive, err := m.ownerAlive(ctx, m.store, cur.Claim.Owner); err == nil && !alive {
				// The provision's replica died: take it over (detached, so
				// the caller leaving cannot interrupt it), then look again.
				if err := m.takeOver(ctx, cur, registry.Lease{}); err != nil && !errors.Is(err, errSkip) {
					return bap.Engine{}, err
				}
				continue
			}
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return bap.Engine{}, bap.Errorf(bap.CodeBootTimeout, "Engine did not become healthy within %s.", m.cfg.BootTimeout)
		case <-t.C:
		}
		delay = min(delay*2, probeMaxDelay)
	}
}

func (m *Manager) provision(ctx context.Context, p bap.Product, userID, image, actor string) (res Result, err error) {
	began := time.Now()
	defer func() { m.obs.Operation(p.ID, "provision", time.Since(began), err) }()

	plain, token, err := m.newKey()
	if err != nil {
		return Result{}, err
	}
	var quota registry.Quota
	if p.Policy.MaxEngines != nil {
		quota.MaxEngines = *p.Policy.MaxEngines
		if quota.MaxEngines == 0 {
			return Result{}, bap.Errorf(bap.CodeQuotaExceeded, "Product at max_engines limit (0).")
		}
	}
	if p.Policy.MaxRunning != nil {
		quota.MaxRunning = *p.Policy.MaxRunning
		if quota.MaxRunning == 0 {
			return Result{}, bap.Errorf(bap.CodeQuotaExceeded, "Product at max_running limit (0).")
		}
	}
	// Wait for a provision slot before anything of the engine exists.
	release, err := m.provisions.acquire(ctx, m.cfg.ProvisionQueueWait)
	if err != nil {
		return Result{}, err
	}
	defer release()
	// The row's times, its claim's start among them, are those of the
	// insert, not of the request that may have queued for a slot: a claim
	// that looked older than it is could pass for a leftover (see
	// releaseLeftovers).
	now := bap.Now()
	e := bap.Engine{
		ID:        uuid.NewString(),
		ProductID: p.ID,
		UserID:    userID,
		Status:    bap.StateProvisioning,
		KeyHash:   secret.Hash(plain),
		KeyEnc:    token,
		Image:     image,
		Claim:     bap.Claim{Op: bap.OpProvision, Owner: m.rep.ID(), Epoch: 1, StartedAt: &now},
		CreatedAt: now,
		UpdatedAt: now,
	}
	// The claim the insert writes is this operation's from the start, so a
	// repair pass that lists it before underClaim runs leaves it alone.
	m.active.Store(e.ID, e.Claim.Epoch)
	// The row is inserted without an address: the backend gives it once
	// the instance exists (for a pod, only then), and the running commit
	// records it.
	port, err := m.store.ProvisionEngine(ctx, e, quota, m.cfg.PortMin, m.cfg.PortMax)
	if err == nil {
		e.Port = port
		e.URL = m.backend.URL(e.ID, port)
	} else {
		m.active.CompareAndDelete(e.ID, e.Claim.Epoch)
	}
	switch {
	case errors.Is(err, registry.ErrQuotaExceeded):
		return Result{}, m.quotaErr(ctx, p, quota)
	case errors.Is(err, registry.ErrPortExhausted):
		return Result{}, bap.Errorf(bap.CodePortExhaustion, "No free engine port in %d-%d.", m.cfg.PortMin, m.cfg.PortMax)
	case errors.Is(err, registry.ErrConflict):
		return Result{}, bap.Errorf(bap.CodeEngineAlreadyExists, "An engine already exists for user %q.", userID)
	case errors.Is(err, registry.ErrNotFound):
		return Result{}, bap.Errorf(bap.CodeProductNotFound, "Product not found.").Wrap(err)
	case err != nil:
		return Result{}, storeErr("insert engine", err)
	}
	c := &opClaim{engineID: e.ID, op: bap.OpProvision, epoch: e.Claim.Epoch}
	return m.underClaim(ctx, c, func(ctx context.Context) (Result, error) {
		spec := m.spec(e, p)
		bootStart := time.Now()
		inst, err := m.createAndStart(ctx, spec)
		if err == nil {
			e.URL = m.addr(e) // a Pod's address is known once it runs
			err = m.waitHealthy(ctx, e.URL, m.cfg.BootTimeout)
		}
		if err != nil {
			return Result{}, m.failProvision(ctx, c, e, err)
		}
		boot := time.Since(bootStart)
		m.obs.Boot(p.ID, boot)
		if err := m.commitProvisioned(ctx, c, inst, boot, actor, nil); err != nil {
			return Result{}, err
		}
		e, err = m.load(ctx, e.ID)
		if err != nil {
			return Result{}, err
		}
		return Result{Engine: e, APIKey: plain}, nil
	})
}

// quotaErr names the limit an insert hit: max_engines when the product is
// at it, else max_running.
func (m *Manager) quotaErr(ctx context.Context, p bap.Product, q registry.Quota) error {
	if q.MaxEngines > 0 {
		counts, err := m.store.CountByStatus(ctx, p.ID)
		total := 0
		for _, n := range counts {
			total += n
		}
		if err != nil || total >= q.MaxEngines || q.MaxRunning == 0 {
			return bap.Errorf(bap.CodeQuotaExceeded, "Product at max_engines limit (%d).", q.MaxEngines)
		}
	}
	return bap.Errorf(bap.CodeQuotaExceeded, "Product at max_running limit (%d).", q.MaxRunning)
}

// commitProvisioned makes a provisioning engine running and ends its
// claim; extra, when set, is added to the audit entry's metadata.
func (m *Manager) commitProvisioned(ctx context.Context, c *opClaim, inst backend.Instance, boot time.Duration,
	actor string, extra map[string]any) error {
	err := m.commitOp(ctx, c, true, func(cur *bap.Engine) (*audit.Entry, error) {
		if cur.Status != bap.StateProvisioning {
			return nil, bap.Errorf(bap.CodeEngineBusy, "engine changed state to %s during provision", cur.Status)
		}
		cur.Status = bap.StateRunning
		if inst.ID != "" {
			cur.InstanceID = inst.ID
		}
		cur.URL = m.addr(*cur)
		meta := map[string]any{"image": cur.Image, "port": cur.Port, "backend": m.backend.Name()}
		entry := &audit.Entry{Action: audit.Provision, Actor: actor, Metadata: meta}
		if boot > 0 {
			bootMS := boot.Milliseconds()
			cur.BootDurationMS = &bootMS
			entry.DurationMS = &bootMS
		}
		for k, v := range extra {
			meta[k] = v
		}
		cur.LastActiveAt = ptr(bap.Now())
		return entry, nil
	})
	return err
}

// failProvision records a failed provision: the instance and its data are
// removed, the row stays failed with its port and the reason, and the claim
// ends.
func (m *Manager) failProvision(ctx context.Context, c *opClaim, e bap.Engine, cause error) error {
	if errors.Is(cause, errFenced) {
		return opErr(cause, m.cfg.BootTimeout) // another replica took the provision over
	}
	if errors.Is(cause, registry.ErrUnavailable) {
		// The database could not be reached to check the claim: nothing
		// can be recorded now; the claim stays and is taken over or ended.
		return opErr(cause, m.cfg.BootTimeout)
	}
	reason := failureReason(cause)
	m.log.WarnContext(ctx, "provision failed", "engine_id", e.ID, "product_id", e.ProductID, "reason", reason)
	if errors.Is(cause, backend.ErrUnavailable) {
		// The backend could not be reached: nothing is known to exist, and
		// the engine is not to blame. Whatever appears later is removed by
		// reconciliation; the caller sees 503.
		_ = m.backend.Destroy(ctx, e.ID)
	} else if derr := m.backend.Destroy(ctx, e.ID); derr != nil {
		m.log.WarnContext(ctx, "cleanup after failed provision", "engine_id", e.ID, "err", derr)
	}
	err := m.commitOp(ctx, c, true, func(cur *bap.Engine) (*audit.Entry, error) {
		if cur.Status != bap.StateProvisioning {
			return nil, nil
		}
		cur.Status = bap.StateFailed
		cur.FailureReason = reason
		return &audit.Entry{
			Action:   audit.ProvisionFailed,
			Actor:    audit.ActorSystem,
			Metadata: map[string]any{"reason": reason, "image": cur.Image, "port": cur.Port},
		}, nil
	})
	if err != nil {
		m.log.ErrorContext(ctx, "record failed provision", "engine_id", e.ID, "err", err)
	}
	return opErr(cause, m.cfg.BootTimeout)
}
