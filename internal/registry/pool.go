package registry

// PoolStats is the state of a store's database connection pool, for the
// metrics an operator watches for leaked or exhausted connections.
type PoolStats struct {
	// InUse counts connections lent out (to a query or a transaction).
	InUse int
	// Idle counts open connections waiting in the pool.
	Idle int
	// Max is the most connections the pool opens.
	Max int
}

// Pooled is a Store that reports its connection pool. Both stores are.
type Pooled interface {
	PoolStats() PoolStats
}
