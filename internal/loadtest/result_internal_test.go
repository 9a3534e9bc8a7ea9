package loadtest

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestQuantileNearestRank(t *testing.T) {
	t.Parallel()
	r := Result{}
	for i := 1; i <= 100; i++ {
		r.lat = append(r.lat, time.Duration(i)*time.Millisecond)
	}
	r.Requests = len(r.lat)
	require.Equal(t, 1*time.Millisecond, r.Quantile(0))
	require.Equal(t, 1*time.Millisecond, r.Quantile(0.001))
	require.Equal(t, 50*time.Millisecond, r.Quantile(0.5))
	require.Equal(t, 51*time.Millisecond, r.Quantile(0.505))
	require.Equal(t, 99*time.Millisecond, r.Quantile(0.99))
	require.Equal(t, 100*time.Millisecond, r.Quantile(0.999))
	require.Equal(t, 100*time.Millisecond, r.Quantile(1))
	require.Equal(t, 100*time.Millisecond, r.Quantile(7), "q is clamped to 1")
	require.Equal(t, 1*time.Millisecond, r.Quantile(-1), "q is clamped to 0")
	require.Equal(t, 50500*time.Microsecond, r.Mean())
}

func TestEmptyResult(t *testing.T) {
	t.Parallel()
	var r Result
	require.Zero(t, r.Quantile(0.5))
	require.Zero(t, r.Mean())
	require.Zero(t, r.Throughput())
}

func TestThroughput(t *testing.T) {
	t.Parallel()
	r := Result{Requests: 300, Elapsed: 1500 * time.Millisecond}
	require.InDelta(t, 200.0, r.Throughput(), 1e-9)
}

func TestMergePoolsSlices(t *testing.T) {
	t.Parallel()
	errA := errors.New("a")
	a := Result{Clients: 8, Offered: 100, Elapsed: time.Second, Requests: 2, Errors: 1, FirstErr: errA,
		lat: []time.Duration{1, 5}}
	b := Result{Clients: 8, Offered: 100, Elapsed: 3 * time.Second, Requests: 3, Errors: 2, FirstErr: errors.New("b"),
		lat: []time.Duration{2, 3, 4}}
	m := Merge(a, b)
	require.Equal(t, 8, m.Clients)
	require.InDelta(t, 100.0, m.Offered, 0)
	require.Equal(t, 4*time.Second, m.Elapsed)
	require.Equal(t, 5, m.Requests)
	require.Equal(t, 3, m.Errors)
	require.ErrorIs(t, m.FirstErr, errA)
	require.Equal(t, []time.Duration{1, 2, 3, 4, 5}, m.lat)
	require.InDelta(t, 1.25, m.Throughput(), 1e-9)
	require.Equal(t, time.Duration(3), m.Quantile(0.5))
	require.Zero(t, Merge().Requests)
}
