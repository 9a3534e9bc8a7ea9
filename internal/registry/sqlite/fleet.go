package sqlite

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/registry"
)

// fleetOrder is the ORDER BY of a FleetSort; desc reverses every term.
func fleetOrder(sort registry.FleetSort, desc bool) (string, error) {
	dir := " ASC"
	nulls := " NULLS FIRST"
	if desc {
		dir, nulls = " DESC", " NULLS LAST"
	}
	var terms []string
	switch sort {
	case registry.SortCreated, "":
		terms = []string{"e.created_at" + dir}
	case registry.SortUser:
		terms = []string{"e.user_id" + dir}
	case registry.SortState:
		terms = []string{"e.status" + dir, "e.user_id" + dir}
	case registry.SortProduct:
		terms = []string{"p.slug" + dir, "e.user_id" + dir}
	case registry.SortFailures:
		terms = []string{"e.health_failures" + dir, "e.user_id" + dir}
	case registry.SortHealth:
		terms = []string{"e.last_health_at" + dir + nulls}
	default:
		return "", fmt.Errorf("list fleet: unknown sort %q", sort)
	}
	return strings.Join(append(terms, "e.id"+dir), ", "), nil
}

// ListFleet returns a page of engines of every product (or one) with their
// product's slug, and the total matching, from one snapshot.
func (s *Store) ListFleet(ctx context.Context, f registry.FleetFilter) ([]registry.FleetEngine, int, error) {
	const op = "list fleet"
	order, err := fleetOrder(f.Sort, f.Desc)
	if err != nil {
		return nil, 0, err
	}
	var w conds
	if f.ProductID != "" {
		w.add("e.product_id = ?", f.ProductID)
	}
	if f.Status != "" {
		w.add("e.status = ?", string(f.Status))
	}
	if f.UserID != "" {
		w.add("instr(lower(e.user_id), lower(?)) > 0", f.UserID)
	}
	where, args := w.where(), w.args
	inner := "" // the products join, when the order needs it
	if f.Sort == registry.SortProduct {
		inner = " JOIN products p ON p.id = e.product_id"
	}
	var (
		out   []registry.FleetEngine
		total int
	)
	err = s.readTx(ctx, op, func(q querier) error {
		if err := q.QueryRowContext(ctx, `SELECT COUNT(*) FROM engines e`+where, args...).Scan(&total); err != nil {
			return translate(op, err)
		}
		// The page's ids are chosen on narrow rows first, then only they
		// are read whole: sorting ten thousand full rows to keep fifty is
		// most of the cost otherwise.
		rows, err := q.QueryContext(ctx, `SELECT `+engineCols+`, p.slug
			FROM (SELECT e.id FROM engines e`+inner+where+`
				ORDER BY `+order+` LIMIT ? OFFSET ?) AS page
			JOIN engines e ON e.id = page.id JOIN products p ON p.id = e.product_id
			ORDER BY `+order,
			append(args, limitArg(f.Limit), max(f.Offset, 0))...)
		if err != nil {
			return translate(op, err)
		}
		defer rows.Close()
		out = []registry.FleetEngine{}
		for rows.Next() {
			var fe registry.FleetEngine
			if err := rows.Scan(append(engineDest(&fe.Engine), &fe.ProductSlug)...); err != nil {
				return translate(op, err)
			}
			out = append(out, fe)
		}
		return translate(op, rows.Err())
	})
	if err != nil {
		return nil, 0, err
	}
	return out, total, nil
}

// hourLayout is the prefix of timeLayout that names an hour.
const hourLayout = "2006-01-02T15"

// AuditHourly counts entries of actions per hour since a time. Stored times
// are fixed-width text, so an hour is a 13-character prefix.
func (s *Store) AuditHourly(ctx context.Context, productID string, since time.Time, actions []audit.Action) ([]registry.AuditHour, error) {
	const op = "audit hourly"
	out := []registry.AuditHour{}
	if len(actions) == 0 {
		return out, nil
	}
	conds := []string{"timestamp >= ?", "action IN (" + placeholders(len(actions)) + ")"}
	args := []any{ts(since)}
	for _, a := range actions {
		args = append(args, string(a))
	}
	if productID != "" {
		conds, args = append(conds, "product_id = ?"), append(args, productID)
	}
	rows, err := s.reader().QueryContext(ctx, `SELECT substr(timestamp, 1, 13) AS h, action, COUNT(*)
		FROM audit_log WHERE `+strings.Join(conds, " AND ")+` GROUP BY h, action ORDER BY h, action`, args...)
	if err != nil {
		return nil, translate(op, err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			h  string
			ah registry.AuditHour
		)
		if err := rows.Scan(&h, &ah.Action, &ah.Count); err != nil {
			return nil, translate(op, err)
		}
		if ah.Hour, err = time.Parse(hourLayout, h); err != nil {
			return nil, fmt.Errorf("%s: stored hour %q: %w", op, h, err)
		}
		out = append(out, ah)
	}
	return out, translate(op, rows.Err())
}

// AuditDurations counts entries of action since a time per duration bucket.
func (s *Store) AuditDurations(ctx context.Context, productID string, action audit.Action, since time.Time, boundsMS []int64) ([]int, error) {
	const op = "audit durations"
	var bucket strings.Builder
	bucket.WriteString("CASE")
	args := make([]any, 0, len(boundsMS)+3)
	for i, b := range boundsMS {
		fmt.Fprintf(&bucket, " WHEN duration_ms < ? THEN %d", i)
		args = append(args, b)
	}
	fmt.Fprintf(&bucket, " ELSE %d END", len(boundsMS))
	if len(boundsMS) == 0 {
		bucket.Reset()
		bucket.WriteString("0")
	}
	conds := []string{"action = ?", "timestamp >= ?", "duration_ms IS NOT NULL"}
	args = append(args, string(action), ts(since))
	if productID != "" {
		conds, args = append(conds, "product_id = ?"), append(args, productID)
	}
	rows, err := s.reader().QueryContext(ctx, `SELECT `+bucket.String()+` AS b, COUNT(*)
		FROM audit_log WHERE `+strings.Join(conds, " AND ")+` GROUP BY b`, args...)
	if err != nil {
		return nil, translate(op, err)
	}
	defer rows.Close()
	counts := make([]int, len(boundsMS)+1)
	for rows.Next() {
		var b, n int
		if err := rows.Scan(&b, &n); err != nil {
			return nil, translate(op, err)
		}
		counts[b] = n
	}
	return counts, translate(op, rows.Err())
}
