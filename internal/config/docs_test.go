package config

import (
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the README's configuration table from Vars")

// The README's configuration table lies between these lines.
const (
	tableBegin = "<!-- configuration table: generated from internal/config/vars.go by `go test ./internal/config -run TestREADMETable -update` -->\n"
	tableEnd   = "<!-- end of configuration table -->\n"
)

// TestREADMETable fails when the README's configuration table is not what
// Vars says; -update rewrites it.
func TestREADMETable(t *testing.T) {
	const path = "../../README.md"
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	readme := string(raw)
	begin := strings.Index(readme, tableBegin)
	end := strings.Index(readme, tableEnd)
	require.True(t, begin >= 0 && end > begin, "README.md has no generated configuration table between %q and %q", tableBegin, tableEnd)
	want := Markdown()
	got := readme[begin+len(tableBegin) : end]
	if *update {
		out := readme[:begin+len(tableBegin)] + want + readme[end:]
		require.NoError(t, os.WriteFile(path, []byte(out), 0o644))
		return
	}
	require.Equal(t, want, got, "README.md's configuration table differs from Vars: run go test ./internal/config -run TestREADMETable -update")
}

func TestMarkdownHasEveryVariable(t *testing.T) {
	md := Markdown()
	rows := strings.Split(strings.TrimSpace(md), "\n")
	require.Len(t, rows, len(table)+2, "a header, a rule and one row per variable")
	for i, v := range table {
		row := rows[i+2]
		assert.True(t, strings.HasPrefix(row, "| `"+v.Name+"` |"), row)
		assert.Equal(t, 4, strings.Count(row, " | ")+2, "three cells in %s (a | in the help is escaped)", v.Name)
	}
}

func TestTextWrapsEveryVariable(t *testing.T) {
	txt := Text(80)
	for _, v := range table {
		assert.Contains(t, txt, "  "+v.Name)
	}
	for _, line := range strings.Split(txt, "\n") {
		if len(line) > 80 && !strings.Contains(strings.TrimSpace(line), " ") {
			continue // one word longer than the line
		}
		assert.LessOrEqual(t, len(line), 80, line)
	}
	assert.NotContains(t, txt, "`", "markdown quotes are for the README")
	assert.Equal(t, []string{"a b", "c"}, wrap("a b c", 3))
	assert.Equal(t, []string{"abcdef", "g"}, wrap("abcdef g", 3))
}
