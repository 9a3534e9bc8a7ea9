package registrytest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

func portTests() []test {
	return []test{
		{"LowestFreeAndReuse", testPortLowestFree},
		{"Exhausted", testPortExhausted},
		{"Concurrent100NeverDuplicate", testPortConcurrent},
		{"InTxRollbackFreesPort", testPortRollback},
		{"FreeOrphanPorts", testPortOrphans},
		{"ProvisionEngineOnLowestPort", testProvisionEngine},
		{"ProvisionEngineConcurrent50Max20", testProvisionEngineConcurrent},
	}
}

func allocate(t testing.TB, s registry.Store, engineID string, lo, hi int) int {
	t.Helper()
	port, err := StepsOf(s).AllocatePort(t.Context(), engineID, lo, hi)
	require.NoError(t, err)
	return port
}

func allocatedPorts(t testing.TB, s registry.Store) []int {
	t.Helper()
	allocs, err := s.ListPortAllocations(t.Context())
	require.NoError(t, err)
	out := make([]int, len(allocs))
	for i, a := range allocs {
		out[i] = a.Port
	}
	return out
}

func testPortLowestFree(t *testing.T, s registry.Store) {
	ctx := t.Context()
	const lo, hi = 41000, 41009
	e1, e2, e3 := uuid.NewString(), uuid.NewString(), uuid.NewString()
	before := bap.Now()
	require.Equal(t, lo, allocate(t, s, e1, lo, hi))
	require.Equal(t, lo+1, allocate(t, s, e2, lo, hi))
	require.Equal(t, lo+2, allocate(t, s, e3, lo, hi))
	// A port below the range does not count.
	require.Equal(t, lo-5, allocate(t, s, e3, lo-5, lo-5))

	allocs, err := s.ListPortAllocations(ctx)
	require.NoError(t, err)
	require.Len(t, allocs, 4)
	wantOwners := []string{e3, e1, e2, e3}
	for i, a := range allocs {
		require.Equal(t, []int{lo - 5, lo, lo + 1, lo + 2}[i], a.Port)
		require.Equal(t, wantOwners[i], a.EngineID)
		require.False(t, a.CreatedAt.Before(before), "created_at is set")
	}

	// A hole in the middle is filled first, then the bottom.
	require.NoError(t, StepsOf(s).ReleasePort(ctx, lo+1))
	require.Equal(t, lo+1, allocate(t, s, e2, lo, hi))
	require.NoError(t, StepsOf(s).ReleasePort(ctx, lo))
	require.NoError(t, StepsOf(s).ReleasePort(ctx, lo), "releasing a free port is not an error")
	require.NoError(t, StepsOf(s).ReleasePort(ctx, 65000))
	require.Equal(t, lo, allocate(t, s, e1, lo, hi))
	require.Equal(t, lo+3, allocate(t, s, uuid.NewString(), lo, hi))
	require.Equal(t, []int{lo - 5, lo, lo + 1, lo + 2, lo + 3}, allocatedPorts(t, s))
}

func testPortExhausted(t *testing.T, s registry.Store) {
	ctx := t.Context()
	const lo, hi = 43000, 43002
	for i := range 3 {
		require.Equal(t, lo+i, allocate(t, s, uuid.NewString(), lo, hi))
	}
	_, err := StepsOf(s).AllocatePort(ctx, uuid.NewString(), lo, hi)
	require.ErrorIs(t, err, registry.ErrPortExhausted)
	require.Equal(t, []int{lo, lo + 1, lo + 2}, allocatedPorts(t, s), "nothing left behind")

	// A one-port range, and freeing makes room again.
	require.NoError(t, StepsOf(s).ReleasePort(ctx, hi))
	require.Equal(t, hi, allocate(t, s, uuid.NewString(), hi, hi))
	_, err = StepsOf(s).AllocatePort(ctx, uuid.NewString(), hi, hi)
	require.ErrorIs(t, err, registry.ErrPortExhausted)
}

// testPortConcurrent: 100 concurrent allocations get 100 distinct ports, and
// since each takes the lowest free one, exactly the lowest 100.
func testPortConcurrent(t *testing.T, s registry.Store) {
	ctx := t.Context()
	const n, lo, hi = 100, 44000, 44199
	ports, errs := Concurrently(n, func(int) (int, error) {
		return StepsOf(s).AllocatePort(ctx, uuid.NewString(), lo, hi)
	})
	for _, err := range errs {
		require.NoError(t, err)
	}
	slices.Sort(ports)
	want := make([]int, n)
	for i := range want {
		want[i] = lo + i
	}
	require.Equal(t, want, ports, "no duplicates, no gaps")
	require.Equal(t, want, allocatedPorts(t, s))
}

func testPortRollback(t *testing.T, s registry.Store) {
	ctx := t.Context()
	err := s.InTx(ctx, func(tx registry.Store) error {
		port, err := StepsOf(tx).AllocatePort(ctx, uuid.NewString(), 45000, 45010)
		require.NoError(t, err)
		require.Equal(t, 45000, port)
		return errBoom
	})
	require.ErrorIs(t, err, errBoom)
	require.Empty(t, allocatedPorts(t, s))
	require.Equal(t, 45000, allocate(t, s, uuid.NewString(), 45000, 45010))
}

func testPortOrphans(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	e := NewEngine(t, s, p.ID, "u1")
	ghost := uuid.NewString()
	allocate(t, s, ghost, 46000, 46010)
	allocate(t, s, ghost, 46000, 46010)
	allocate(t, s, uuid.NewString(), 46000, 46010)

	n, err := s.FreeOrphanPorts(ctx)
	require.NoError(t, err)
	require.Equal(t, 3, n)
	allocs, err := s.ListPortAllocations(ctx)
	require.NoError(t, err)
	require.Len(t, allocs, 1)
	require.Equal(t, e.Port, allocs[0].Port)
	require.Equal(t, e.ID, allocs[0].EngineID)

	n, err = s.FreeOrphanPorts(ctx)
	require.NoError(t, err)
	require.Zero(t, n)
}

// provisioning is an unsaved provisioning engine of productID for userID.
func provisioning(productID, userID string) bap.Engine {
	now := bap.Now()
	return bap.Engine{ID: uuid.NewString(), ProductID: productID, UserID: userID, Status: bap.StateProvisioning,
		Claim: bap.Claim{Op: bap.OpProvision, Owner: "r", Epoch: 1, StartedAt: &now}, CreatedAt: now, UpdatedAt: now}
}

func testProvisionEngine(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	allocate(t, s, uuid.NewString(), 31000, 31000) // 31000 taken
	e := provisioning(p.ID, "alice")
	port, err := s.ProvisionEngine(ctx, e, registry.Quota{}, 31000, 31002)
	require.NoError(t, err)
	require.Equal(t, 31001, port, "the lowest free port")
	got, err := s.GetEngine(ctx, e.ID)
	require.NoError(t, err)
	require.Equal(t, 31001, got.Port)
	require.Equal(t, e.Claim.Op, got.Claim.Op)
	require.Equal(t, bap.StateProvisioning, got.Status)

	before := allocatedPorts(t, s)
	_, err = s.ProvisionEngine(ctx, provisioning(p.ID, "alice"), registry.Quota{}, 31000, 31002)
	require.ErrorIs(t, err, registry.ErrConflict, "the user has an engine")
	_, err = s.ProvisionEngine(ctx, provisioning(p.ID, "alice"), registry.Quota{MaxEngines: 1}, 31000, 31001)
	require.ErrorIs(t, err, registry.ErrConflict, "the user has an engine, also when the quota and every port are used")
	_, err = s.ProvisionEngine(ctx, provisioning(p.ID, "bob"), registry.Quota{MaxEngines: 1}, 31000, 31002)
	require.ErrorIs(t, err, registry.ErrQuotaExceeded)
	_, err = s.ProvisionEngine(ctx, provisioning(p.ID, "carol"), registry.Quota{}, 31000, 31001)
	require.ErrorIs(t, err, registry.ErrPortExhausted)
	require.Equal(t, before, allocatedPorts(t, s), "a refused provision allocates nothing")
	_, err = s.GetEngineByUser(ctx, p.ID, "carol")
	require.ErrorIs(t, err, registry.ErrNotFound, "and inserts nothing")
}

// testProvisionEngineConcurrent races 50 provisions of one product with
// max_engines 20 over 30 ports: exactly 20 engines, on 20 distinct ports,
// the lowest ones.
func testProvisionEngineConcurrent(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		ports []int
		quota int
	)
	for i := range 50 {
		wg.Go(func() {
			port, err := s.ProvisionEngine(ctx, provisioning(p.ID, fmt.Sprintf("u%d", i)), registry.Quota{MaxEngines: 20}, 32000, 32029)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ports = append(ports, port)
			case errors.Is(err, registry.ErrQuotaExceeded):
				quota++
			default:
				t.Errorf("provision %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	require.Len(t, ports, 20)
	require.Equal(t, 30, quota)
	slices.Sort(ports)
	for i, port := range ports {
		require.Equal(t, 32000+i, port, "distinct and lowest")
	}
}
