package registrytest

import (
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

func admitTests() []test {
	return []test{
		{"ProductWithoutEngine", testAdmitNoEngine},
		{"ProductWithEngine", testAdmitWithEngine},
		{"WrongKey", testAdmitWrongKey},
		{"PreviousKeyWithinGrace", testAdmitPreviousKey},
		{"OtherProductsEngineInvisible", testAdmitOtherProduct},
	}
}

func engineTests() []test {
	return []test{
		{"InsertGetRoundTrip", testEngineRoundTrip},
		{"InsertMinimalRoundTrip", testEngineMinimalRoundTrip},
		{"UserConflict", testEngineUserConflict},
		{"UserConflictBeforeQuota", testEngineConflictBeforeQuota},
		{"Quota", testEngineQuota},
		{"QuotaConcurrent50Max10", testEngineQuotaConcurrent},
		{"NotFound", testEngineNotFound},
		{"UpdateRoundTripWithAudit", testEngineUpdateRoundTrip},
		{"UpdateInTxRollback", testEngineUpdateRollback},
		{"DeleteFreesPortAndAudits", testEngineDelete},
		{"ListFilterOrderPage", testEngineList},
		{"EnginesByStatus", testEnginesByStatus},
		{"CountByStatus", testCountByStatus},
		{"CountByProductStatus", testCountByProductStatus},
		{"TouchActive", testTouchActive},
		{"RecordHealth", testRecordHealth},
	}
}

// fullEngine returns an unsaved engine with every optional field set.
func fullEngine(productID, userID string, port int) bap.Engine {
	base := bap.Timestamp(time.Date(2026, 4, 27, 10, 0, 0, 123456000, time.UTC))
	return bap.Engine{
		ID: uuid.NewString(), ProductID: productID, UserID: userID,
		Status: bap.StateFailed, Port: port,
		KeyHash: RandomKeyHash(), KeyEnc: "gAAAAABfull-token==", Image: "september-engine:2.3.0",
		URL: "http://127.0.0.1:9001", InstanceID: "c0ffee",
		BootDurationMS:  ptr[int64](1234),
		HealthFailures:  3,
		RestartAttempts: 2,
		NextRestartAt:   ptr(base.Add(5*time.Second + 7*time.Microsecond)),
		LastHealthAt:    ptr(base.Add(-time.Minute)),
		LastActiveAt:    ptr(base.Add(-time.Hour + time.Microsecond)),
		FailureReason:   "health check failed 3 times",
		Claim: bap.Claim{Op: bap.OpAutoRestart, Owner: "replica-1", Epoch: 7,
			StartedAt: ptr(base.Add(-time.Second + 3*time.Microsecond))},
		CreatedAt: base.Add(-24 * time.Hour),
		UpdatedAt: base,
	}
}

func testAdmitNoEngine(t *testing.T, s registry.Store) {
	p := NewProduct(t, s, WithPolicy(t, `{"max_engines": 4, "custom": true}`))
	got, e, err := s.AdmitLookup(t.Context(), p.APIKeyHash, "u1", bap.Now())
	require.NoError(t, err)
	require.Nil(t, e)
	requireProduct(t, p, got)
}

func testAdmitWithEngine(t *testing.T, s registry.Store) {
	p := NewProduct(t, s)
	want := NewEngine(t, s, p.ID, "user@example.com", func(e *bap.Engine) {
		e.LastHealthAt = ptr(bap.Now())
		e.BootDurationMS = ptr[int64](80)
	})
	NewEngine(t, s, p.ID, "someone-else")
	got, e, err := s.AdmitLookup(t.Context(), p.APIKeyHash, "user@example.com", bap.Now())
	require.NoError(t, err)
	requireProduct(t, p, got)
	require.NotNil(t, e)
	requireEngine(t, want, *e, true)
}

func testAdmitWrongKey(t *testing.T, s registry.Store) {
	p := NewProduct(t, s)
	NewEngine(t, s, p.ID, "u1")
	_, e, err := s.AdmitLookup(t.Context(), RandomKeyHash(), "u1", bap.Now())
	require.ErrorIs(t, err, registry.ErrNotFound)
	require.Nil(t, e)
}

func testAdmitPreviousKey(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	e := NewEngine(t, s, p.ID, "u1")
	now := bap.Now()
	grace := now.Add(time.Minute)
	require.NoError(t, s.RotateProductKey(ctx, p.ID, RandomKeyHash(), grace, audit.Entry{
		ProductID: p.ID, Action: audit.PlatformKeyRotated, Actor: audit.ActorAdmin,
	}))
	got, ge, err := s.AdmitLookup(ctx, p.APIKeyHash, "u1", now)
	require.NoError(t, err)
	require.Equal(t, p.ID, got.ID)
	require.NotNil(t, ge)
	require.Equal(t, e.ID, ge.ID)
	_, _, err = s.AdmitLookup(ctx, p.APIKeyHash, "u1", grace.Add(time.Second))
	require.ErrorIs(t, err, registry.ErrNotFound)
}

func testAdmitOtherProduct(t *testing.T, s registry.Store) {
	a := NewProduct(t, s)
	b := NewProduct(t, s)
	NewEngine(t, s, a.ID, "shared-user")
	got, e, err := s.AdmitLookup(t.Context(), b.APIKeyHash, "shared-user", bap.Now())
	require.NoError(t, err)
	require.Equal(t, b.ID, got.ID)
	require.Nil(t, e, "a product never sees another product's engine")
}

func testEngineRoundTrip(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	e := fullEngine(p.ID, "u1", 9001)
	require.NoError(t, StepsOf(s).InsertEngine(ctx, e, registry.Quota{}))

	got, err := s.GetEngine(ctx, e.ID)
	require.NoError(t, err)
	requireEngine(t, e, got, true)
	got, err = s.GetEngineByUser(ctx, p.ID, "u1")
	require.NoError(t, err)
	requireEngine(t, e, got, true)
	require.NoError(t, s.InTx(ctx, func(tx registry.Store) error {
		locked, err := tx.LockEngine(ctx, e.ID)
		require.NoError(t, err)
		requireEngine(t, e, locked, true)
		return nil
	}))
}

func testEngineMinimalRoundTrip(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	now := bap.Now()
	e := bap.Engine{
		ID: uuid.NewString(), ProductID: p.ID, UserID: "u.min", Status: bap.StateProvisioning,
		Port: 9002, CreatedAt: now, UpdatedAt: now,
	}
	require.NoError(t, StepsOf(s).InsertEngine(ctx, e, registry.Quota{MaxEngines: 1}))
	got, err := s.GetEngine(ctx, e.ID)
	require.NoError(t, err)
	requireEngine(t, e, got, true)
}

func testEngineUserConflict(t *testing.T, s registry.Store) {
	ctx := t.Context()
	a := NewProduct(t, s)
	b := NewProduct(t, s)
	first := NewEngine(t, s, a.ID, "u1")
	dup := fullEngine(a.ID, "u1", 9003)
	require.ErrorIs(t, StepsOf(s).InsertEngine(ctx, dup, registry.Quota{}), registry.ErrConflict)
	_, err := s.GetEngine(ctx, dup.ID)
	require.ErrorIs(t, err, registry.ErrNotFound)
	got, err := s.GetEngineByUser(ctx, a.ID, "u1")
	require.NoError(t, err)
	require.Equal(t, first.ID, got.ID)

	// The same user id under another product is another engine.
	other := fullEngine(b.ID, "u1", 9004)
	require.NoError(t, StepsOf(s).InsertEngine(ctx, other, registry.Quota{}))

	// So is a duplicate engine id.
	sameID := fullEngine(b.ID, "u2", 9005)
	sameID.ID = first.ID
	require.ErrorIs(t, StepsOf(s).InsertEngine(ctx, sameID, registry.Quota{}), registry.ErrConflict)
}

// testEngineConflictBeforeQuota: an existing engine for the user is reported
// as such even when the product is also at its limit (409 before 429).
func testEngineConflictBeforeQuota(t *testing.T, s registry.Store) {
	p := NewProduct(t, s)
	NewEngine(t, s, p.ID, "u1")
	err := StepsOf(s).InsertEngine(t.Context(), fullEngine(p.ID, "u1", 9006), registry.Quota{MaxEngines: 1})
	require.ErrorIs(t, err, registry.ErrConflict)
	require.NotErrorIs(t, err, registry.ErrQuotaExceeded)
}

func testEngineQuota(t *testing.T, s registry.Store) {
	ctx := t.Context()
	a := NewProduct(t, s)
	b := NewProduct(t, s)
	q := registry.Quota{MaxEngines: 2}
	require.NoError(t, StepsOf(s).InsertEngine(ctx, fullEngine(a.ID, "u1", 9001), q))
	// Engines count in any state, failed and stopped included.
	stopped := fullEngine(a.ID, "u2", 9002)
	stopped.Status = bap.StateStopped
	require.NoError(t, StepsOf(s).InsertEngine(ctx, stopped, q))
	refused := fullEngine(a.ID, "u3", 9003)
	require.ErrorIs(t, StepsOf(s).InsertEngine(ctx, refused, q), registry.ErrQuotaExceeded)
	_, err := s.GetEngine(ctx, refused.ID)
	require.ErrorIs(t, err, registry.ErrNotFound)

	// Another product's count is its own.
	require.NoError(t, StepsOf(s).InsertEngine(ctx, fullEngine(b.ID, "u3", 9004), q))
	// Zero means no limit.
	require.NoError(t, StepsOf(s).InsertEngine(ctx, refused, registry.Quota{}))
	_, total, err := s.ListEngines(ctx, registry.EngineFilter{ProductID: a.ID})
	require.NoError(t, err)
	require.Equal(t, 3, total)
}

// testEngineQuotaConcurrent: 50 concurrent inserts against max_engines=10;
// exactly 10 win and 40 are refused for quota.
func testEngineQuotaConcurrent(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	const n, limit = 50, 10
	_, errs := Concurrently(n, func(i int) (struct{}, error) {
		e := fullEngine(p.ID, "user-"+uuid.NewString()[:8], 10000+i)
		e.Status = bap.StateProvisioning
		return struct{}{}, StepsOf(s).InsertEngine(ctx, e, registry.Quota{MaxEngines: limit})
	})
	var ok, quota int
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, registry.ErrQuotaExceeded):
			quota++
		default:
			require.NoError(t, err, "only quota refusals are expected")
		}
	}
	require.Equal(t, limit, ok)
	require.Equal(t, n-limit, quota)
	_, total, err := s.ListEngines(ctx, registry.EngineFilter{ProductID: p.ID})
	require.NoError(t, err)
	require.Equal(t, limit, total)
}

func testEngineNotFound(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	id := uuid.NewString()
	_, err := s.GetEngine(ctx, id)
	require.ErrorIs(t, err, registry.ErrNotFound)
	_, err = s.GetEngineByUser(ctx, p.ID, "nobody")
	require.ErrorIs(t, err, registry.ErrNotFound)
	err = s.InTx(ctx, func(tx registry.Store) error {
		_, err := tx.LockEngine(ctx, id)
		return err
	})
	require.ErrorIs(t, err, registry.ErrNotFound)

	ghost := fullEngine(p.ID, "ghost", 9001)
	entry := audit.Entry{ProductID: p.ID, EngineID: ghost.ID, UserID: "ghost", Action: audit.Stop, Actor: p.Slug}
	require.ErrorIs(t, s.UpdateEngine(ctx, ghost, entry), registry.ErrNotFound)
	require.ErrorIs(t, s.DeleteEngine(ctx, ghost.ID, entry), registry.ErrNotFound)
	require.Empty(t, listAudit(t, s, registry.AuditFilter{EngineID: ghost.ID}),
		"a refused change writes no audit row")
}

func testEngineUpdateRoundTrip(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	e := NewEngine(t, s, p.ID, "u1", WithStatus(bap.StateProvisioning), func(e *bap.Engine) {
		e.KeyHash, e.KeyEnc, e.URL, e.InstanceID, e.Image = "", "", "", "", ""
	})

	// Every mutable field to a non-empty value.
	full := fullEngine(p.ID, "u1", 9100)
	full.ID, full.CreatedAt = e.ID, e.CreatedAt
	full.Claim.Detail = `{"from":"v1","to":"v2","snapshot":"snap-3"}` // an upgrade's, for its takeover
	before := bap.Now()
	require.NoError(t, s.UpdateEngine(ctx, full,
		audit.Entry{ProductID: p.ID, EngineID: e.ID, UserID: "u1", Action: audit.HealthFailed, Actor: audit.ActorSystem},
		audit.Entry{ProductID: p.ID, EngineID: e.ID, UserID: "u1", Action: audit.AutoRestartStart, Actor: audit.ActorSystem},
	))
	after := bap.Now()
	got, err := s.GetEngine(ctx, e.ID)
	require.NoError(t, err)
	requireEngine(t, full, got, false)
	require.False(t, got.UpdatedAt.Before(before), "updated_at is set to now")
	require.False(t, got.UpdatedAt.After(after), "updated_at is set to now")
	require.ElementsMatch(t, []audit.Action{audit.HealthFailed, audit.AutoRestartStart},
		auditActions(listAudit(t, s, registry.AuditFilter{EngineID: e.ID})))

	// And back: nil pointers, empty strings and zero counters round-trip too.
	cleared := full
	cleared.Status = bap.StateRunning
	cleared.KeyHash, cleared.KeyEnc, cleared.Image, cleared.URL = "", "", "", ""
	cleared.InstanceID, cleared.FailureReason = "", ""
	cleared.BootDurationMS, cleared.NextRestartAt, cleared.LastHealthAt, cleared.LastActiveAt = nil, nil, nil, nil
	cleared.HealthFailures, cleared.RestartAttempts = 0, 0
	cleared.Claim = bap.Claim{Epoch: full.Claim.Epoch} // an epoch outlives its claim
	cleared.Port = 9101
	require.NoError(t, s.UpdateEngine(ctx, cleared))
	got, err = s.GetEngine(ctx, e.ID)
	require.NoError(t, err)
	requireEngine(t, cleared, got, false)
	require.Len(t, listAudit(t, s, registry.AuditFilter{EngineID: e.ID}), 2, "no entries, no rows")

	// The immutable columns are not rewritten.
	moved := cleared
	moved.ProductID, moved.UserID, moved.CreatedAt = uuid.NewString(), "someone-else", bap.Now().Add(time.Hour)
	require.NoError(t, s.UpdateEngine(ctx, moved))
	got, err = s.GetEngine(ctx, e.ID)
	require.NoError(t, err)
	requireEngine(t, cleared, got, false)
}

func testEngineUpdateRollback(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	e := NewEngine(t, s, p.ID, "u1")
	err := s.InTx(ctx, func(tx registry.Store) error {
		cur, err := tx.LockEngine(ctx, e.ID)
		if err != nil {
			return err
		}
		cur.Status = bap.StateFailed
		cur.FailureReason = "died"
		if err := tx.UpdateEngine(ctx, cur, audit.Entry{
			ProductID: p.ID, EngineID: e.ID, UserID: "u1", Action: audit.EngineDied, Actor: audit.ActorSystem,
		}); err != nil {
			return err
		}
		got, err := tx.GetEngine(ctx, e.ID)
		require.NoError(t, err)
		require.Equal(t, bap.StateFailed, got.Status, "the transaction sees its update")
		return errBoom
	})
	require.ErrorIs(t, err, errBoom)
	got, err := s.GetEngine(ctx, e.ID)
	require.NoError(t, err)
	requireEngine(t, e, got, true)
	require.Empty(t, listAudit(t, s, registry.AuditFilter{EngineID: e.ID}))
}

func testEngineDelete(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	e := NewEngine(t, s, p.ID, "u1")
	keep := NewEngine(t, s, p.ID, "u2")
	require.NoError(t, s.DeleteEngine(ctx, e.ID, audit.Entry{
		ProductID: p.ID, EngineID: e.ID, UserID: "u1", Action: audit.Destroy, Actor: p.Slug,
	}))
	_, err := s.GetEngine(ctx, e.ID)
	require.ErrorIs(t, err, registry.ErrNotFound)

	allocs, err := s.ListPortAllocations(ctx)
	require.NoError(t, err)
	require.Len(t, allocs, 1, "the deleted engine's port is free")
	require.Equal(t, keep.Port, allocs[0].Port)
	require.Equal(t, keep.ID, allocs[0].EngineID)

	es := listAudit(t, s, registry.AuditFilter{EngineID: e.ID})
	require.Equal(t, []audit.Action{audit.Destroy}, auditActions(es))

	// The freed port is the next one handed out, and the user may have a new engine.
	again := NewEngine(t, s, p.ID, "u1")
	require.Equal(t, e.Port, again.Port)
}
