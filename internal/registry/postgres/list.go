package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// ListEngines returns a page of a product's engines ordered by (created_at,
// id) and the total; count and page go in one round trip.
func (s *Store) ListEngines(ctx context.Context, f registry.EngineFilter) ([]bap.Engine, int, error) {
	if f.ProductID == "" {
		return nil, 0, errors.New("list engines: product id is required")
	}
	if !validID(f.ProductID) {
		return []bap.Engine{}, 0, nil
	}
	cond := ` WHERE e.product_id = $1::uuid`
	args := []any{f.ProductID}
	if f.Status != "" {
		cond += ` AND e.status = $2`
		args = append(args, string(f.Status))
	}
	return countedPage(ctx, s.db, "engines", `SELECT count(*) FROM engines e`+cond,
		`SELECT `+engineCols+` FROM engines e`+cond+` ORDER BY e.created_at, e.id`+limitOffset(len(args)),
		args, f.Limit, f.Offset, scanEngine)
}

// countedPage runs a count and a page of rows in one round trip: count takes
// args, page takes args then the limit and offset, whose placeholders
// limitOffset(len(args)) writes. what names the rows in errors.
func countedPage[T any](ctx context.Context, q querier, what, count, page string, args []any, limit, offset int, scan pgx.RowToFunc[T]) ([]T, int, error) {
	n := len(args)
	b := &pgx.Batch{}
	b.Queue(count, args...)
	b.Queue(page, append(args[:n:n], limit, offset)...)
	br := q.SendBatch(ctx, b)
	defer br.Close()
	var total int
	if err := br.QueryRow().Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count %s: %w", what, translate(err))
	}
	rows, err := br.Query()
	if err != nil {
		return nil, 0, fmt.Errorf("list %s: %w", what, translate(err))
	}
	out, err := pgx.CollectRows(rows, scan)
	if err != nil {
		return nil, 0, fmt.Errorf("list %s: %w", what, translate(err))
	}
	if err := br.Close(); err != nil {
		return nil, 0, fmt.Errorf("list %s: %w", what, translate(err))
	}
	return out, total, nil
}

// conds collects a query's WHERE terms and their arguments; the $? in a
// term becomes its argument's placeholder.
type conds struct {
	terms []string
	args  []any
}

func (c *conds) add(term string, arg any) {
	c.args = append(c.args, arg)
	c.terms = append(c.terms, strings.ReplaceAll(term, "$?", "$"+strconv.Itoa(len(c.args))))
}

// where is the WHERE clause of the terms, or "" when there are none.
func (c *conds) where() string {
	if len(c.terms) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(c.terms, " AND ")
}

// limitOffset is the LIMIT and OFFSET of a page query whose first n
// placeholders are its filter's; a limit of 0 means no limit.
func limitOffset(n int) string {
	return ` LIMIT NULLIF($` + strconv.Itoa(n+1) + `::int, 0) OFFSET $` + strconv.Itoa(n+2)
}

// EnginesByStatus returns every engine in one of states, ordered by id.
func (s *Store) EnginesByStatus(ctx context.Context, states ...bap.State) ([]bap.Engine, error) {
	if len(states) == 0 {
		return []bap.Engine{}, nil
	}
	names := make([]string, len(states))
	for i, st := range states {
		names[i] = string(st)
	}
	rows, _ := s.db.Query(ctx, `SELECT `+engineCols+` FROM engines e WHERE e.status = ANY($1::text[]) ORDER BY e.id`, names)
	engines, err := pgx.CollectRows(rows, scanEngine)
	if err != nil {
		return nil, fmt.Errorf("engines by status: %w", translate(err))
	}
	return engines, nil
}

// CountByStatus counts a product's engines (all products when productID is
// empty) per state.
func (s *Store) CountByStatus(ctx context.Context, productID string) (map[bap.State]int, error) {
	counts := map[bap.State]int{}
	sql, args := `SELECT status, count(*) FROM engines GROUP BY status`, []any{}
	if productID != "" {
		if !validID(productID) {
			return counts, nil
		}
		sql, args = `SELECT status, count(*) FROM engines WHERE product_id = $1::uuid GROUP BY status`, []any{productID}
	}
	rows, _ := s.db.Query(ctx, sql, args...)
	var status string
	var n int
	_, err := pgx.ForEachRow(rows, []any{&status, &n}, func() error {
		counts[bap.State(status)] = n
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("count engines by status: %w", translate(err))
	}
	return counts, nil
}

// CountByProductStatus counts engines per product slug and state.
func (s *Store) CountByProductStatus(ctx context.Context) (map[string]map[bap.State]int, error) {
	counts := map[string]map[bap.State]int{}
	rows, _ := s.db.Query(ctx, `SELECT p.slug, e.status, count(*) FROM engines e
		JOIN products p ON p.id = e.product_id GROUP BY p.slug, e.status`)
	var slug, status string
	var n int
	_, err := pgx.ForEachRow(rows, []any{&slug, &status, &n}, func() error {
		if counts[slug] == nil {
			counts[slug] = map[bap.State]int{}
		}
		counts[slug][bap.State(status)] = n
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("count engines by product and status: %w", translate(err))
	}
	return counts, nil
}

// CountRunning counts the product's engines that hold a running slot; in a
// transaction it locks the product row first.
func (s *Store) CountRunning(ctx context.Context, productID string) (int, error) {
	if !validID(productID) {
		return 0, nil
	}
	if s.inTx {
		if _, err := s.db.Exec(ctx, `SELECT 1 FROM products WHERE id = $1::uuid FOR UPDATE`, productID); err != nil {
			return 0, fmt.Errorf("lock product %s: %w", productID, translate(err))
		}
	}
	var n int
	if err := s.db.QueryRow(ctx, `SELECT `+sqlRunningSlots, productID).Scan(&n); err != nil {
		return 0, fmt.Errorf("count running engines: %w", translate(err))
	}
	return n, nil
}

// EnginesInOperation returns every engine with a claimed operation.
func (s *Store) EnginesInOperation(ctx context.Context) ([]bap.Engine, error) {
	rows, _ := s.db.Query(ctx, `SELECT `+engineCols+` FROM engines e WHERE e.op IS NOT NULL ORDER BY e.id`)
	engines, err := pgx.CollectRows(rows, scanEngine)
	if err != nil {
		return nil, fmt.Errorf("engines in operation: %w", translate(err))
	}
	return engines, nil
}

// validIDs returns the ids that can exist.
func validIDs(ids []string) []string {
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		if validID(id) {
			out = append(out, id)
		}
	}
	return out
}
