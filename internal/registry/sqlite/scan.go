package sqlite

import (
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/september/bap-engine/internal/bap"
)

// timeLayout is how every time is stored: UTC, microseconds, fixed width, so
// that text order is time order and round trips are exact.
const timeLayout = "2006-01-02T15:04:05.000000Z"

// ts renders t for storage.
func ts(t time.Time) string { return bap.Timestamp(t).Format(timeLayout) }

// nullTS renders an optional time for storage (NULL when nil).
func nullTS(t *time.Time) any {
	if t == nil {
		return nil
	}
	return ts(*t)
}

// nullStr stores an empty string as NULL.
func nullStr(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// nullInt64 stores a nil pointer as NULL.
func nullInt64(p *int64) any {
	if p == nil {
		return nil
	}
	return *p
}

// timeScanner scans a stored time into *dst; NULL leaves the zero time.
type timeScanner struct{ dst *time.Time }

func (s timeScanner) Scan(v any) error {
	if v == nil {
		*s.dst = time.Time{}
		return nil
	}
	t, err := parseTime(v)
	if err != nil {
		return err
	}
	*s.dst = t
	return nil
}

// nullTimeScanner scans a stored time into *dst; NULL gives nil.
type nullTimeScanner struct{ dst **time.Time }

func (s nullTimeScanner) Scan(v any) error {
	if v == nil {
		*s.dst = nil
		return nil
	}
	var t time.Time
	if err := (timeScanner{&t}).Scan(v); err != nil {
		return err
	}
	*s.dst = &t
	return nil
}

func parseTime(v any) (time.Time, error) {
	var str string
	switch x := v.(type) {
	case string:
		str = x
	case []byte:
		str = string(x)
	default:
		return time.Time{}, fmt.Errorf("stored time has type %T", v)
	}
	t, err := time.Parse(timeLayout, str)
	if err != nil {
		return time.Time{}, fmt.Errorf("stored time %q: %w", str, err)
	}
	return t, nil
}

// placeholders returns "?, ?, ?" for n parameters.
func placeholders(n int) string {
	if n <= 0 {
		return ""
	}
	return strings.Repeat("?, ", n-1) + "?"
}

// one reads a query's one row with scan; op names the call in errors, where
// no row is ErrNotFound (translate).
func one[T any](op string, row *sql.Row, scan func(rowScanner) (T, error)) (T, error) {
	v, err := scan(row)
	if err != nil {
		var zero T
		return zero, translate(op, err)
	}
	return v, nil
}

// collect reads every row of a query's rows with scan, in order (empty, not
// nil, when there are none), and closes them; err is the query's. op names
// the call in errors.
func collect[T any](op string, rows *sql.Rows, err error, scan func(rowScanner) (T, error)) ([]T, error) {
	if err != nil {
		return nil, translate(op, err)
	}
	defer rows.Close()
	out := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, translate(op, err)
		}
		out = append(out, v)
	}
	return out, translate(op, rows.Err())
}

// conds collects a query's WHERE terms and their arguments.
type conds struct {
	terms []string
	args  []any
}

func (c *conds) add(term string, args ...any) {
	c.terms = append(c.terms, term)
	c.args = append(c.args, args...)
}

// where is the WHERE clause of the terms, or "" when there are none.
func (c *conds) where() string {
	if len(c.terms) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(c.terms, " AND ")
}

// limitArg maps the registry's "0 means no limit" to SQLite's LIMIT -1.
func limitArg(limit int) int {
	if limit <= 0 {
		return -1
	}
	return limit
}
