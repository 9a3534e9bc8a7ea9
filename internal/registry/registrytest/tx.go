package registrytest

import (
	"context"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

func txTests() []test {
	return []test{
		{"Ping", testPing},
		{"CommitOnNil", testTxCommit},
		{"RollbackOnError", testTxRollbackOnError},
		{"RollbackOnPanic", testTxRollbackOnPanic},
		{"RollbackOnCancelledContext", testTxRollbackOnCancel},
		{"NestedJoins", testTxNestedJoins},
		{"NestedErrorRollsBackAll", testTxNestedError},
		{"LockEngineSerializesReadModifyWrite", testLockEngineSerializes},
	}
}

// unsavedProduct returns a product that is not in the store yet.
func unsavedProduct() bap.Product {
	return bap.Product{
		ID: uuid.NewString(), Slug: randomSlug(), DisplayName: "tx", APIKeyHash: RandomKeyHash(),
		CreatedAt: bap.Now(),
	}
}

func registerEntry(p bap.Product) audit.Entry {
	return audit.Entry{ProductID: p.ID, Action: audit.PolicyRegister, Actor: audit.ActorAdmin}
}

func testPing(t *testing.T, s registry.Store) {
	require.NoError(t, s.Ping(t.Context()))
	require.NoError(t, s.InTx(t.Context(), func(tx registry.Store) error { return tx.Ping(t.Context()) }))
}

func testTxCommit(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := unsavedProduct()
	err := s.InTx(ctx, func(tx registry.Store) error {
		if err := tx.CreateProduct(ctx, p, registerEntry(p)); err != nil {
			return err
		}
		// The transaction reads its own writes.
		got, err := tx.GetProduct(ctx, p.ID)
		require.NoError(t, err)
		require.Equal(t, p.Slug, got.Slug)
		return nil
	})
	require.NoError(t, err)
	got, err := s.GetProduct(ctx, p.ID)
	require.NoError(t, err)
	require.Equal(t, p.Slug, got.Slug)
	require.Len(t, productAudit(t, s, p.ID), 1)
}

func testTxRollbackOnError(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := unsavedProduct()
	err := s.InTx(ctx, func(tx registry.Store) error {
		require.NoError(t, tx.CreateProduct(ctx, p, registerEntry(p)))
		return errBoom
	})
	require.ErrorIs(t, err, errBoom)
	_, err = s.GetProduct(ctx, p.ID)
	require.ErrorIs(t, err, registry.ErrNotFound)
	require.Empty(t, productAudit(t, s, p.ID))
}

func testTxRollbackOnPanic(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := unsavedProduct()
	require.PanicsWithValue(t, "boom", func() {
		_ = s.InTx(ctx, func(tx registry.Store) error {
			require.NoError(t, tx.CreateProduct(ctx, p, registerEntry(p)))
			panic("boom")
		})
	})
	_, err := s.GetProduct(ctx, p.ID)
	require.ErrorIs(t, err, registry.ErrNotFound)
	require.Empty(t, productAudit(t, s, p.ID))
	// The connection the panicking transaction held is usable again.
	q := NewProduct(t, s)
	require.NotEmpty(t, q.ID)
}

func testTxRollbackOnCancel(t *testing.T, s registry.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	p := unsavedProduct()
	err := s.InTx(ctx, func(tx registry.Store) error {
		require.NoError(t, tx.CreateProduct(ctx, p, registerEntry(p)))
		cancel()
		return nil
	})
	require.ErrorIs(t, err, context.Canceled)
	_, err = s.GetProduct(t.Context(), p.ID)
	require.ErrorIs(t, err, registry.ErrNotFound)
	require.Empty(t, productAudit(t, s, p.ID))
	NewProduct(t, s)
}

func testTxNestedJoins(t *testing.T, s registry.Store) {
	ctx := t.Context()
	a, b := unsavedProduct(), unsavedProduct()
	err := s.InTx(ctx, func(tx registry.Store) error {
		if err := tx.CreateProduct(ctx, a, registerEntry(a)); err != nil {
			return err
		}
		return tx.InTx(ctx, func(inner registry.Store) error {
			// The inner transaction sees the outer one's uncommitted row.
			if _, err := inner.GetProduct(ctx, a.ID); err != nil {
				return err
			}
			return inner.CreateProduct(ctx, b, registerEntry(b))
		})
	})
	require.NoError(t, err)
	ps, err := s.ListProducts(ctx)
	require.NoError(t, err)
	require.Len(t, ps, 2)
}

func testTxNestedError(t *testing.T, s registry.Store) {
	ctx := t.Context()
	a, b := unsavedProduct(), unsavedProduct()
	err := s.InTx(ctx, func(tx registry.Store) error {
		require.NoError(t, tx.CreateProduct(ctx, a, registerEntry(a)))
		return tx.InTx(ctx, func(inner registry.Store) error {
			require.NoError(t, inner.CreateProduct(ctx, b, registerEntry(b)))
			return errBoom
		})
	})
	require.ErrorIs(t, err, errBoom)
	ps, err := s.ListProducts(ctx)
	require.NoError(t, err)
	require.Empty(t, ps)
	require.Empty(t, listAudit(t, s, registry.AuditFilter{}))
}

// testLockEngineSerializes runs concurrent read-modify-write transactions on
// one engine; with the lock none of the increments is lost.
func testLockEngineSerializes(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	e := NewEngine(t, s, p.ID, "u1")
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			errs <- s.InTx(ctx, func(tx registry.Store) error {
				cur, err := tx.LockEngine(ctx, e.ID)
				if err != nil {
					return err
				}
				cur.RestartAttempts++
				return tx.UpdateEngine(ctx, cur)
			})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	got, err := s.GetEngine(ctx, e.ID)
	require.NoError(t, err)
	require.Equal(t, n, got.RestartAttempts)
}
