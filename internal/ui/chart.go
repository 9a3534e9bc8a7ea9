package ui

import (
	"fmt"
	"strconv"
)

// Geometry of a bar chart, in SVG user units (the SVG scales to its box).
const (
	chartWidth  = 360
	chartHeight = 170
	chartLeft   = 36 // room for the y axis labels
	chartRight  = 8
	chartTop    = 12
	chartBottom = 28 // room for the x axis labels
)

// barChart is one series drawn as bars, with what a template needs to draw
// it as SVG and to offer the same numbers as a table.
type barChart struct {
	ID      string // unique on the page: the SVG's title and desc ids derive from it
	Title   string
	Summary string // one sentence for the SVG's description
	Unit    string // what a bar counts ("provisions")
	Width   int
	Height  int
	Bars    []bar
	YTicks  []tick
	XTicks  []tick
	Total   int
	Max     int
	// Baseline is the y of the x axis; Left and Right bound the plot.
	Baseline, Left, Right float64
}

// bar is one bar of a chart.
type bar struct {
	Label      string // the category, in full ("12:00–13:00 UTC")
	Value      int
	X, Y, W, H float64
}

// tick is an axis label.
type tick struct {
	Text string
	X, Y float64
}

// newBarChart lays out values as bars labelled labels; xTick reports which
// categories get an x axis label, and the text of it.
func newBarChart(id, title, unit string, labels []string, values []int, xTick func(i int) (string, bool)) barChart {
	c := barChart{
		ID: id, Title: title, Unit: unit, Width: chartWidth, Height: chartHeight,
		Baseline: chartHeight - chartBottom, Left: chartLeft, Right: chartWidth - chartRight,
	}
	for _, v := range values {
		c.Total += v
		c.Max = max(c.Max, v)
	}
	top := niceCeil(c.Max)
	plotH := c.Baseline - chartTop
	slot := (c.Right - c.Left) / float64(max(len(values), 1))
	gap := slot * 0.2
	for i, v := range values {
		h := 0.0
		if top > 0 {
			h = plotH * float64(v) / float64(top)
		}
		if v > 0 && h < 1 {
			h = 1 // a non-zero count stays visible
		}
		x := c.Left + float64(i)*slot
		c.Bars = append(c.Bars, bar{Label: labels[i], Value: v, X: x + gap/2, Y: c.Baseline - h, W: slot - gap, H: h})
		if text, ok := xTick(i); ok {
			c.XTicks = append(c.XTicks, tick{Text: text, X: x + slot/2, Y: c.Baseline + 16})
		}
	}
	yValues := []int{0}
	if top > 0 && top%2 == 0 {
		yValues = append(yValues, top/2)
	}
	if top > 0 {
		yValues = append(yValues, top)
	}
	for _, v := range yValues {
		y := c.Baseline
		if top > 0 {
			y -= plotH * float64(v) / float64(top)
		}
		c.YTicks = append(c.YTicks, tick{Text: strconv.Itoa(v), X: c.Left - 6, Y: y + 4})
	}
	c.Summary = fmt.Sprintf("%s: %d %s in total, at most %d in one bar.", title, c.Total, unit, c.Max)
	return c
}

// niceCeil rounds n up to 2, 5 or 10 times a power of ten (0 stays 0), so
// the axis reads in round numbers.
func niceCeil(n int) int {
	if n <= 0 {
		return 0
	}
	for p := 1; ; p *= 10 {
		for _, m := range []int{2, 5, 10} {
			if n <= m*p {
				return m * p
			}
		}
	}
}
