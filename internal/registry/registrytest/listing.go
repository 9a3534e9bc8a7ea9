package registrytest

import (
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

func testEngineList(t *testing.T, s registry.Store) {
	ctx := t.Context()
	a := NewProduct(t, s)
	b := NewProduct(t, s)
	base := bap.Timestamp(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	statuses := []bap.State{bap.StateRunning, bap.StateSleeping, bap.StateRunning, bap.StateFailed, bap.StateRunning}
	var want []bap.Engine
	for i, st := range statuses {
		// Two engines share a creation time: id breaks the tie.
		at := base.Add(time.Duration(min(i, 3)) * time.Microsecond)
		want = append(want, NewEngine(t, s, a.ID, "u"+string(rune('a'+i)), WithStatus(st), WithCreatedAt(at)))
	}
	// An engine created earlier under another product is never listed.
	NewEngine(t, s, b.ID, "ua", WithCreatedAt(base.Add(-time.Hour)))
	slices.SortStableFunc(want, func(x, y bap.Engine) int {
		if c := x.CreatedAt.Compare(y.CreatedAt); c != 0 {
			return c
		}
		if x.ID < y.ID {
			return -1
		}
		return 1
	})

	got, total, err := s.ListEngines(ctx, registry.EngineFilter{ProductID: a.ID})
	require.NoError(t, err)
	require.Equal(t, 5, total)
	require.Equal(t, engineIDs(want), engineIDs(got))
	for i := range want {
		requireEngine(t, want[i], got[i], true)
	}

	running, total, err := s.ListEngines(ctx, registry.EngineFilter{ProductID: a.ID, Status: bap.StateRunning})
	require.NoError(t, err)
	require.Equal(t, 3, total)
	var wantRunning []string
	for _, e := range want {
		if e.Status == bap.StateRunning {
			wantRunning = append(wantRunning, e.ID)
		}
	}
	require.Equal(t, wantRunning, engineIDs(running))

	page, total, err := s.ListEngines(ctx, registry.EngineFilter{ProductID: a.ID, Limit: 2, Offset: 1})
	require.NoError(t, err)
	require.Equal(t, 5, total, "total ignores the page")
	require.Equal(t, engineIDs(want[1:3]), engineIDs(page))

	page, total, err = s.ListEngines(ctx, registry.EngineFilter{ProductID: a.ID, Offset: 3})
	require.NoError(t, err)
	require.Equal(t, 5, total)
	require.Equal(t, engineIDs(want[3:]), engineIDs(page), "no limit: the rest")

	page, total, err = s.ListEngines(ctx, registry.EngineFilter{ProductID: a.ID, Limit: 10, Offset: 10})
	require.NoError(t, err)
	require.Equal(t, 5, total)
	require.Empty(t, page)

	none, total, err := s.ListEngines(ctx, registry.EngineFilter{ProductID: a.ID, Status: bap.StateDestroying})
	require.NoError(t, err)
	require.Zero(t, total)
	require.Empty(t, none)
}

func testEnginesByStatus(t *testing.T, s registry.Store) {
	ctx := t.Context()
	a := NewProduct(t, s)
	b := NewProduct(t, s)
	r1 := NewEngine(t, s, a.ID, "u1", WithStatus(bap.StateRunning))
	r2 := NewEngine(t, s, b.ID, "u1", WithStatus(bap.StateRunning))
	sl := NewEngine(t, s, b.ID, "u2", WithStatus(bap.StateSleeping))
	NewEngine(t, s, a.ID, "u3", WithStatus(bap.StateStopped))

	sorted := func(ids ...string) []string { slices.Sort(ids); return ids }
	got, err := s.EnginesByStatus(ctx, bap.StateRunning)
	require.NoError(t, err)
	require.Equal(t, sorted(r1.ID, r2.ID), engineIDs(got))
	got, err = s.EnginesByStatus(ctx, bap.StateRunning, bap.StateSleeping)
	require.NoError(t, err)
	require.Equal(t, sorted(r1.ID, r2.ID, sl.ID), engineIDs(got))
	for _, e := range got {
		if e.ID == sl.ID {
			requireEngine(t, sl, e, true)
		}
	}
	got, err = s.EnginesByStatus(ctx, bap.StateProvisioning)
	require.NoError(t, err)
	require.Empty(t, got)
	got, err = s.EnginesByStatus(ctx)
	require.NoError(t, err)
	require.Empty(t, got, "no states selects nothing")
}

func testCountByStatus(t *testing.T, s registry.Store) {
	ctx := t.Context()
	a := NewProduct(t, s)
	b := NewProduct(t, s)
	counts, err := s.CountByStatus(ctx, a.ID)
	require.NoError(t, err)
	require.Empty(t, counts)

	NewEngine(t, s, a.ID, "u1", WithStatus(bap.StateRunning))
	NewEngine(t, s, a.ID, "u2", WithStatus(bap.StateRunning))
	NewEngine(t, s, a.ID, "u3", WithStatus(bap.StateFailed))
	NewEngine(t, s, b.ID, "u1", WithStatus(bap.StateSleeping))
	NewEngine(t, s, b.ID, "u2", WithStatus(bap.StateRunning))

	counts, err = s.CountByStatus(ctx, a.ID)
	require.NoError(t, err)
	require.Equal(t, map[bap.State]int{bap.StateRunning: 2, bap.StateFailed: 1}, counts)
	counts, err = s.CountByStatus(ctx, "")
	require.NoError(t, err)
	require.Equal(t, map[bap.State]int{bap.StateRunning: 3, bap.StateFailed: 1, bap.StateSleeping: 1}, counts)
}

func testCountByProductStatus(t *testing.T, s registry.Store) {
	ctx := t.Context()
	a := NewProduct(t, s, func(p *bap.Product) { p.Slug = "alpha" })
	b := NewProduct(t, s, func(p *bap.Product) { p.Slug = "bravo" })
	NewProduct(t, s, func(p *bap.Product) { p.Slug = "empty" })
	NewEngine(t, s, a.ID, "u1", WithStatus(bap.StateRunning))
	NewEngine(t, s, a.ID, "u2", WithStatus(bap.StateStopped))
	NewEngine(t, s, a.ID, "u3", WithStatus(bap.StateRunning))
	NewEngine(t, s, b.ID, "u1", WithStatus(bap.StateProvisioning))

	got, err := s.CountByProductStatus(ctx)
	require.NoError(t, err)
	// A product without engines may be absent or present with no counts.
	if m, ok := got["empty"]; ok {
		require.Empty(t, m)
		delete(got, "empty")
	}
	require.Equal(t, map[string]map[bap.State]int{
		"alpha": {bap.StateRunning: 2, bap.StateStopped: 1},
		"bravo": {bap.StateProvisioning: 1},
	}, got)
}

func testTouchActive(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	e1 := NewEngine(t, s, p.ID, "u1")
	e2 := NewEngine(t, s, p.ID, "u2")
	e3 := NewEngine(t, s, p.ID, "u3")
	require.Nil(t, e1.LastActiveAt)

	at := bap.Now().Add(time.Second)
	require.NoError(t, s.TouchActive(ctx, []string{e1.ID, e2.ID, uuid.NewString()}, at))
	require.NoError(t, s.TouchActive(ctx, nil, at))
	for _, e := range []bap.Engine{e1, e2} {
		got, err := s.GetEngine(ctx, e.ID)
		require.NoError(t, err)
		requireTimePtr(t, &at, got.LastActiveAt, "LastActiveAt")
		require.Equal(t, e.Status, got.Status)
	}
	got, err := s.GetEngine(ctx, e3.ID)
	require.NoError(t, err)
	require.Nil(t, got.LastActiveAt, "an engine not listed is not touched")
}

func testRecordHealth(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	earlier := bap.Now().Add(-time.Minute)
	sick := NewEngine(t, s, p.ID, "sick", func(e *bap.Engine) {
		e.HealthFailures = 2
		e.LastHealthAt = &earlier
	})
	fine := NewEngine(t, s, p.ID, "fine")
	flaky := NewEngine(t, s, p.ID, "flaky", func(e *bap.Engine) { e.HealthFailures = 1 })

	at := bap.Now()
	require.NoError(t, s.RecordHealth(ctx, []registry.HealthResult{
		{EngineID: sick.ID, OK: true, At: at},
		{EngineID: fine.ID, OK: false, At: at},
		{EngineID: uuid.NewString(), OK: true, At: at}, // vanished: skipped
		{EngineID: flaky.ID, OK: false, At: at},
		{EngineID: flaky.ID, OK: false, At: at.Add(time.Second)},
	}))
	require.NoError(t, s.RecordHealth(ctx, nil))

	got, err := s.GetEngine(ctx, sick.ID)
	require.NoError(t, err)
	require.Zero(t, got.HealthFailures, "a success resets the failures")
	requireTimePtr(t, &at, got.LastHealthAt, "LastHealthAt")

	got, err = s.GetEngine(ctx, fine.ID)
	require.NoError(t, err)
	require.Equal(t, 1, got.HealthFailures)
	require.Nil(t, got.LastHealthAt, "a failure does not set last_health_at")

	got, err = s.GetEngine(ctx, flaky.ID)
	require.NoError(t, err)
	require.Equal(t, 3, got.HealthFailures)
	require.Equal(t, bap.StateRunning, got.Status, "health results never change the state")

	// A failed probe sent before the row's last update (an operation
	// overtook it) does not count; one sent after it does.
	before := got.UpdatedAt.Add(-time.Millisecond)
	after := got.UpdatedAt.Add(time.Millisecond)
	fineBefore, err := s.GetEngine(ctx, fine.ID)
	require.NoError(t, err)
	require.NoError(t, s.RecordHealth(ctx, []registry.HealthResult{
		{EngineID: flaky.ID, OK: false, At: at, Sent: before},
		{EngineID: fine.ID, OK: false, At: at, Sent: fineBefore.UpdatedAt.Add(-time.Millisecond)},
	}))
	got, err = s.GetEngine(ctx, flaky.ID)
	require.NoError(t, err)
	require.Equal(t, 3, got.HealthFailures, "a probe an update overtook does not count")
	fineNow, err := s.GetEngine(ctx, fine.ID)
	require.NoError(t, err)
	require.Equal(t, 1, fineNow.HealthFailures, "a probe an update overtook does not count")
	require.NoError(t, s.RecordHealth(ctx, []registry.HealthResult{
		{EngineID: flaky.ID, OK: false, At: at, Sent: after},
		{EngineID: flaky.ID, OK: false, At: at, Sent: after.Add(time.Millisecond)},
	}))
	got, err = s.GetEngine(ctx, flaky.ID)
	require.NoError(t, err)
	require.Equal(t, 5, got.HealthFailures, "probes sent after the update count")

	// In one batch, each failure is judged on its own send time.
	require.NoError(t, s.RecordHealth(ctx, []registry.HealthResult{
		{EngineID: flaky.ID, OK: false, At: at, Sent: before},
		{EngineID: flaky.ID, OK: false, At: at, Sent: after},
		{EngineID: flaky.ID, OK: false, At: at},
	}))
	got, err = s.GetEngine(ctx, flaky.ID)
	require.NoError(t, err)
	require.Equal(t, 7, got.HealthFailures, "the overtaken probe alone does not count")
}
