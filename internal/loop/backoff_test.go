package loop_test

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/loop"
)

func TestBackoff(t *testing.T) {
	t.Parallel()
	const s = time.Second
	tests := []struct {
		name      string
		base, max time.Duration
		n         int
		want      time.Duration
	}{
		{"first attempt waits base", 5 * s, 300 * s, 0, 5 * s},
		{"doubles", 5 * s, 300 * s, 1, 10 * s},
		{"doubles again", 5 * s, 300 * s, 2, 20 * s},
		{"below cap", 5 * s, 300 * s, 5, 160 * s},
		{"capped", 5 * s, 300 * s, 6, 300 * s},
		{"stays capped", 5 * s, 300 * s, 7, 300 * s},
		{"huge n does not overflow", 5 * s, 300 * s, 1000, 300 * s},
		{"max int n", 5 * s, 300 * s, math.MaxInt, 300 * s},
		{"max duration cap", 5 * s, math.MaxInt64, 100, math.MaxInt64},
		{"large base near overflow", math.MaxInt64/2 + 1, math.MaxInt64, 1, math.MaxInt64},
		{"negative n is 0", 5 * s, 300 * s, -3, 5 * s},
		{"max below base", 10 * s, 3 * s, 0, 3 * s},
		{"zero base", 0, 300 * s, 4, 0},
		{"negative base", -s, 300 * s, 2, 0},
		{"zero max", 5 * s, 0, 2, 0},
		{"sub-second", 50 * time.Millisecond, 400 * time.Millisecond, 2, 200 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, loop.Backoff(tt.base, tt.max, tt.n))
		})
	}
}
