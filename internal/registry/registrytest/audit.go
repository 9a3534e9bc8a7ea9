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

func auditTests() []test {
	return []test{
		{"AppendListRoundTrip", testAuditRoundTrip},
		{"NewestFirstIDBreaksTies", testAuditOrder},
		{"Filters", testAuditFilters},
		{"Pagination", testAuditPagination},
		{"Stats", testAuditStats},
		{"StatsEmpty", testAuditStatsEmpty},
		{"Prune", testAuditPrune},
	}
}

func testAuditRoundTrip(t *testing.T, s registry.Store) {
	ctx := t.Context()
	at := bap.Timestamp(time.Date(2021, 3, 4, 5, 6, 7, 891011000, time.UTC))
	full := audit.Entry{
		Timestamp: at, ProductID: uuid.NewString(), UserID: "user@example.com",
		EngineID: uuid.NewString(), Action: audit.Provision, Actor: "chat",
		Metadata: map[string]any{
			"reason": "ok", "attempt": float64(2), "ok": true, "none": nil,
			"nested": map[string]any{"list": []any{"a", float64(1.5)}},
		},
		DurationMS: ptr[int64](4321),
	}
	bare := audit.Entry{Action: audit.OrphanRemoved, Actor: audit.ActorSystem}
	before := bap.Now()
	require.NoError(t, s.AppendAudit(ctx, full, bare))
	after := bap.Now()
	require.NoError(t, s.AppendAudit(ctx))

	es := listAudit(t, s, registry.AuditFilter{})
	require.Len(t, es, 2)
	// bare was stamped now, so it is the newest.
	got := es[0]
	require.Equal(t, audit.OrphanRemoved, got.Action)
	require.Equal(t, audit.ActorSystem, got.Actor)
	require.Empty(t, got.ProductID, "NULL ids read back empty")
	require.Empty(t, got.UserID)
	require.Empty(t, got.EngineID)
	require.Empty(t, got.Metadata)
	require.Nil(t, got.DurationMS)
	require.False(t, got.Timestamp.Before(before), "a zero timestamp means now")
	require.False(t, got.Timestamp.After(after), "a zero timestamp means now")
	require.Equal(t, time.UTC, got.Timestamp.Location())

	got = es[1]
	require.NotZero(t, got.ID)
	require.NotEqual(t, es[0].ID, got.ID)
	requireTime(t, at, got.Timestamp, "Timestamp")
	got.ID, got.Timestamp = 0, at
	require.Equal(t, full, got)
}

func testAuditOrder(t *testing.T, s registry.Store) {
	ctx := t.Context()
	at := bap.Now()
	var entries []audit.Entry
	for _, a := range []audit.Action{audit.Start, audit.Stop, audit.Sleep} {
		entries = append(entries, audit.Entry{Timestamp: at, Action: a, Actor: audit.ActorSystem})
	}
	require.NoError(t, s.AppendAudit(ctx, entries...))
	require.NoError(t, s.AppendAudit(ctx, audit.Entry{Timestamp: at.Add(-time.Second), Action: audit.Wake, Actor: audit.ActorSystem}))
	require.NoError(t, s.AppendAudit(ctx, audit.Entry{Timestamp: at.Add(time.Second), Action: audit.Destroy, Actor: audit.ActorSystem}))
	es := listAudit(t, s, registry.AuditFilter{})
	require.Equal(t, []audit.Action{audit.Destroy, audit.Sleep, audit.Stop, audit.Start, audit.Wake}, auditActions(es))
	require.Greater(t, es[1].ID, es[2].ID)
	require.Greater(t, es[2].ID, es[3].ID)
}

func testAuditFilters(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p1, p2 := uuid.NewString(), uuid.NewString()
	e1, e2 := uuid.NewString(), uuid.NewString()
	base := bap.Timestamp(time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC))
	entry := func(min int, product, engine, user string, a audit.Action) audit.Entry {
		return audit.Entry{Timestamp: base.Add(time.Duration(min) * time.Minute),
			ProductID: product, EngineID: engine, UserID: user, Action: a, Actor: audit.ActorSystem}
	}
	require.NoError(t, s.AppendAudit(ctx,
		entry(0, p1, e1, "alice", audit.Provision),
		entry(1, p1, e1, "alice", audit.Stop),
		entry(2, p1, e2, "bob", audit.Provision),
		entry(3, p2, "", "", audit.PolicyUpdate),
		entry(4, p1, e1, "alice", audit.Start),
		entry(5, "", "", "", audit.OrphanRemoved),
	))

	actions := func(f registry.AuditFilter) []audit.Action { return auditActions(listAudit(t, s, f)) }
	require.Equal(t, []audit.Action{audit.Start, audit.Provision, audit.Stop, audit.Provision},
		actions(registry.AuditFilter{ProductID: p1}))
	require.Equal(t, []audit.Action{audit.Start, audit.Stop, audit.Provision},
		actions(registry.AuditFilter{EngineID: e1}))
	require.Equal(t, []audit.Action{audit.Provision},
		actions(registry.AuditFilter{UserID: "bob"}))
	require.Equal(t, []audit.Action{audit.Provision, audit.Provision},
		actions(registry.AuditFilter{Actions: []audit.Action{audit.Provision}}))
	require.Equal(t, []audit.Action{audit.Start, audit.Provision, audit.Stop, audit.Provision},
		actions(registry.AuditFilter{Actions: []audit.Action{audit.Provision, audit.Start, audit.Stop}}))
	require.Equal(t, []audit.Action{audit.OrphanRemoved, audit.Start, audit.PolicyUpdate},
		actions(registry.AuditFilter{Since: base.Add(3 * time.Minute)}), "since is inclusive")
	require.Equal(t, []audit.Action{audit.Start},
		actions(registry.AuditFilter{ProductID: p1, EngineID: e1, UserID: "alice",
			Actions: []audit.Action{audit.Start, audit.Provision}, Since: base.Add(time.Minute)}))
	require.Empty(t, actions(registry.AuditFilter{ProductID: p2, EngineID: e1}))
	require.Len(t, actions(registry.AuditFilter{}), 6)
}

func testAuditPagination(t *testing.T, s registry.Store) {
	ctx := t.Context()
	engine := uuid.NewString()
	base := bap.Now()
	for i := range 7 {
		require.NoError(t, s.AppendAudit(ctx, audit.Entry{
			Timestamp: base.Add(time.Duration(i) * time.Second), EngineID: engine,
			Action: audit.HealthCheck, Actor: audit.ActorSystem,
			Metadata: map[string]any{"i": float64(i)},
		}))
	}
	require.NoError(t, s.AppendAudit(ctx, audit.Entry{Action: audit.Start, Actor: audit.ActorSystem}))
	all := listAudit(t, s, registry.AuditFilter{EngineID: engine})
	require.Len(t, all, 7)
	var paged []audit.Entry
	for offset := 0; offset < 9; offset += 3 {
		page, total, err := s.ListAudit(ctx, registry.AuditFilter{EngineID: engine, Limit: 3, Offset: offset})
		require.NoError(t, err)
		require.Equal(t, 7, total, "total ignores the page")
		require.LessOrEqual(t, len(page), 3)
		paged = append(paged, page...)
	}
	require.Equal(t, all, paged)
	require.Equal(t, float64(6), all[0].Metadata["i"], "newest first")
	require.Equal(t, float64(0), all[6].Metadata["i"])
}

func testAuditStats(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p, other := uuid.NewString(), uuid.NewString()
	now := bap.Now()
	since := now.Add(-time.Hour)
	at := func(d time.Duration) time.Time { return now.Add(d) }
	e := func(product string, when time.Time, a audit.Action, ms *int64) audit.Entry {
		return audit.Entry{Timestamp: when, ProductID: product, EngineID: uuid.NewString(),
			Action: a, Actor: audit.ActorSystem, DurationMS: ms}
	}
	require.NoError(t, s.AppendAudit(ctx,
		// Before the window: totals only.
		e(p, at(-2*time.Hour), audit.Provision, ptr[int64](9000)),
		e(p, at(-2*time.Hour), audit.HealthFailed, nil),
		e(p, at(-2*time.Hour), audit.AutoRestartStart, nil),
		e(p, at(-2*time.Hour), audit.Destroy, nil),
		// In the window (since is inclusive).
		e(p, since, audit.Provision, ptr[int64](100)),
		e(p, at(-30*time.Minute), audit.Provision, ptr[int64](200)),
		e(p, at(-10*time.Minute), audit.Provision, nil), // no duration: not averaged
		e(p, at(-5*time.Minute), audit.ProvisionFailed, ptr[int64](60000)),
		e(p, at(-5*time.Minute), audit.HealthFailed, nil),
		e(p, at(-4*time.Minute), audit.EngineDied, nil),
		e(p, at(-3*time.Minute), audit.ReconcileFailed, nil),
		e(p, at(-2*time.Minute), audit.AutoRestartStart, nil),
		e(p, at(-2*time.Minute), audit.AutoRestartFailed, nil),
		e(p, at(-1*time.Minute), audit.AutoRestartStart, nil),
		e(p, at(-1*time.Minute), audit.Destroy, nil),
		e(p, at(-1*time.Minute), audit.Destroy, nil),
		// Another product's rows never count.
		e(other, at(-time.Minute), audit.Provision, ptr[int64](1)),
		e(other, at(-time.Minute), audit.EngineDied, nil),
		e(other, at(-time.Minute), audit.Destroy, nil),
	))
	st, err := s.AuditStats(ctx, p, since)
	require.NoError(t, err)
	require.Equal(t, registry.AuditStats{
		ProvisionsSince: 3,
		CrashesSince:    4,
		RestartsSince:   2,
		AvgBootMSSince:  150,
		TotalProvisions: 4,
		TotalDestroys:   3,
	}, st)

	st, err = s.AuditStats(ctx, p, now.Add(-15*time.Minute))
	require.NoError(t, err)
	require.Equal(t, 1, st.ProvisionsSince)
	require.Zero(t, st.AvgBootMSSince, "no provision with a duration in the window")
	require.Equal(t, 4, st.TotalProvisions)
}

func testAuditStatsEmpty(t *testing.T, s registry.Store) {
	st, err := s.AuditStats(t.Context(), uuid.NewString(), bap.Now().Add(-time.Hour))
	require.NoError(t, err)
	require.Equal(t, registry.AuditStats{}, st)
}

func testAuditPrune(t *testing.T, s registry.Store) {
	ctx := t.Context()
	now := bap.Now()
	day := 24 * time.Hour
	for _, d := range []time.Duration{10 * day, 5 * day, 3 * day, day, 0} {
		require.NoError(t, s.AppendAudit(ctx, audit.Entry{
			Timestamp: now.Add(-d), Action: audit.HealthCheck, Actor: audit.ActorSystem,
			Metadata: map[string]any{"days": float64(d / day)},
		}))
	}
	n, err := s.PruneAudit(ctx, now.Add(-3*day))
	require.NoError(t, err)
	require.EqualValues(t, 2, n, "strictly older than before")
	es := listAudit(t, s, registry.AuditFilter{})
	require.Len(t, es, 3)
	require.Equal(t, float64(3), es[2].Metadata["days"])

	n, err = s.PruneAudit(ctx, now.Add(-3*day))
	require.NoError(t, err)
	require.Zero(t, n)
}
