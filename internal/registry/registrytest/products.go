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

func productTests() []test {
	return []test{
		{"CreateGetRoundTrip", testProductRoundTrip},
		{"CreateWritesAudit", testProductCreateAudit},
		{"SlugConflict", testProductSlugConflict},
		{"GetNotFound", testProductNotFound},
		{"ListOrderedBySlug", testProductList},
		{"ByKeyHash", testProductByKeyHash},
		{"BySlug", testProductBySlug},
		{"RotateKeyGrace", testProductRotateKey},
		{"RotateKeyNotFound", testProductRotateNotFound},
		{"UpdatePolicyReplacesAndKeepsUnknownKeys", testProductUpdatePolicy},
		{"UpdatePolicyNotFound", testProductUpdatePolicyNotFound},
	}
}

func testProductRoundTrip(t *testing.T, s registry.Store) {
	ctx := t.Context()
	pol, err := bap.ParsePolicy([]byte(`{"max_engines": 3, "rate_limit_rpm": 60, "max_running": 2,
		"engine_memory_mb": 512, "engine_cpus": 1.5, "x-team": {"name": "core", "tags": ["a", "b"]}}`))
	require.NoError(t, err)
	expires := bap.Timestamp(time.Date(2030, 1, 2, 3, 4, 5, 123456789, time.FixedZone("X", 3600)))
	p := bap.Product{
		ID: uuid.NewString(), Slug: "chat", DisplayName: "Chat backend ☕",
		APIKeyHash: RandomKeyHash(), PrevAPIKeyHash: RandomKeyHash(), PrevKeyExpiresAt: &expires,
		Policy:    pol,
		CreatedAt: bap.Timestamp(time.Date(2026, 4, 27, 12, 34, 56, 987654321, time.UTC)),
	}
	require.NoError(t, s.CreateProduct(ctx, p, registerEntry(p)))
	got, err := s.GetProduct(ctx, p.ID)
	require.NoError(t, err)
	requireProduct(t, p, got)
	require.Equal(t, 987654000, got.CreatedAt.Nanosecond(), "microseconds are kept")

	// An empty policy reads back as the empty object.
	q := unsavedProduct()
	require.NoError(t, s.CreateProduct(ctx, q, registerEntry(q)))
	gotQ, err := s.GetProduct(ctx, q.ID)
	require.NoError(t, err)
	require.JSONEq(t, `{}`, string(gotQ.Policy.JSON()))
	require.Nil(t, gotQ.PrevKeyExpiresAt)
	require.Empty(t, gotQ.PrevAPIKeyHash)
}

func testProductCreateAudit(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := unsavedProduct()
	require.NoError(t, s.CreateProduct(ctx, p, audit.Entry{
		ProductID: p.ID, Action: audit.PolicyRegister, Actor: audit.ActorAdmin,
		Metadata: map[string]any{"slug": p.Slug},
	}))
	es := productAudit(t, s, p.ID)
	require.Len(t, es, 1)
	require.Equal(t, audit.PolicyRegister, es[0].Action)
	require.Equal(t, audit.ActorAdmin, es[0].Actor)
	require.Equal(t, map[string]any{"slug": p.Slug}, es[0].Metadata)
}

func testProductSlugConflict(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	dup := unsavedProduct()
	dup.Slug = p.Slug
	err := s.CreateProduct(ctx, dup, registerEntry(dup))
	require.ErrorIs(t, err, registry.ErrConflict)
	_, err = s.GetProduct(ctx, dup.ID)
	require.ErrorIs(t, err, registry.ErrNotFound)
	// The refused product's audit entry was not written either.
	require.Empty(t, productAudit(t, s, dup.ID))
	ps, err := s.ListProducts(ctx)
	require.NoError(t, err)
	require.Len(t, ps, 1)
}

func testProductNotFound(t *testing.T, s registry.Store) {
	_, err := s.GetProduct(t.Context(), uuid.NewString())
	require.ErrorIs(t, err, registry.ErrNotFound)
	_, err = s.GetProductByKeyHash(t.Context(), RandomKeyHash(), bap.Now())
	require.ErrorIs(t, err, registry.ErrNotFound)
}

func testProductList(t *testing.T, s registry.Store) {
	ps, err := s.ListProducts(t.Context())
	require.NoError(t, err)
	require.Empty(t, ps)
	for _, slug := range []string{"charlie", "alpha", "bravo"} {
		NewProduct(t, s, func(p *bap.Product) { p.Slug = slug })
	}
	ps, err = s.ListProducts(t.Context())
	require.NoError(t, err)
	require.Len(t, ps, 3)
	require.Equal(t, []string{"alpha", "bravo", "charlie"}, []string{ps[0].Slug, ps[1].Slug, ps[2].Slug})
}

func testProductBySlug(t *testing.T, s registry.Store) {
	ctx := t.Context()
	a := NewProduct(t, s, func(p *bap.Product) { p.Slug = "acme" })
	NewProduct(t, s, func(p *bap.Product) { p.Slug = "acme-2" })
	got, err := s.GetProductBySlug(ctx, "acme")
	require.NoError(t, err)
	requireProduct(t, a, got)
	for _, slug := range []string{"ACME", "acm", "", a.ID, "acme' OR '1'='1"} {
		_, err = s.GetProductBySlug(ctx, slug)
		require.ErrorIs(t, err, registry.ErrNotFound, "slug %q", slug)
	}
}

func testProductByKeyHash(t *testing.T, s registry.Store) {
	ctx := t.Context()
	a := NewProduct(t, s)
	b := NewProduct(t, s)
	got, err := s.GetProductByKeyHash(ctx, a.APIKeyHash, bap.Now())
	require.NoError(t, err)
	requireProduct(t, a, got)
	got, err = s.GetProductByKeyHash(ctx, b.APIKeyHash, bap.Now())
	require.NoError(t, err)
	require.Equal(t, b.ID, got.ID)
	_, err = s.GetProductByKeyHash(ctx, RandomKeyHash(), bap.Now())
	require.ErrorIs(t, err, registry.ErrNotFound)
	_, err = s.GetProductByKeyHash(ctx, "", bap.Now())
	require.ErrorIs(t, err, registry.ErrNotFound, "an empty hash never authenticates")
}

func testProductRotateKey(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	first := p.APIKeyHash
	second := RandomKeyHash()
	now := bap.Now()
	grace := now.Add(5 * time.Minute)
	require.NoError(t, s.RotateProductKey(ctx, p.ID, second, grace, audit.Entry{
		ProductID: p.ID, Action: audit.PlatformKeyRotated, Actor: audit.ActorAdmin,
	}))

	got, err := s.GetProduct(ctx, p.ID)
	require.NoError(t, err)
	require.Equal(t, second, got.APIKeyHash)
	require.Equal(t, first, got.PrevAPIKeyHash)
	requireTimePtr(t, &grace, got.PrevKeyExpiresAt, "PrevKeyExpiresAt")

	byNew, err := s.GetProductByKeyHash(ctx, second, now)
	require.NoError(t, err)
	require.Equal(t, p.ID, byNew.ID)
	byOld, err := s.GetProductByKeyHash(ctx, first, now.Add(time.Minute))
	require.NoError(t, err, "the previous key works within the grace period")
	require.Equal(t, p.ID, byOld.ID)
	_, err = s.GetProductByKeyHash(ctx, first, grace.Add(time.Second))
	require.ErrorIs(t, err, registry.ErrNotFound, "the previous key expires")
	_, err = s.GetProductByKeyHash(ctx, second, grace.Add(time.Hour))
	require.NoError(t, err, "the current key never expires")

	// A second rotation replaces the previous key: the first stops at once.
	third := RandomKeyHash()
	require.NoError(t, s.RotateProductKey(ctx, p.ID, third, grace, audit.Entry{
		ProductID: p.ID, Action: audit.PlatformKeyRotated, Actor: audit.ActorAdmin,
	}))
	_, err = s.GetProductByKeyHash(ctx, first, now)
	require.ErrorIs(t, err, registry.ErrNotFound)
	got, err = s.GetProductByKeyHash(ctx, second, now)
	require.NoError(t, err)
	require.Equal(t, p.ID, got.ID)

	require.Equal(t,
		[]audit.Action{audit.PlatformKeyRotated, audit.PlatformKeyRotated, audit.PolicyRegister},
		auditActions(productAudit(t, s, p.ID)))
}

func testProductRotateNotFound(t *testing.T, s registry.Store) {
	id := uuid.NewString()
	err := s.RotateProductKey(t.Context(), id, RandomKeyHash(), bap.Now(), audit.Entry{
		ProductID: id, Action: audit.PlatformKeyRotated, Actor: audit.ActorAdmin,
	})
	require.ErrorIs(t, err, registry.ErrNotFound)
	require.Empty(t, listAudit(t, s, registry.AuditFilter{}), "no audit row for a refused rotation")
}

func testProductUpdatePolicy(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s, WithPolicy(t, `{"max_engines": 10, "rate_limit_rpm": 100}`))
	require.NotNil(t, p.Policy.MaxEngines)
	require.Equal(t, 10, *p.Policy.MaxEngines)

	pol, err := bap.ParsePolicy([]byte(`{"max_engines": 5, "x-custom": {"a": [1, 2, {"b": null}]}, "note": "keep me"}`))
	require.NoError(t, err)
	updated, err := s.UpdatePolicy(ctx, p.ID, pol, audit.Entry{
		ProductID: p.ID, Action: audit.PolicyUpdate, Actor: audit.ActorAdmin,
	})
	require.NoError(t, err)
	requirePolicy(t, pol, updated.Policy)
	require.Nil(t, updated.Policy.RateLimitRPM, "the policy is replaced, not merged")
	require.Equal(t, p.Slug, updated.Slug)

	got, err := s.GetProduct(ctx, p.ID)
	require.NoError(t, err)
	want := p
	want.Policy = pol
	requireProduct(t, want, got)

	require.Equal(t, []audit.Action{audit.PolicyUpdate, audit.PolicyRegister},
		auditActions(productAudit(t, s, p.ID)))
}

func testProductUpdatePolicyNotFound(t *testing.T, s registry.Store) {
	id := uuid.NewString()
	_, err := s.UpdatePolicy(t.Context(), id, bap.Policy{}, audit.Entry{
		ProductID: id, Action: audit.PolicyUpdate, Actor: audit.ActorAdmin,
	})
	require.ErrorIs(t, err, registry.ErrNotFound)
	require.Empty(t, listAudit(t, s, registry.AuditFilter{}))
}
