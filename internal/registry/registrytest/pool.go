package registrytest

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/registry"
)

func poolTests() []test {
	return []test{
		{"StatsFollowConnectionsLentOut", func(t *testing.T, s registry.Store) {
			p, ok := s.(registry.Pooled)
			require.True(t, ok, "every store reports its connection pool")
			ctx := context.Background()
			require.NoError(t, s.Ping(ctx))
			idle := p.PoolStats()
			require.Zero(t, idle.InUse, "no connection is lent out between calls")
			require.Positive(t, idle.Idle, "a used connection waits in the pool")
			require.GreaterOrEqual(t, idle.Max, idle.InUse+idle.Idle)

			require.NoError(t, s.InTx(ctx, func(tx registry.Store) error {
				_, err := tx.ListProducts(ctx)
				require.NoError(t, err)
				in := p.PoolStats()
				require.Equal(t, 1, in.InUse, "the transaction holds one connection")
				require.Equal(t, idle.Max, in.Max)
				return err
			}))
			require.Zero(t, p.PoolStats().InUse, "the transaction gave its connection back")
		}},
	}
}
