package rollout

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/bap"
)

func engines(n int) []bap.Engine {
	out := make([]bap.Engine, n)
	for i := range out {
		out[i] = bap.Engine{ID: fmt.Sprintf("e%02d", i), UserID: fmt.Sprintf("user-%d", i)}
	}
	return out
}

func ids(es []bap.Engine) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.ID
	}
	return out
}

func TestChosenIsExactlyTheCeilingOfTheShare(t *testing.T) {
	for _, tc := range []struct{ n, percent, want int }{
		{10, 20, 2}, {10, 50, 5}, {10, 100, 10}, {10, 1, 1}, {3, 50, 2}, {0, 50, 0}, {7, 14, 1}, {7, 15, 2},
	} {
		r := bap.Rollout{ID: "r", Percent: tc.percent}
		require.Len(t, chosen(r, engines(tc.n)), tc.want, "%d%% of %d", tc.percent, tc.n)
	}
}

func TestChosenExtendsTheSameSetAndIgnoresListOrder(t *testing.T) {
	es := engines(40)
	r := bap.Rollout{ID: "rollout-1"}
	prev := []string{}
	for p := 1; p <= 100; p++ {
		r.Percent = p
		got := ids(chosen(r, es))
		require.Equal(t, prev, got[:len(prev)], "raising to %d%% keeps the earlier ones first", p)
		prev = got
	}
	reversed := make([]bap.Engine, len(es))
	for i, e := range es {
		reversed[len(es)-1-i] = e
	}
	r.Percent = 30
	require.Equal(t, ids(chosen(r, es)), ids(chosen(r, reversed)), "the order is the hash's, not the listing's")
	other := bap.Rollout{ID: "rollout-2", Percent: 30}
	require.NotEqual(t, ids(chosen(r, es)), ids(chosen(other, es)), "another rollout draws another sample")
}
