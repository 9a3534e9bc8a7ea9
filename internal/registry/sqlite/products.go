package sqlite

import (
	"context"
	"fmt"
	"time"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// productCols is the column list scanProduct reads, for a products table
// aliased p.
const productCols = `p.id, p.slug, p.display_name, p.api_key_hash,
	COALESCE(p.prev_api_key_hash, ''), p.prev_key_expires_at, p.policy, p.created_at`

// rowScanner is *sql.Row or *sql.Rows.
type rowScanner interface{ Scan(dest ...any) error }

// productDest returns scan destinations for productCols; finish parses the
// policy once the row is scanned.
func productDest(p *bap.Product) (dest []any, finish func() error) {
	var policy string
	dest = []any{&p.ID, &p.Slug, &p.DisplayName, &p.APIKeyHash, &p.PrevAPIKeyHash,
		nullTimeScanner{&p.PrevKeyExpiresAt}, &policy, timeScanner{&p.CreatedAt}}
	return dest, func() error {
		pol, err := bap.ParsePolicy([]byte(policy))
		if err != nil {
			return fmt.Errorf("stored policy of product %s: %w", p.ID, err)
		}
		p.Policy = pol
		return nil
	}
}

func scanProduct(row rowScanner) (bap.Product, error) {
	var p bap.Product
	dest, finish := productDest(&p)
	if err := row.Scan(dest...); err != nil {
		return bap.Product{}, err
	}
	return p, finish()
}

// CreateProduct inserts p and its audit entry. ErrConflict when the slug (or
// id, or key hash) exists.
func (s *Store) CreateProduct(ctx context.Context, p bap.Product, e audit.Entry) error {
	return s.inTx(ctx, func(tx *Store) error {
		_, err := tx.writer().ExecContext(ctx, `INSERT INTO products
			(id, slug, display_name, api_key_hash, prev_api_key_hash, prev_key_expires_at, policy, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			p.ID, p.Slug, p.DisplayName, p.APIKeyHash, nullStr(p.PrevAPIKeyHash),
			nullTS(p.PrevKeyExpiresAt), string(p.Policy.JSON()), ts(p.CreatedAt))
		if err != nil {
			return translate(fmt.Sprintf("create product %q", p.Slug), err)
		}
		return tx.appendAudit(ctx, e)
	})
}

// GetProduct returns a product by id. ErrNotFound.
func (s *Store) GetProduct(ctx context.Context, id string) (bap.Product, error) {
	return one("get product "+id, s.reader().QueryRowContext(ctx,
		`SELECT `+productCols+` FROM products p WHERE p.id = ?`, id), scanProduct)
}

// GetProductBySlug returns a product by slug. ErrNotFound.
func (s *Store) GetProductBySlug(ctx context.Context, slug string) (bap.Product, error) {
	return one(fmt.Sprintf("get product by slug %q", slug), s.reader().QueryRowContext(ctx,
		`SELECT `+productCols+` FROM products p WHERE p.slug = ?`, slug), scanProduct)
}

// GetProductByKeyHash returns the product whose current key hash is h, or
// whose previous key hash is h and unexpired at now. ErrNotFound.
func (s *Store) GetProductByKeyHash(ctx context.Context, h string, now time.Time) (bap.Product, error) {
	return one("get product by key", s.reader().QueryRowContext(ctx, `SELECT `+productCols+`
		FROM products p
		WHERE p.api_key_hash = ? OR (p.prev_api_key_hash = ? AND p.prev_key_expires_at > ?)
		ORDER BY p.api_key_hash = ? DESC
		LIMIT 1`, h, h, ts(now), h), scanProduct)
}

// ListProducts returns every product ordered by slug.
func (s *Store) ListProducts(ctx context.Context) ([]bap.Product, error) {
	rows, err := s.reader().QueryContext(ctx, `SELECT `+productCols+` FROM products p ORDER BY p.slug`)
	return collect("list products", rows, err, scanProduct)
}

// UpdatePolicy replaces a product's policy and appends e. ErrNotFound.
func (s *Store) UpdatePolicy(ctx context.Context, productID string, pol bap.Policy, e audit.Entry) (bap.Product, error) {
	var out bap.Product
	err := s.inTx(ctx, func(tx *Store) error {
		tx.changed(registry.Change{Kind: registry.ChangeProduct, ID: productID})
		if err := tx.updateOne(ctx, "update policy of product "+productID,
			`UPDATE products SET policy = ? WHERE id = ?`, string(pol.JSON()), productID); err != nil {
			return err
		}
		if err := tx.appendAudit(ctx, e); err != nil {
			return err
		}
		var err error
		out, err = tx.GetProduct(ctx, productID)
		return err
	})
	if err != nil {
		return bap.Product{}, err
	}
	return out, nil
}

// RotateProductKey makes newHash current, keeps the old hash valid until
// graceUntil and appends e. ErrNotFound.
func (s *Store) RotateProductKey(ctx context.Context, productID, newHash string, graceUntil time.Time, e audit.Entry) error {
	return s.inTx(ctx, func(tx *Store) error {
		tx.changed(registry.Change{Kind: registry.ChangeProduct, ID: productID})
		// SQLite evaluates every right-hand side against the old row, so
		// prev_api_key_hash receives the key being replaced.
		if err := tx.updateOne(ctx, "rotate key of product "+productID, `UPDATE products
			SET prev_api_key_hash = api_key_hash, prev_key_expires_at = ?, api_key_hash = ?
			WHERE id = ?`, ts(graceUntil), newHash, productID); err != nil {
			return err
		}
		return tx.appendAudit(ctx, e)
	})
}

// AdmitLookup finds, in one query, the product authenticated by keyHash and
// its engine for userID (nil when none). ErrNotFound when no product matches.
func (s *Store) AdmitLookup(ctx context.Context, keyHash, userID string, now time.Time) (bap.Product, *bap.Engine, error) {
	var (
		p bap.Product
		e bap.Engine
	)
	pdest, finish := productDest(&p)
	err := s.reader().QueryRowContext(ctx, `SELECT `+productCols+`, `+engineCols+`
		FROM products p
		LEFT JOIN engines e ON e.product_id = p.id AND e.user_id = ?
		WHERE p.api_key_hash = ? OR (p.prev_api_key_hash = ? AND p.prev_key_expires_at > ?)
		ORDER BY p.api_key_hash = ? DESC
		LIMIT 1`, userID, keyHash, keyHash, ts(now), keyHash).
		Scan(append(pdest, engineDest(&e)...)...)
	if err != nil {
		return bap.Product{}, nil, translate("admit lookup", err)
	}
	if err := finish(); err != nil {
		return bap.Product{}, nil, err
	}
	if e.ID == "" {
		return p, nil, nil
	}
	return p, &e, nil
}

// updateOne runs an UPDATE or DELETE that must hit a row: ErrNotFound when
// it hit none.
func (s *Store) updateOne(ctx context.Context, op, query string, args ...any) error {
	res, err := s.writer().ExecContext(ctx, query, args...)
	if err != nil {
		return translate(op, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return translate(op, err)
	}
	if n == 0 {
		return fmt.Errorf("%s: %w", op, registry.ErrNotFound)
	}
	return nil
}
