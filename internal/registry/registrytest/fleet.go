package registrytest

import (
	"cmp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

func fleetTests() []test {
	return []test{
		{"ListEveryProductWithSlug", testFleetList},
		{"Filters", testFleetFilters},
		{"EverySortBothWaysPaged", testFleetSorts},
		{"UnknownSortRefused", testFleetUnknownSort},
		{"AuditHourly", testAuditHourly},
		{"AuditDurations", testAuditDurations},
	}
}

// fleetFixture is two products with engines in varied states, users,
// creation times, failure counts and probe times.
type fleetFixture struct {
	alpha, bravo bap.Product
	engines      []registry.FleetEngine // every engine, in no particular order
}

func newFleetFixture(t *testing.T, s registry.Store) fleetFixture {
	alpha := NewProduct(t, s, func(p *bap.Product) { p.Slug = "alpha" })
	bravo := NewProduct(t, s, func(p *bap.Product) { p.Slug = "bravo" })
	base := bap.Timestamp(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	probed := base.Add(time.Hour)
	rows := []struct {
		product  bap.Product
		user     string
		state    bap.State
		minute   int // created_at offset; equal values tie
		failures int
		health   *time.Time
	}{
		{alpha, "Alice", bap.StateRunning, 0, 0, &probed},
		{alpha, "bob", bap.StateStopped, 1, 2, nil},
		{alpha, "carol_1", bap.StateFailed, 1, 3, ptr(probed.Add(-time.Minute))},
		{alpha, "dave%x", bap.StateRunning, 2, 0, ptr(probed.Add(time.Minute))},
		{alpha, "ALICE.two", bap.StateSleeping, 3, 1, &probed},
		{bravo, "alice", bap.StateRunning, 0, 0, nil},
		{bravo, "erin", bap.StateFailed, 4, 3, ptr(probed.Add(-time.Hour))},
		{bravo, "carolX1", bap.StateProvisioning, 5, 0, nil},
	}
	f := fleetFixture{alpha: alpha, bravo: bravo}
	for _, r := range rows {
		e := NewEngine(t, s, r.product.ID, r.user, WithStatus(r.state),
			WithCreatedAt(base.Add(time.Duration(r.minute)*time.Minute)),
			func(e *bap.Engine) { e.HealthFailures, e.LastHealthAt = r.failures, r.health })
		f.engines = append(f.engines, registry.FleetEngine{Engine: e, ProductSlug: r.product.Slug})
	}
	return f
}

// fleetCompare is the order a FleetSort names (ascending), in Go.
func fleetCompare(sort registry.FleetSort) func(a, b registry.FleetEngine) int {
	byID := func(a, b registry.FleetEngine) int { return strings.Compare(a.ID, b.ID) }
	then := func(fns ...func(a, b registry.FleetEngine) int) func(a, b registry.FleetEngine) int {
		return func(a, b registry.FleetEngine) int {
			for _, fn := range fns {
				if c := fn(a, b); c != 0 {
					return c
				}
			}
			return byID(a, b)
		}
	}
	user := func(a, b registry.FleetEngine) int { return strings.Compare(a.UserID, b.UserID) }
	switch sort {
	case registry.SortUser:
		return then(user)
	case registry.SortState:
		return then(func(a, b registry.FleetEngine) int { return strings.Compare(string(a.Status), string(b.Status)) }, user)
	case registry.SortProduct:
		return then(func(a, b registry.FleetEngine) int { return strings.Compare(a.ProductSlug, b.ProductSlug) }, user)
	case registry.SortFailures:
		return then(func(a, b registry.FleetEngine) int { return cmp.Compare(a.HealthFailures, b.HealthFailures) }, user)
	case registry.SortHealth:
		return then(func(a, b registry.FleetEngine) int {
			switch {
			case a.LastHealthAt == nil && b.LastHealthAt == nil:
				return 0
			case a.LastHealthAt == nil:
				return -1
			case b.LastHealthAt == nil:
				return 1
			}
			return a.LastHealthAt.Compare(*b.LastHealthAt)
		})
	default:
		return then(func(a, b registry.FleetEngine) int { return a.CreatedAt.Compare(b.CreatedAt) })
	}
}

func fleetIDs(es []registry.FleetEngine) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.ID
	}
	return out
}

func testFleetList(t *testing.T, s registry.Store) {
	f := newFleetFixture(t, s)
	got, total, err := s.ListFleet(t.Context(), registry.FleetFilter{})
	require.NoError(t, err)
	require.Equal(t, len(f.engines), total)
	want := slices.Clone(f.engines)
	slices.SortFunc(want, fleetCompare(registry.SortCreated))
	require.Equal(t, fleetIDs(want), fleetIDs(got), "default order: created_at, id")
	for i := range want {
		requireEngine(t, want[i].Engine, got[i].Engine, true)
		require.Equal(t, want[i].ProductSlug, got[i].ProductSlug)
	}
}

func testFleetFilters(t *testing.T, s registry.Store) {
	ctx := t.Context()
	f := newFleetFixture(t, s)
	users := func(flt registry.FleetFilter) []string {
		t.Helper()
		flt.Sort = registry.SortUser
		got, total, err := s.ListFleet(ctx, flt)
		require.NoError(t, err)
		require.Len(t, got, total, "an unpaged list holds the total")
		out := make([]string, len(got))
		for i, e := range got {
			out[i] = e.ProductSlug + "/" + e.UserID
		}
		return out
	}
	require.Equal(t, []string{"alpha/ALICE.two", "alpha/Alice", "alpha/bob", "alpha/carol_1", "alpha/dave%x"},
		users(registry.FleetFilter{ProductID: f.alpha.ID}))
	require.Equal(t, []string{"alpha/Alice", "bravo/alice", "alpha/dave%x"},
		users(registry.FleetFilter{Status: bap.StateRunning}), "by user_id, bytewise")
	require.Equal(t, []string{"alpha/ALICE.two", "alpha/Alice", "bravo/alice"},
		users(registry.FleetFilter{UserID: "aLiCe"}), "user_id search ignores case")
	require.Equal(t, []string{"alpha/carol_1"}, users(registry.FleetFilter{UserID: "l_"}), "_ is literal")
	require.Equal(t, []string{"alpha/dave%x"}, users(registry.FleetFilter{UserID: "%"}), "% is literal")
	require.Equal(t, []string{"bravo/alice"},
		users(registry.FleetFilter{ProductID: f.bravo.ID, Status: bap.StateRunning, UserID: "ali"}))
	require.Empty(t, users(registry.FleetFilter{ProductID: f.bravo.ID, Status: bap.StateStopped}))
	require.Empty(t, users(registry.FleetFilter{ProductID: uuid.NewString()}), "an unknown product has no engines")
	require.Empty(t, users(registry.FleetFilter{UserID: "zzz"}))
}

func testFleetSorts(t *testing.T, s registry.Store) {
	ctx := t.Context()
	f := newFleetFixture(t, s)
	for _, sort := range registry.FleetSorts {
		for _, desc := range []bool{false, true} {
			want := slices.Clone(f.engines)
			slices.SortFunc(want, fleetCompare(sort))
			if desc {
				slices.Reverse(want)
			}
			got, total, err := s.ListFleet(ctx, registry.FleetFilter{Sort: sort, Desc: desc})
			require.NoError(t, err)
			require.Equal(t, len(want), total)
			require.Equal(t, fleetIDs(want), fleetIDs(got), "sort %s desc=%v", sort, desc)

			var paged []registry.FleetEngine
			for offset := 0; offset < len(want)+3; offset += 3 {
				page, total, err := s.ListFleet(ctx, registry.FleetFilter{Sort: sort, Desc: desc, Limit: 3, Offset: offset})
				require.NoError(t, err)
				require.Equal(t, len(want), total, "total ignores the page")
				require.LessOrEqual(t, len(page), 3)
				paged = append(paged, page...)
			}
			require.Equal(t, fleetIDs(want), fleetIDs(paged), "pages of sort %s desc=%v", sort, desc)
		}
	}
}

func testFleetUnknownSort(t *testing.T, s registry.Store) {
	_, _, err := s.ListFleet(t.Context(), registry.FleetFilter{Sort: "port; DROP TABLE engines"})
	require.Error(t, err)
}

func testAuditHourly(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p, other := uuid.NewString(), uuid.NewString()
	h0 := bap.Timestamp(time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC))
	at := func(min int) time.Time { return h0.Add(time.Duration(min) * time.Minute) }
	e := func(product string, when time.Time, a audit.Action) audit.Entry {
		return audit.Entry{Timestamp: when, ProductID: product, Action: a, Actor: audit.ActorSystem}
	}
	require.NoError(t, s.AppendAudit(ctx,
		e(p, at(-1), audit.Provision), // before since
		e(p, at(0), audit.Provision),  // since is inclusive
		e(p, at(59), audit.Provision),
		e(p, at(30), audit.EngineDied),
		e(p, at(60), audit.Provision),
		e(p, at(61), audit.HealthFailed),
		e(p, at(62), audit.Stop), // not asked for
		e(p, at(185), audit.AutoRestartStart),
		e(other, at(5), audit.Provision),
	))
	actions := []audit.Action{audit.Provision, audit.EngineDied, audit.HealthFailed, audit.AutoRestartStart}
	got, err := s.AuditHourly(ctx, p, h0, actions)
	require.NoError(t, err)
	hour := func(n int) time.Time { return h0.Add(time.Duration(n) * time.Hour) }
	require.Equal(t, []registry.AuditHour{
		{Hour: hour(0), Action: audit.EngineDied, Count: 1},
		{Hour: hour(0), Action: audit.Provision, Count: 2},
		{Hour: hour(1), Action: audit.HealthFailed, Count: 1},
		{Hour: hour(1), Action: audit.Provision, Count: 1},
		{Hour: hour(3), Action: audit.AutoRestartStart, Count: 1},
	}, got)
	for _, h := range got {
		require.Equal(t, time.UTC, h.Hour.Location())
	}

	all, err := s.AuditHourly(ctx, "", h0, []audit.Action{audit.Provision})
	require.NoError(t, err)
	require.Equal(t, []registry.AuditHour{
		{Hour: hour(0), Action: audit.Provision, Count: 3},
		{Hour: hour(1), Action: audit.Provision, Count: 1},
	}, all, "every product when none is named")

	none, err := s.AuditHourly(ctx, p, h0, nil)
	require.NoError(t, err)
	require.Empty(t, none)
	none, err = s.AuditHourly(ctx, uuid.NewString(), h0, actions)
	require.NoError(t, err)
	require.Empty(t, none)
}

func testAuditDurations(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p, other := uuid.NewString(), uuid.NewString()
	since := bap.Now().Add(-time.Hour)
	e := func(product string, when time.Time, a audit.Action, ms *int64) audit.Entry {
		return audit.Entry{Timestamp: when, ProductID: product, Action: a, Actor: audit.ActorSystem, DurationMS: ms}
	}
	in := since.Add(time.Minute)
	require.NoError(t, s.AppendAudit(ctx,
		e(p, in, audit.Provision, ptr[int64](0)),
		e(p, in, audit.Provision, ptr[int64](99)),
		e(p, in, audit.Provision, ptr[int64](100)), // a bound belongs to the bucket above it
		e(p, in, audit.Provision, ptr[int64](999)),
		e(p, in, audit.Provision, ptr[int64](1000)),
		e(p, in, audit.Provision, ptr[int64](60000)),
		e(p, in, audit.Provision, nil),                                 // no duration
		e(p, since.Add(-time.Second), audit.Provision, ptr[int64](50)), // before since
		e(p, in, audit.Start, ptr[int64](50)),                          // another action
		e(other, in, audit.Provision, ptr[int64](50)),                  // another product
		e(p, since, audit.Provision, ptr[int64](5000)),                 // since is inclusive
	))
	bounds := []int64{100, 1000, 10000}
	got, err := s.AuditDurations(ctx, p, audit.Provision, since, bounds)
	require.NoError(t, err)
	require.Equal(t, []int{2, 2, 2, 1}, got)

	got, err = s.AuditDurations(ctx, "", audit.Provision, since, bounds)
	require.NoError(t, err)
	require.Equal(t, []int{3, 2, 2, 1}, got, "every product when none is named")

	got, err = s.AuditDurations(ctx, uuid.NewString(), audit.Provision, since, bounds)
	require.NoError(t, err)
	require.Equal(t, []int{0, 0, 0, 0}, got)

	got, err = s.AuditDurations(ctx, p, audit.Provision, since, nil)
	require.NoError(t, err)
	require.Equal(t, []int{7}, got, "no bounds: one bucket")
}
