// Package registrytest holds the conformance suite every registry.Store
// implementation runs, and fixture factories other packages' tests use to
// put products and engines into a real store.
//
// A store passes when Run is green: the suite, not shared SQL, is what makes
// the SQLite and PostgreSQL stores interchangeable.
package registrytest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"reflect"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// Port range NewEngine allocates from. Suites that allocate ports of their
// own should stay outside it.
const (
	FixturePortMin = 20000
	FixturePortMax = 29999
)

// test is one conformance case; it gets a fresh, empty store.
type test struct {
	name string
	fn   func(t *testing.T, s registry.Store)
}

// group is a named set of cases, run as nested subtests (Store/Group/Case).
type group struct {
	name  string
	tests []test
}

// Run runs the conformance suite. newStore must return a fresh, empty,
// migrated store for each subtest and arrange its Close with t.Cleanup;
// subtests run in parallel, so it must be safe to call concurrently.
// Subtests are named Group/Case so `go test -v` lists each behaviour.
func Run(t *testing.T, newStore func(t *testing.T) registry.Store) {
	groups := []group{
		{"Tx", txTests()},
		{"Product", productTests()},
		{"Admit", admitTests()},
		{"Engine", engineTests()},
		{"Port", portTests()},
		{"Audit", auditTests()},
		{"Fleet", fleetTests()},
		{"Changes", changeTests()},
		{"Replica", replicaTests()},
		{"Claim", claimTests()},
		{"Pool", poolTests()},
		{"Rollout", rolloutTests()},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) {
			for _, tc := range g.tests {
				t.Run(tc.name, func(t *testing.T) {
					// Each test has a store of its own (a database cloned
					// from a template, or a file), so they run side by side.
					t.Parallel()
					s := newStore(t)
					require.NotNil(t, s, "newStore returned nil")
					tc.fn(t, s)
				})
			}
		})
	}
}

// RandomKeyHash returns a random lowercase hex string shaped like a SHA-256
// key hash.
func RandomKeyHash() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// randomSlug returns a slug unlikely to collide.
func randomSlug() string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return "p-" + hex.EncodeToString(b)
}

// NewProduct registers a product with a unique slug, a random key hash and
// an empty policy; mods adjust it before the insert. It returns the product
// as the store reads it back.
func NewProduct(t testing.TB, s registry.Store, mods ...func(*bap.Product)) bap.Product {
	t.Helper()
	p := bap.Product{
		ID:          uuid.NewString(),
		Slug:        randomSlug(),
		DisplayName: "Test product",
		APIKeyHash:  RandomKeyHash(),
		CreatedAt:   bap.Now(),
	}
	for _, m := range mods {
		m(&p)
	}
	ctx := t.Context()
	require.NoError(t, s.CreateProduct(ctx, p, audit.Entry{
		ProductID: p.ID, Action: audit.PolicyRegister, Actor: audit.ActorAdmin,
	}))
	got, err := s.GetProduct(ctx, p.ID)
	require.NoError(t, err)
	return got
}

// WithPolicy is a NewProduct modifier that sets the policy from JSON.
func WithPolicy(t testing.TB, policyJSON string) func(*bap.Product) {
	t.Helper()
	pol, err := bap.ParsePolicy([]byte(policyJSON))
	require.NoError(t, err)
	return func(p *bap.Product) { p.Policy = pol }
}

// NewEngine reserves a port in [FixturePortMin, FixturePortMax] and inserts a
// running engine of productID for userID, without quota; mods adjust it
// before the insert. It returns the engine as the store reads it back.
func NewEngine(t testing.TB, s registry.Store, productID, userID string, mods ...func(*bap.Engine)) bap.Engine {
	t.Helper()
	ctx := t.Context()
	id := uuid.NewString()
	port, err := StepsOf(s).AllocatePort(ctx, id, FixturePortMin, FixturePortMax)
	require.NoError(t, err)
	now := bap.Now()
	e := bap.Engine{
		ID:         id,
		ProductID:  productID,
		UserID:     userID,
		Status:     bap.StateRunning,
		Port:       port,
		KeyHash:    RandomKeyHash(),
		KeyEnc:     "gAAAAA-fixture-token",
		Image:      "september-engine:test",
		URL:        "http://127.0.0.1:" + strconv.Itoa(port),
		InstanceID: "instance-" + id[:8],
		CreatedAt:  now,
		UpdatedAt:  now,
	}
	for _, m := range mods {
		m(&e)
	}
	require.NoError(t, StepsOf(s).InsertEngine(ctx, e, registry.Quota{}))
	got, err := s.GetEngine(ctx, e.ID)
	require.NoError(t, err)
	return got
}

// WithStatus is a NewEngine modifier that sets the state.
func WithStatus(st bap.State) func(*bap.Engine) {
	return func(e *bap.Engine) { e.Status = st }
}

// WithCreatedAt is a NewEngine modifier that sets created_at and updated_at.
func WithCreatedAt(at time.Time) func(*bap.Engine) {
	return func(e *bap.Engine) { e.CreatedAt, e.UpdatedAt = at, at }
}

// Concurrently calls fn(0) to fn(n-1) on n goroutines released together,
// so that they race for the store, and returns their results and errors by
// i once all have returned.
func Concurrently[T any](n int, fn func(i int) (T, error)) ([]T, []error) {
	out, errs := make([]T, n), make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			out[i], errs[i] = fn(i)
		})
	}
	close(start)
	wg.Wait()
	return out, errs
}

// Steps are what both stores offer beyond registry.Store, for tests only:
// the single steps ProvisionEngine does in one, to set up rows and ports
// directly and to test each step on its own.
type Steps interface {
	// InsertEngine inserts e (normally in provisioning, with ID,
	// timestamps, Port and the provision's Claim already set) only if the
	// product is under q; the check and insert are atomic against
	// concurrent inserts. ErrQuotaExceeded, ErrConflict (engine for that
	// user exists).
	InsertEngine(ctx context.Context, e bap.Engine, q registry.Quota) error
	// AllocatePort reserves the lowest free port in [min,max] for
	// engineID. Concurrent allocations never return the same port.
	// ErrPortExhausted.
	AllocatePort(ctx context.Context, engineID string, min, max int) (int, error)
	// ReleasePort frees a port; freeing a free port is not an error.
	ReleasePort(ctx context.Context, port int) error
}

// StepsOf returns s's Steps. A test's wrapper that embeds a registry.Store
// gives the Steps of the store it wraps. It panics when there are none.
func StepsOf(s registry.Store) Steps {
	if st, ok := s.(Steps); ok {
		return st
	}
	v := reflect.ValueOf(s)
	for v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	if v.Kind() == reflect.Struct {
		for i := range v.NumField() {
			f := v.Type().Field(i)
			if f.Anonymous && f.IsExported() && f.Type == reflect.TypeFor[registry.Store]() {
				return StepsOf(v.Field(i).Interface().(registry.Store))
			}
		}
	}
	panic(fmt.Sprintf("registrytest: %T has no InsertEngine, AllocatePort, ReleasePort", s))
}
