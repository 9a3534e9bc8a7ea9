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

// engineCols lists an engine's columns with absent values as Go zero values,
// except those a LEFT JOIN can make NULL, which engineRow scans as pointers.
const engineCols = `e.id, e.product_id, e.user_id, e.status, COALESCE(e.port, 0),
	COALESCE(e.engine_key_hash, ''), COALESCE(e.engine_key_enc, ''), COALESCE(e.image, ''),
	COALESCE(e.url, ''), COALESCE(e.instance_id, ''), e.boot_duration_ms,
	COALESCE(e.health_failures, 0), COALESCE(e.restart_attempts, 0), e.next_restart_at,
	e.last_health_at, e.last_active_at, COALESCE(e.failure_reason, ''), COALESCE(e.op, ''),
	COALESCE(e.op_owner, ''), COALESCE(e.op_epoch, 0), e.op_started_at, COALESCE(e.op_detail, ''),
	e.created_at, e.updated_at`

// engineRow receives engineCols.
type engineRow struct {
	e                             bap.Engine
	id, productID, userID, status *string
	op                            string
	createdAt, updatedAt          *time.Time
}

func (r *engineRow) dest() []any {
	return []any{&r.id, &r.productID, &r.userID, &r.status, &r.e.Port,
		&r.e.KeyHash, &r.e.KeyEnc, &r.e.Image,
		&r.e.URL, &r.e.InstanceID, &r.e.BootDurationMS,
		&r.e.HealthFailures, &r.e.RestartAttempts, &r.e.NextRestartAt,
		&r.e.LastHealthAt, &r.e.LastActiveAt, &r.e.FailureReason, &r.op, &r.e.Claim.Owner,
		&r.e.Claim.Epoch, &r.e.Claim.StartedAt, &r.e.Claim.Detail, &r.createdAt, &r.updatedAt}
}

// engine returns the scanned engine, false when the LEFT JOIN found none.
func (r *engineRow) engine() (bap.Engine, bool) {
	if r.id == nil {
		return bap.Engine{}, false
	}
	e := r.e
	e.ID, e.ProductID, e.UserID, e.Status = *r.id, *r.productID, *r.userID, bap.State(*r.status)
	e.CreatedAt, e.UpdatedAt = bap.Timestamp(*r.createdAt), bap.Timestamp(*r.updatedAt)
	e.NextRestartAt = timePtr(e.NextRestartAt)
	e.LastHealthAt = timePtr(e.LastHealthAt)
	e.LastActiveAt = timePtr(e.LastActiveAt)
	e.Claim.Op = bap.Op(r.op)
	e.Claim.StartedAt = timePtr(e.Claim.StartedAt)
	return e, true
}

func scanEngine(row pgx.CollectableRow) (bap.Engine, error) {
	var r engineRow
	if err := row.Scan(r.dest()...); err != nil {
		return bap.Engine{}, err
	}
	e, _ := r.engine()
	return e, nil
}

// sqlRunningSlots counts the engines of product $1 that hold a running slot
// (registry.Store.CountRunning).
const sqlRunningSlots = `(SELECT count(*) FROM engines WHERE product_id = $1::uuid AND (
	status IN ('running', 'sleeping', 'provisioning')
	OR (status = 'failed' AND next_restart_at IS NOT NULL)
	OR (status IN ('stopped', 'failed') AND op IN ('start', 'wake', 'auto-restart'))))`

// sqlInsertEngine inserts unless the product is at its quota ($20, 0 = none)
// or at its max_running ($25, 0 = none). An existing engine of that user
// lets the insert through so that it fails with a unique violation:
// "exists" is the more useful answer than "quota".
var sqlInsertEngine = `INSERT INTO engines (id, product_id, user_id, status, port, engine_key_hash, engine_key_enc,
	image, url, instance_id, boot_duration_ms, health_failures, restart_attempts, next_restart_at,
	last_health_at, last_active_at, failure_reason, op, op_owner, op_epoch, op_started_at, created_at, updated_at)
SELECT $1::uuid, $2::uuid, $3::text, $4::text, NULLIF($5::int, 0), NULLIF($6::text, ''), NULLIF($7::text, ''),
	NULLIF($8::text, ''), NULLIF($9::text, ''), NULLIF($10::text, ''), $11::bigint, $12::int, $13::int,
	$14::timestamptz, $15::timestamptz, $16::timestamptz, NULLIF($17::text, ''),
	NULLIF($21::text, ''), NULLIF($22::text, ''), $23::bigint, $24::timestamptz, $18::timestamptz, $19::timestamptz
WHERE EXISTS (SELECT 1 FROM engines WHERE product_id = $2::uuid AND user_id = $3::text)
	OR (($20::int = 0 OR (SELECT count(*) FROM engines WHERE product_id = $2::uuid) < $20::int)
	AND ($25::int = 0 OR ` + strings.ReplaceAll(sqlRunningSlots, "$1", "$2") + ` < $25::int))
RETURNING 1`

// InsertEngine inserts e if the product is under q. With a quota, the
// product row is locked first (FOR UPDATE) and the count-and-insert runs as
// the next statement of the same batch: it takes its snapshot after the lock,
// so it sees every engine a concurrent inserter committed. One round trip.
func (s *Store) InsertEngine(ctx context.Context, e bap.Engine, q registry.Quota) error {
	b := &pgx.Batch{}
	quota := q.MaxEngines > 0 || q.MaxRunning > 0
	if quota {
		b.Queue(`SELECT 1 FROM products WHERE id = $1::uuid FOR UPDATE`, e.ProductID)
	}
	b.Queue(sqlInsertEngine, e.ID, e.ProductID, e.UserID, string(e.Status), e.Port,
		e.KeyHash, e.KeyEnc, e.Image, e.URL, e.InstanceID, e.BootDurationMS,
		e.HealthFailures, e.RestartAttempts, timePtr(e.NextRestartAt),
		timePtr(e.LastHealthAt), timePtr(e.LastActiveAt), e.FailureReason,
		bap.Timestamp(e.CreatedAt), bap.Timestamp(e.UpdatedAt), max(q.MaxEngines, 0),
		string(e.Claim.Op), e.Claim.Owner, e.Claim.Epoch, timePtr(e.Claim.StartedAt), max(q.MaxRunning, 0))
	err := s.savepointed(ctx, b, func(br pgx.BatchResults) error {
		if quota {
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		tag, err := br.Exec()
		if err == nil && tag.RowsAffected() == 0 {
			err = registry.ErrQuotaExceeded
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("insert engine for %s: %w", e.UserID, translate(err))
	}
	return nil
}

// sqlProvisionEngine checks that the user has no engine and the quota ($19
// max_engines, $24 max_running), picks the lowest free port of [$25, $26]
// (as sqlAllocatePort does), allocates it and inserts the engine on it, in
// one statement: it returns whether the user had an engine, whether the
// quota allowed it and the port (NULL: none free). A concurrent insert for
// the same user that it could not see fails it on the unique key. It must run right after
// the port lock is taken, in a statement of its own, so that its snapshot
// sees every allocation committed before.
var sqlProvisionEngine = `WITH t AS (
	SELECT EXISTS (SELECT 1 FROM engines WHERE product_id = $2::uuid AND user_id = $3::text) AS taken
), q AS (
	SELECT NOT t.taken
		AND ($19::int = 0 OR (SELECT count(*) FROM engines WHERE product_id = $2::uuid) < $19::int)
		AND ($24::int = 0 OR ` + strings.ReplaceAll(sqlRunningSlots, "$1", "$2") + ` < $24::int) AS ok
	FROM t
), p AS (
	INSERT INTO port_allocations (port, engine_id, created_at)
	SELECT c.p, $1::uuid, $27 FROM q, (` + sqlFreePorts("$25", "$26") + `) AS c
	WHERE q.ok AND c.p <= $26::int
	ORDER BY c.p LIMIT 1
	RETURNING port
), e AS (
	INSERT INTO engines (id, product_id, user_id, status, port, engine_key_hash, engine_key_enc,
		image, url, instance_id, boot_duration_ms, health_failures, restart_attempts, next_restart_at,
		last_health_at, last_active_at, failure_reason, op, op_owner, op_epoch, op_started_at, created_at, updated_at)
	SELECT $1::uuid, $2::uuid, $3::text, $4::text, p.port, NULLIF($5::text, ''), NULLIF($6::text, ''),
		NULLIF($7::text, ''), NULLIF($8::text, ''), NULLIF($9::text, ''), $10::bigint, $11::int, $12::int,
		$13::timestamptz, $14::timestamptz, $15::timestamptz, NULLIF($16::text, ''),
		NULLIF($20::text, ''), NULLIF($21::text, ''), $22::bigint, $23::timestamptz, $17::timestamptz, $18::timestamptz
	FROM p
	RETURNING 1
)
SELECT (SELECT taken FROM t), (SELECT ok FROM q), (SELECT port FROM p), (SELECT count(*) FROM e)`

// ProvisionEngine allocates the lowest free port and inserts e on it in one
// round trip: a batch (one implicit transaction) that locks the product's
// row when there is a quota, takes the port lock, then runs
// sqlProvisionEngine. The port lock is held for that statement's time on
// the server only, never across a round trip, so a burst of provisions does
// not queue behind one another's network and scheduling delays.
func (s *Store) ProvisionEngine(ctx context.Context, e bap.Engine, q registry.Quota, portMin, portMax int) (int, error) {
	b := &pgx.Batch{}
	quota := q.MaxEngines > 0 || q.MaxRunning > 0
	if quota {
		b.Queue(`SELECT 1 FROM products WHERE id = $1::uuid FOR UPDATE`, e.ProductID)
	}
	b.Queue(`SELECT pg_advisory_xact_lock($1)`, portLockKey)
	b.Queue(sqlProvisionEngine, e.ID, e.ProductID, e.UserID, string(e.Status),
		e.KeyHash, e.KeyEnc, e.Image, e.URL, e.InstanceID, e.BootDurationMS,
		e.HealthFailures, e.RestartAttempts, timePtr(e.NextRestartAt),
		timePtr(e.LastHealthAt), timePtr(e.LastActiveAt), e.FailureReason,
		bap.Timestamp(e.CreatedAt), bap.Timestamp(e.UpdatedAt), max(q.MaxEngines, 0),
		string(e.Claim.Op), e.Claim.Owner, e.Claim.Epoch, timePtr(e.Claim.StartedAt), max(q.MaxRunning, 0),
		portMin, portMax, bap.Now())
	var (
		taken, ok bool
		port      *int
	)
	err := s.savepointed(ctx, b, func(br pgx.BatchResults) error {
		if quota {
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		if _, err := br.Exec(); err != nil {
			return err
		}
		var n int
		return br.QueryRow().Scan(&taken, &ok, &port, &n)
	})
	switch {
	case err != nil:
		return 0, fmt.Errorf("provision engine for %s: %w", e.UserID, translate(err))
	case taken:
		return 0, fmt.Errorf("provision engine for %s: the user already has an engine: %w", e.UserID, registry.ErrConflict)
	case !ok:
		return 0, fmt.Errorf("provision engine for %s: %w", e.UserID, registry.ErrQuotaExceeded)
	case port == nil:
		return 0, fmt.Errorf("provision engine for %s: allocate port in %d-%d: %w", e.UserID, portMin, portMax, registry.ErrPortExhausted)
	}
	return *port, nil
}

// GetEngine returns an engine by id.
func (s *Store) GetEngine(ctx context.Context, id string) (bap.Engine, error) {
	return s.oneEngine(ctx, "get engine "+id, `SELECT `+engineCols+` FROM engines e WHERE e.id = $1::uuid`, id)
}

// LockEngine re-reads an engine holding its row lock until the transaction
// ends.
func (s *Store) LockEngine(ctx context.Context, id string) (bap.Engine, error) {
	return s.oneEngine(ctx, "lock engine "+id, `SELECT `+engineCols+` FROM engines e WHERE e.id = $1::uuid FOR UPDATE`, id)
}

func (s *Store) oneEngine(ctx context.Context, what, sql, id string) (bap.Engine, error) {
	if !validID(id) {
		return bap.Engine{}, fmt.Errorf("%s: %w", what, registry.ErrNotFound)
	}
	rows, _ := s.db.Query(ctx, sql, id)
	e, err := pgx.CollectExactlyOneRow(rows, scanEngine)
	if err != nil {
		return e, fmt.Errorf("%s: %w", what, notFound(err))
	}
	return e, nil
}

// GetEngineByUser returns the product's engine for userID.
func (s *Store) GetEngineByUser(ctx context.Context, productID, userID string) (bap.Engine, error) {
	if !validID(productID) {
		return bap.Engine{}, fmt.Errorf("get engine of %s: %w", userID, registry.ErrNotFound)
	}
	rows, _ := s.db.Query(ctx, `SELECT `+engineCols+` FROM engines e WHERE e.product_id = $1::uuid AND e.user_id = $2`,
		productID, userID)
	e, err := pgx.CollectExactlyOneRow(rows, scanEngine)
	if err != nil {
		return e, fmt.Errorf("get engine of %s: %w", userID, notFound(err))
	}
	return e, nil
}

var sqlUpdateEngine = `WITH e AS (
	UPDATE engines SET status = $2, port = NULLIF($3::int, 0), engine_key_hash = NULLIF($4::text, ''),
		engine_key_enc = NULLIF($5::text, ''), image = NULLIF($6::text, ''), url = NULLIF($7::text, ''),
		instance_id = NULLIF($8::text, ''), boot_duration_ms = $9, health_failures = $10,
		restart_attempts = $11, next_restart_at = $12, last_health_at = $13, last_active_at = $14,
		failure_reason = NULLIF($15::text, ''), updated_at = $16, op = NULLIF($17::text, ''),
		op_owner = NULLIF($18::text, ''), op_epoch = $19, op_started_at = $20, op_detail = NULLIF($21::text, '')
	WHERE id = $1::uuid RETURNING id
), audit AS (` + auditInsert(22, " CROSS JOIN e") + `)
SELECT count(*) FROM e`

// UpdateEngine writes every mutable column of e and appends entries in one
// statement; nothing is written when the engine does not exist.
func (s *Store) UpdateEngine(ctx context.Context, e bap.Engine, entries ...audit.Entry) error {
	defer s.changed(registry.Change{Kind: registry.ChangeEngine, ID: e.ID})
	if !validID(e.ID) {
		return fmt.Errorf("update engine %s: %w", e.ID, registry.ErrNotFound)
	}
	args, err := auditArgs(entries)
	if err != nil {
		return fmt.Errorf("update engine %s: %w", e.ID, err)
	}
	args = append([]any{e.ID, string(e.Status), e.Port, e.KeyHash, e.KeyEnc, e.Image, e.URL,
		e.InstanceID, e.BootDurationMS, e.HealthFailures, e.RestartAttempts, timePtr(e.NextRestartAt),
		timePtr(e.LastHealthAt), timePtr(e.LastActiveAt), e.FailureReason, bap.Now(),
		string(e.Claim.Op), e.Claim.Owner, e.Claim.Epoch, timePtr(e.Claim.StartedAt), e.Claim.Detail}, args...)
	var n int
	err = s.db.QueryRow(ctx, sqlUpdateEngine, args...).Scan(&n)
	if err == nil && n == 0 {
		err = registry.ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("update engine %s: %w", e.ID, translate(err))
	}
	return nil
}

var sqlDeleteEngine = `WITH e AS (
	DELETE FROM engines WHERE id = $1::uuid RETURNING id
), freed AS (
	DELETE FROM port_allocations pa USING e WHERE pa.engine_id = e.id
), audit AS (` + auditInsert(2, " CROSS JOIN e") + `)
SELECT count(*) FROM e`

// DeleteEngine deletes the engine, frees the ports allocated to it and
// appends entries in one statement.
func (s *Store) DeleteEngine(ctx context.Context, id string, entries ...audit.Entry) error {
	defer s.changed(registry.Change{Kind: registry.ChangeEngine, ID: id})
	if !validID(id) {
		return fmt.Errorf("delete engine %s: %w", id, registry.ErrNotFound)
	}
	args, err := auditArgs(entries)
	if err != nil {
		return fmt.Errorf("delete engine %s: %w", id, err)
	}
	var n int
	err = s.db.QueryRow(ctx, sqlDeleteEngine, append([]any{id}, args...)...).Scan(&n)
	if err == nil && n == 0 {
		err = registry.ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("delete engine %s: %w", id, translate(err))
	}
	return nil
}
