package ui

import (
	"fmt"
	"html/template"
	"net/http"
	"strconv"
	"time"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// pageNames are the page templates; each is parsed with layout.html.
var pageNames = []string{"signin", "error", "overview", "engines", "engine", "products", "product"}

// parsePages parses every page once, at start-up: a broken template is a
// build mistake and panics.
func parsePages() map[string]*template.Template {
	base := template.Must(template.New("layout").Funcs(funcs).ParseFS(templateFiles, "templates/layout.html"))
	pages := make(map[string]*template.Template, len(pageNames))
	for _, name := range pageNames {
		pages[name] = template.Must(template.Must(base.Clone()).ParseFS(templateFiles, "templates/"+name+".html"))
	}
	return pages
}

// Symbols that carry a state besides its colour (the name is always
// written out too).
var (
	stateSymbols = map[bap.State]string{
		bap.StateProvisioning: "◌",
		bap.StateRunning:      "●",
		bap.StateSleeping:     "◐",
		bap.StateStopped:      "■",
		bap.StateFailed:       "✖",
		bap.StateDestroying:   "⌫",
	}
	rolloutSymbols = map[bap.RolloutState]string{
		bap.RolloutRunning: "▶",
		bap.RolloutPaused:  "⏸",
		bap.RolloutDone:    "✔",
		bap.RolloutAborted: "✖",
	}
	healthSymbols = map[string]string{"ok": "✔", "degraded": "▲", "critical": "✖"}
	sortLabels    = map[registry.FleetSort]string{
		registry.SortCreated:  "created",
		registry.SortUser:     "user id",
		registry.SortState:    "state",
		registry.SortProduct:  "product",
		registry.SortFailures: "health failures",
		registry.SortHealth:   "last health",
	}
)

// timeLayout is how pages write times: UTC, to the second.
const timeLayout = "2006-01-02 15:04:05 UTC"

// timeOf accepts a time or a pointer to one (nil: the zero time).
func timeOf(v any) time.Time {
	switch t := v.(type) {
	case time.Time:
		return t
	case *time.Time:
		if t != nil {
			return *t
		}
	}
	return time.Time{}
}

var funcs = template.FuncMap{
	"stateSymbol":   func(s bap.State) string { return stateSymbols[s] },
	"healthSymbol":  func(h string) string { return healthSymbols[h] },
	"rolloutSymbol": func(s bap.RolloutState) string { return rolloutSymbols[s] },
	"sortLabel":     func(s registry.FleetSort) string { return sortLabels[s] },
	"states":        func() []bap.State { return states },
	"statusText":    http.StatusText,
	"engineURL":     engineURL,
	"fmtTime":       func(v any) string { return timeOf(v).UTC().Format(timeLayout) },
	"rfc3339":       func(v any) string { return timeOf(v).UTC().Format(time.RFC3339) },
	// f writes an SVG coordinate.
	"f":     func(x float64) string { return strconv.FormatFloat(x, 'f', 1, 64) },
	"minus": func(a, b float64) float64 { return a - b },
	// plural writes a count with its noun.
	"plural": func(n int, one, many string) string {
		if n == 1 {
			return "1 " + one
		}
		return strconv.Itoa(n) + " " + many
	},
	// ms writes an optional duration in milliseconds.
	"ms": func(d *int64) string {
		switch {
		case d == nil:
			return "—"
		case *d >= 10000:
			return fmt.Sprintf("%.1f s", float64(*d)/1000)
		default:
			return fmt.Sprintf("%d ms", *d)
		}
	},
}
