package postgres

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// fleetOrder is the ORDER BY of a FleetSort; desc reverses every term. Text
// sorts by byte (COLLATE "C"), as SQLite's does, whatever the database's
// collation.
func fleetOrder(sort registry.FleetSort, desc bool) (string, error) {
	dir := " ASC"
	nulls := " NULLS FIRST"
	if desc {
		dir, nulls = " DESC", " NULLS LAST"
	}
	const user = `e.user_id COLLATE "C"`
	var terms []string
	switch sort {
	case registry.SortCreated, "":
		terms = []string{"e.created_at" + dir}
	case registry.SortUser:
		terms = []string{user + dir}
	case registry.SortState:
		terms = []string{`e.status COLLATE "C"` + dir, user + dir}
	case registry.SortProduct:
		terms = []string{`p.slug COLLATE "C"` + dir, user + dir}
	case registry.SortFailures:
		terms = []string{"e.health_failures" + dir, user + dir}
	case registry.SortHealth:
		terms = []string{"e.last_health_at" + dir + nulls}
	default:
		return "", fmt.Errorf("list fleet: unknown sort %q", sort)
	}
	return strings.Join(append(terms, "e.id"+dir), ", "), nil
}

// ListFleet returns a page of engines of every product (or one) with their
// product's slug, and the total; count and page go in one round trip.
func (s *Store) ListFleet(ctx context.Context, f registry.FleetFilter) ([]registry.FleetEngine, int, error) {
	order, err := fleetOrder(f.Sort, f.Desc)
	if err != nil {
		return nil, 0, err
	}
	var w conds
	if f.ProductID != "" {
		if !validID(f.ProductID) {
			return []registry.FleetEngine{}, 0, nil
		}
		w.add("e.product_id = $?::uuid", f.ProductID)
	}
	if f.Status != "" {
		w.add("e.status = $?", string(f.Status))
	}
	if f.UserID != "" {
		w.add("strpos(lower(e.user_id), lower($?)) > 0", f.UserID)
	}
	cond, args := w.where(), w.args
	inner := "" // the products join, when the order needs it
	if f.Sort == registry.SortProduct {
		inner = " JOIN products p ON p.id = e.product_id"
	}
	// The page's ids are chosen on narrow rows first, then only they are
	// read whole.
	return countedPage(ctx, s.db, "fleet", `SELECT count(*) FROM engines e`+cond,
		`SELECT `+engineCols+`, p.slug FROM (SELECT e.id FROM engines e`+inner+cond+
			` ORDER BY `+order+limitOffset(len(args))+`) AS page
		JOIN engines e ON e.id = page.id JOIN products p ON p.id = e.product_id ORDER BY `+order,
		args, max(f.Limit, 0), max(f.Offset, 0), func(row pgx.CollectableRow) (registry.FleetEngine, error) {
			var r engineRow
			var fe registry.FleetEngine
			if err := row.Scan(append(r.dest(), &fe.ProductSlug)...); err != nil {
				return fe, err
			}
			fe.Engine, _ = r.engine()
			return fe, nil
		})
}

// AuditHourly counts entries of actions per UTC hour since a time.
func (s *Store) AuditHourly(ctx context.Context, productID string, since time.Time, actions []audit.Action) ([]registry.AuditHour, error) {
	out := []registry.AuditHour{}
	if len(actions) == 0 || (productID != "" && !validID(productID)) {
		return out, nil
	}
	names := make([]string, len(actions))
	for i, a := range actions {
		names[i] = string(a)
	}
	cond := `"timestamp" >= $1 AND action = ANY($2::text[])`
	args := []any{bap.Timestamp(since), names}
	if productID != "" {
		cond += ` AND product_id = $3::uuid`
		args = append(args, productID)
	}
	rows, _ := s.db.Query(ctx, `SELECT date_trunc('hour', "timestamp" AT TIME ZONE 'UTC') AS h, action, count(*)
		FROM audit_log WHERE `+cond+` GROUP BY h, action ORDER BY h, action COLLATE "C"`, args...)
	var (
		hour   time.Time
		action string
		count  int
	)
	_, err := pgx.ForEachRow(rows, []any{&hour, &action, &count}, func() error {
		out = append(out, registry.AuditHour{
			Hour:   time.Date(hour.Year(), hour.Month(), hour.Day(), hour.Hour(), 0, 0, 0, time.UTC),
			Action: audit.Action(action),
			Count:  count,
		})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("audit hourly: %w", translate(err))
	}
	return out, nil
}

// AuditDurations counts entries of action since a time per duration bucket.
func (s *Store) AuditDurations(ctx context.Context, productID string, action audit.Action, since time.Time, boundsMS []int64) ([]int, error) {
	counts := make([]int, len(boundsMS)+1)
	if productID != "" && !validID(productID) {
		return counts, nil
	}
	cond := `action = $1 AND "timestamp" >= $2 AND duration_ms IS NOT NULL`
	args := []any{string(action), bap.Timestamp(since)}
	if productID != "" {
		cond += ` AND product_id = $3::uuid`
		args = append(args, productID)
	}
	var bucket strings.Builder
	bucket.WriteString("CASE")
	for i, b := range boundsMS {
		args = append(args, b)
		fmt.Fprintf(&bucket, " WHEN duration_ms < $%d THEN %d", len(args), i)
	}
	fmt.Fprintf(&bucket, " ELSE %d END", len(boundsMS))
	if len(boundsMS) == 0 {
		bucket.Reset()
		bucket.WriteString("0")
	}
	rows, _ := s.db.Query(ctx, `SELECT `+bucket.String()+` AS b, count(*) FROM audit_log WHERE `+cond+` GROUP BY b`, args...)
	var b, n int
	_, err := pgx.ForEachRow(rows, []any{&b, &n}, func() error {
		counts[b] = n
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("audit durations: %w", translate(err))
	}
	return counts, nil
}
