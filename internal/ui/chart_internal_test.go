package ui

import (
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestNiceCeil(t *testing.T) {
	for n, want := range map[int]int{-3: 0, 0: 0, 1: 2, 2: 2, 3: 5, 5: 5, 6: 10, 10: 10, 11: 20, 99: 100, 101: 200, 4999: 5000} {
		require.Equal(t, want, niceCeil(n), "niceCeil(%d)", n)
	}
}

func TestBarChartLayout(t *testing.T) {
	values := []int{0, 3, 10, 1}
	labels := []string{"a", "b", "c", "d"}
	c := newBarChart("x", "Things", "things", labels, values, func(i int) (string, bool) { return strconv.Itoa(i), i%2 == 0 })
	require.Equal(t, 14, c.Total)
	require.Equal(t, 10, c.Max)
	require.Len(t, c.Bars, 4)
	plot := c.Baseline - chartTop
	require.Zero(t, c.Bars[0].H, "zero draws nothing")
	require.InDelta(t, plot, c.Bars[2].H, 0.001, "the largest bar fills the plot (10 is a round top)")
	require.InDelta(t, plot*0.3, c.Bars[1].H, 0.001, "bars are to scale")
	for i, b := range c.Bars {
		require.InDelta(t, c.Baseline, b.Y+b.H, 0.001, "bar %d stands on the axis", i)
		require.GreaterOrEqual(t, b.X, c.Left)
		require.LessOrEqual(t, b.X+b.W, c.Right+0.001)
		require.Equal(t, labels[i], b.Label)
		require.Equal(t, values[i], b.Value)
	}
	require.Len(t, c.XTicks, 2)
	require.Equal(t, []string{"0", "5", "10"}, []string{c.YTicks[0].Text, c.YTicks[1].Text, c.YTicks[2].Text})
	require.Contains(t, c.Summary, "14 things")

	small := newBarChart("y", "Few", "few", []string{"a", "b"}, []int{0, 1}, func(int) (string, bool) { return "", false })
	require.GreaterOrEqual(t, small.Bars[1].H, 1.0, "a count of one stays visible")
	empty := newBarChart("z", "None", "none", []string{"a"}, []int{0}, func(int) (string, bool) { return "", false })
	require.Len(t, empty.YTicks, 1)
	require.Zero(t, empty.Bars[0].H)
}
