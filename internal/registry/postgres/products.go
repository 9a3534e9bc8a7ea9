package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

const productCols = `p.id, p.slug, p.display_name, p.api_key_hash, COALESCE(p.prev_api_key_hash, ''),
	p.prev_key_expires_at, p.policy, p.created_at`

// productRow receives productCols.
type productRow struct {
	p      bap.Product
	policy []byte
}

func (r *productRow) dest() []any {
	return []any{&r.p.ID, &r.p.Slug, &r.p.DisplayName, &r.p.APIKeyHash, &r.p.PrevAPIKeyHash,
		&r.p.PrevKeyExpiresAt, &r.policy, &r.p.CreatedAt}
}

func (r *productRow) product() (bap.Product, error) {
	p := r.p
	p.CreatedAt = bap.Timestamp(p.CreatedAt)
	p.PrevKeyExpiresAt = timePtr(p.PrevKeyExpiresAt)
	policy, err := bap.ParsePolicy(r.policy)
	if err != nil {
		return p, fmt.Errorf("product %s: stored policy: %w", p.ID, err)
	}
	p.Policy = policy
	return p, nil
}

func scanProduct(row pgx.CollectableRow) (bap.Product, error) {
	var r productRow
	if err := row.Scan(r.dest()...); err != nil {
		return bap.Product{}, err
	}
	return r.product()
}

// timePtr normalises an optional time for storage or after a scan.
func timePtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	v := bap.Timestamp(*t)
	return &v
}

var sqlCreateProduct = `WITH p AS (
	INSERT INTO products (id, slug, display_name, api_key_hash, prev_api_key_hash, prev_key_expires_at, policy, created_at)
	VALUES ($1::uuid, $2, $3, $4, NULLIF($5::text, ''), $6, $7::jsonb, $8)
) ` + auditInsert(9, "")

// CreateProduct inserts p and its audit entry in one statement.
func (s *Store) CreateProduct(ctx context.Context, p bap.Product, e audit.Entry) error {
	args, err := auditArgs([]audit.Entry{e})
	if err != nil {
		return fmt.Errorf("create product %s: %w", p.Slug, err)
	}
	args = append([]any{p.ID, p.Slug, p.DisplayName, p.APIKeyHash, p.PrevAPIKeyHash,
		timePtr(p.PrevKeyExpiresAt), string(p.Policy.JSON()), bap.Timestamp(p.CreatedAt)}, args...)
	b := &pgx.Batch{}
	b.Queue(sqlCreateProduct, args...)
	err = s.savepointed(ctx, b, func(br pgx.BatchResults) error {
		_, err := br.Exec()
		return err
	})
	if err != nil {
		return fmt.Errorf("create product %s: %w", p.Slug, translate(err))
	}
	return nil
}

// GetProduct returns a product by id.
func (s *Store) GetProduct(ctx context.Context, id string) (bap.Product, error) {
	if !validID(id) {
		return bap.Product{}, fmt.Errorf("get product %s: %w", id, registry.ErrNotFound)
	}
	rows, _ := s.db.Query(ctx, `SELECT `+productCols+` FROM products p WHERE p.id = $1::uuid`, id)
	p, err := pgx.CollectExactlyOneRow(rows, scanProduct)
	if err != nil {
		return p, fmt.Errorf("get product %s: %w", id, notFound(err))
	}
	return p, nil
}

// GetProductBySlug returns a product by slug.
func (s *Store) GetProductBySlug(ctx context.Context, slug string) (bap.Product, error) {
	rows, _ := s.db.Query(ctx, `SELECT `+productCols+` FROM products p WHERE p.slug = $1`, slug)
	p, err := pgx.CollectExactlyOneRow(rows, scanProduct)
	if err != nil {
		return p, fmt.Errorf("get product by slug %q: %w", slug, notFound(err))
	}
	return p, nil
}

// keyMatch selects the product whose current key hash is $1, or whose
// previous one is and is still valid at $2; a current match wins.
const keyMatch = ` WHERE p.api_key_hash = $1 OR (p.prev_api_key_hash = $1 AND p.prev_key_expires_at > $2)
	ORDER BY p.api_key_hash = $1 DESC LIMIT 1`

// GetProductByKeyHash returns the product authenticated by key hash h at now.
func (s *Store) GetProductByKeyHash(ctx context.Context, h string, now time.Time) (bap.Product, error) {
	rows, _ := s.db.Query(ctx, `SELECT `+productCols+` FROM products p`+keyMatch, h, bap.Timestamp(now))
	p, err := pgx.CollectExactlyOneRow(rows, scanProduct)
	if err != nil {
		return p, fmt.Errorf("get product by key: %w", notFound(err))
	}
	return p, nil
}

// ListProducts returns every product ordered by slug.
func (s *Store) ListProducts(ctx context.Context) ([]bap.Product, error) {
	rows, _ := s.db.Query(ctx, `SELECT `+productCols+` FROM products p ORDER BY p.slug`)
	ps, err := pgx.CollectRows(rows, scanProduct)
	if err != nil {
		return nil, fmt.Errorf("list products: %w", translate(err))
	}
	return ps, nil
}

var sqlUpdatePolicy = `WITH p AS (
	UPDATE products SET policy = $2::jsonb WHERE id = $1::uuid RETURNING *
), audit AS (` + auditInsert(3, " CROSS JOIN p") + `)
SELECT ` + productCols + ` FROM p`

// UpdatePolicy replaces a product's policy and appends e in one statement.
func (s *Store) UpdatePolicy(ctx context.Context, productID string, pol bap.Policy, e audit.Entry) (bap.Product, error) {
	defer s.changed(registry.Change{Kind: registry.ChangeProduct, ID: productID})
	if !validID(productID) {
		return bap.Product{}, fmt.Errorf("update policy of %s: %w", productID, registry.ErrNotFound)
	}
	args, err := auditArgs([]audit.Entry{e})
	if err != nil {
		return bap.Product{}, fmt.Errorf("update policy of %s: %w", productID, err)
	}
	rows, _ := s.db.Query(ctx, sqlUpdatePolicy, append([]any{productID, string(pol.JSON())}, args...)...)
	p, err := pgx.CollectExactlyOneRow(rows, scanProduct)
	if err != nil {
		return p, fmt.Errorf("update policy of %s: %w", productID, notFound(err))
	}
	return p, nil
}

var sqlRotateProductKey = `WITH p AS (
	UPDATE products SET prev_api_key_hash = api_key_hash, prev_key_expires_at = $3, api_key_hash = $2
	WHERE id = $1::uuid RETURNING id
), audit AS (` + auditInsert(4, " CROSS JOIN p") + `)
SELECT count(*) FROM p`

// RotateProductKey makes newHash current, keeps the old hash valid until
// graceUntil and appends e, in one statement.
func (s *Store) RotateProductKey(ctx context.Context, productID, newHash string, graceUntil time.Time, e audit.Entry) error {
	defer s.changed(registry.Change{Kind: registry.ChangeProduct, ID: productID})
	if !validID(productID) {
		return fmt.Errorf("rotate key of %s: %w", productID, registry.ErrNotFound)
	}
	args, err := auditArgs([]audit.Entry{e})
	if err != nil {
		return fmt.Errorf("rotate key of %s: %w", productID, err)
	}
	var n int
	err = s.db.QueryRow(ctx, sqlRotateProductKey,
		append([]any{productID, newHash, bap.Timestamp(graceUntil)}, args...)...).Scan(&n)
	if err == nil && n == 0 {
		err = registry.ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("rotate key of %s: %w", productID, translate(err))
	}
	return nil
}

var sqlAdmitLookup = `SELECT ` + productCols + `, ` + engineCols + `
FROM products p LEFT JOIN engines e ON e.product_id = p.id AND e.user_id = $3` + keyMatch

// AdmitLookup finds the product by key hash and its engine for userID in one
// query.
func (s *Store) AdmitLookup(ctx context.Context, keyHash, userID string, now time.Time) (bap.Product, *bap.Engine, error) {
	var pr productRow
	var er engineRow
	err := s.db.QueryRow(ctx, sqlAdmitLookup, keyHash, bap.Timestamp(now), userID).
		Scan(append(pr.dest(), er.dest()...)...)
	if err != nil {
		return bap.Product{}, nil, fmt.Errorf("admit lookup: %w", notFound(err))
	}
	p, err := pr.product()
	if err != nil {
		return p, nil, fmt.Errorf("admit lookup: %w", err)
	}
	e, ok := er.engine()
	if !ok {
		return p, nil, nil
	}
	return p, &e, nil
}

// notFound translates err, mapping "no rows" to registry.ErrNotFound.
func notFound(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return registry.ErrNotFound
	}
	return translate(err)
}

// savepointed sends b, read consumes its results. Inside a transaction the
// batch runs under a savepoint that is rolled back on error, so a constraint
// violation leaves the caller's transaction usable (as SQLite's does); outside
// one, the batch is its own implicit transaction.
func (s *Store) savepointed(ctx context.Context, b *pgx.Batch, read func(pgx.BatchResults) error) error {
	if !s.inTx {
		br := s.db.SendBatch(ctx, b)
		err := read(br)
		if cerr := closeBatch(br, err); cerr != nil {
			return cerr
		}
		return err
	}
	wrapped := &pgx.Batch{}
	wrapped.Queue(`SAVEPOINT bap_registry`)
	wrapped.QueuedQueries = append(wrapped.QueuedQueries, b.QueuedQueries...)
	wrapped.Queue(`RELEASE SAVEPOINT bap_registry`)
	br := s.db.SendBatch(ctx, wrapped)
	_, err := br.Exec()
	if err == nil {
		err = read(br)
	}
	if err == nil {
		_, err = br.Exec()
	}
	if cerr := closeBatch(br, err); cerr != nil {
		err = cerr
	}
	if err != nil {
		if _, rbErr := s.db.Exec(context.WithoutCancel(ctx),
			`ROLLBACK TO SAVEPOINT bap_registry; RELEASE SAVEPOINT bap_registry`, pgx.QueryExecModeSimpleProtocol); rbErr != nil {
			return errors.Join(err, translate(rbErr))
		}
		return err
	}
	return nil
}

// closeBatch closes br; its error only matters when reading succeeded (after a
// failed statement Close repeats that failure).
func closeBatch(br pgx.BatchResults, readErr error) error {
	err := br.Close()
	if readErr != nil {
		return nil
	}
	return err
}
