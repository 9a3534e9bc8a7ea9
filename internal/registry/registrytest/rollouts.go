package registrytest

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

func rolloutTests() []test {
	return []test{
		{"RoundTrip", testRolloutRoundTrip},
		{"OneUnderWayPerProduct", testRolloutOneUnderWay},
		{"Engines", testRolloutEngines},
		{"GoneWithProduct", testRolloutUnknownProduct},
	}
}

// NewRollout returns an unsaved running rollout of productID.
func NewRollout(productID, version string, percent int) bap.Rollout {
	now := bap.Now()
	return bap.Rollout{ID: uuid.NewString(), ProductID: productID, EngineVersion: version, Percent: percent,
		MaxParallel: 2, MaxFailures: 1, State: bap.RolloutRunning, CreatedAt: now, UpdatedAt: now}
}

func testRolloutRoundTrip(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	r := NewRollout(p.ID, "september-engine:2.4.0", 20)
	entry := audit.Entry{ProductID: p.ID, Action: audit.RolloutCreate, Actor: audit.ActorAdmin,
		Metadata: map[string]any{"rollout_id": r.ID}}
	require.NoError(t, s.CreateRollout(ctx, r, entry))
	got, err := s.GetRollout(ctx, r.ID)
	require.NoError(t, err)
	require.Equal(t, r, got)
	require.Equal(t, []audit.Action{audit.RolloutCreate}, auditActions(listAudit(t, s, registry.AuditFilter{ProductID: p.ID, Actions: []audit.Action{audit.RolloutCreate}})))

	before := bap.Now()
	r.Percent, r.State, r.Reason, r.FailureBase = 50, bap.RolloutPaused, "1 rolled back (max_failures 1)", 1
	require.NoError(t, s.UpdateRollout(ctx, r, audit.Entry{ProductID: p.ID, Action: audit.RolloutUpdate, Actor: audit.ActorSystem}))
	got, err = s.GetRollout(ctx, r.ID)
	require.NoError(t, err)
	require.Equal(t, 50, got.Percent)
	require.Equal(t, bap.RolloutPaused, got.State)
	require.Equal(t, r.Reason, got.Reason)
	require.Equal(t, 1, got.FailureBase)
	require.False(t, got.UpdatedAt.Before(before), "updated_at is set to now")
	require.Equal(t, r.CreatedAt, got.CreatedAt)

	r.State, r.Reason = bap.RolloutRunning, ""
	require.NoError(t, s.UpdateRollout(ctx, r))
	got, err = s.GetRollout(ctx, r.ID)
	require.NoError(t, err)
	require.Empty(t, got.Reason)

	_, err = s.GetRollout(ctx, uuid.NewString())
	require.ErrorIs(t, err, registry.ErrNotFound)
	_, err = s.GetRollout(ctx, "not-a-uuid")
	require.ErrorIs(t, err, registry.ErrNotFound)
	ghost := NewRollout(p.ID, "x", 10)
	require.ErrorIs(t, s.UpdateRollout(ctx, ghost), registry.ErrNotFound)
}

func testRolloutOneUnderWay(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	other := NewProduct(t, s)
	first := NewRollout(p.ID, "v2", 10)
	require.NoError(t, s.CreateRollout(ctx, first, audit.Entry{ProductID: p.ID, Action: audit.RolloutCreate, Actor: "admin"}))
	second := NewRollout(p.ID, "v3", 10)
	second.CreatedAt = second.CreatedAt.Add(time.Millisecond)
	err := s.CreateRollout(ctx, second, audit.Entry{ProductID: p.ID, Action: audit.RolloutCreate, Actor: "admin"})
	require.ErrorIs(t, err, registry.ErrConflict, "one rollout under way per product")
	require.Len(t, listAudit(t, s, registry.AuditFilter{ProductID: p.ID, Actions: []audit.Action{audit.RolloutCreate}}), 1,
		"a refused rollout writes no audit row")
	// Paused is still under way.
	first.State = bap.RolloutPaused
	require.NoError(t, s.UpdateRollout(ctx, first))
	require.ErrorIs(t, s.CreateRollout(ctx, second, audit.Entry{ProductID: p.ID, Action: audit.RolloutCreate, Actor: "admin"}), registry.ErrConflict)
	// Another product is not concerned.
	require.NoError(t, s.CreateRollout(ctx, NewRollout(other.ID, "v3", 10), audit.Entry{ProductID: other.ID, Action: audit.RolloutCreate, Actor: "admin"}))
	// Once done, the next may begin.
	first.State = bap.RolloutDone
	require.NoError(t, s.UpdateRollout(ctx, first))
	require.NoError(t, s.CreateRollout(ctx, second, audit.Entry{ProductID: p.ID, Action: audit.RolloutCreate, Actor: "admin"}))

	list, err := s.ListRollouts(ctx, p.ID)
	require.NoError(t, err)
	require.Len(t, list, 2)
	require.Equal(t, second.ID, list[0].ID, "newest first")
	running, err := s.RolloutsInState(ctx, bap.RolloutRunning, bap.RolloutPaused)
	require.NoError(t, err)
	require.Len(t, running, 2)
	for _, r := range running {
		require.NotEqual(t, first.ID, r.ID)
	}
	done, err := s.RolloutsInState(ctx, bap.RolloutDone)
	require.NoError(t, err)
	require.Len(t, done, 1)
}

func testRolloutEngines(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	r := NewRollout(p.ID, "v2", 50)
	require.NoError(t, s.CreateRollout(ctx, r, audit.Entry{ProductID: p.ID, Action: audit.RolloutCreate, Actor: "admin"}))
	e1, e2 := uuid.NewString(), uuid.NewString()
	require.NoError(t, s.SetRolloutEngine(ctx, bap.RolloutEngine{RolloutID: r.ID, EngineID: e1, UserID: "u1", Outcome: bap.OutcomeUpgrading}))
	require.NoError(t, s.SetRolloutEngine(ctx, bap.RolloutEngine{RolloutID: r.ID, EngineID: e2, UserID: "u2", Outcome: bap.OutcomeSkipped, Reason: "failed"}))
	require.NoError(t, s.SetRolloutEngine(ctx, bap.RolloutEngine{RolloutID: r.ID, EngineID: e1, UserID: "u1", Outcome: bap.OutcomeRolledBack, Reason: "refused"}))
	got, err := s.RolloutEngines(ctx, r.ID)
	require.NoError(t, err)
	require.Len(t, got, 2)
	byID := map[string]bap.RolloutEngine{}
	for _, re := range got {
		require.False(t, re.UpdatedAt.IsZero())
		byID[re.EngineID] = re
	}
	require.Equal(t, bap.OutcomeRolledBack, byID[e1].Outcome, "replaced")
	require.Equal(t, "refused", byID[e1].Reason)
	require.Equal(t, bap.OutcomeSkipped, byID[e2].Outcome)
	require.Equal(t, "u2", byID[e2].UserID)

	none, err := s.RolloutEngines(ctx, uuid.NewString())
	require.NoError(t, err)
	require.Empty(t, none)
	err = s.SetRolloutEngine(ctx, bap.RolloutEngine{RolloutID: uuid.NewString(), EngineID: e1, UserID: "u1", Outcome: bap.OutcomeUpgraded})
	require.ErrorIs(t, err, registry.ErrNotFound, "no such rollout")
}

func testRolloutUnknownProduct(t *testing.T, s registry.Store) {
	err := s.CreateRollout(t.Context(), NewRollout(uuid.NewString(), "v2", 10), audit.Entry{Action: audit.RolloutCreate, Actor: "admin"})
	require.ErrorIs(t, err, registry.ErrNotFound)
}
