package registry

import (
	"time"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
)

// FleetSort names the order of ListFleet. Every order ends with the engine
// id, so pages never overlap or skip a row.
type FleetSort string

// Orders of ListFleet.
const (
	// SortCreated orders by created_at (the default).
	SortCreated FleetSort = "created"
	// SortUser orders by user_id.
	SortUser FleetSort = "user"
	// SortState orders by status, then user_id.
	SortState FleetSort = "state"
	// SortProduct orders by the product's slug, then user_id.
	SortProduct FleetSort = "product"
	// SortFailures orders by health_failures, then user_id.
	SortFailures FleetSort = "failures"
	// SortHealth orders by last_health_at; engines never probed come
	// first when ascending and last when descending.
	SortHealth FleetSort = "health"
)

// FleetSorts lists every FleetSort.
var FleetSorts = []FleetSort{SortCreated, SortUser, SortState, SortProduct, SortFailures, SortHealth}

// FleetFilter selects engines of any product for ListFleet.
type FleetFilter struct {
	ProductID string    // empty: every product
	Status    bap.State // empty: any
	// UserID selects engines whose user_id contains it, ignoring ASCII
	// case; empty: any.
	UserID string
	Sort   FleetSort // empty: SortCreated
	Desc   bool      // reverse the whole order, the id tie-break included
	Limit  int       // 0: no limit
	Offset int
}

// FleetEngine is an engine with the slug of its product.
type FleetEngine struct {
	bap.Engine
	ProductSlug string
}

// AuditHour counts one action's audit entries within one hour.
type AuditHour struct {
	Hour   time.Time // the start of the hour, UTC
	Action audit.Action
	Count  int
}
