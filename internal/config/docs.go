package config

import (
	"strings"
)

// Markdown renders every variable as the README's configuration table:
// name, default and help, in the table's order.
func Markdown() string {
	var b strings.Builder
	b.WriteString("| Variable | Default | Meaning |\n|---|---|---|\n")
	for _, v := range table {
		def := ""
		if v.required() {
			def = "(required)"
		}
		if v.Default != "" {
			def = "`" + v.Default + "`"
		}
		b.WriteString("| `" + v.Name + "` | " + def + " | " + strings.ReplaceAll(v.Help, "|", `\|`) + " |\n")
	}
	return b.String()
}

// Text renders every variable for a terminal (serve --help): the name and
// default on one line, the help below it, indented and wrapped to width.
func Text(width int) string {
	var b strings.Builder
	for _, v := range table {
		b.WriteString("  " + v.Name)
		if v.Default != "" {
			b.WriteString(" (default " + v.Default + ")")
		}
		b.WriteString("\n")
		for _, line := range wrap(strings.ReplaceAll(v.Help, "`", ""), width-6) {
			b.WriteString("      " + line + "\n")
		}
	}
	return b.String()
}

// wrap breaks text into lines of at most width characters at spaces (a
// longer word stands on its own line).
func wrap(text string, width int) []string {
	var lines []string
	var cur strings.Builder
	for _, w := range strings.Fields(text) {
		if cur.Len() > 0 && cur.Len()+1+len(w) > width {
			lines = append(lines, cur.String())
			cur.Reset()
		}
		if cur.Len() > 0 {
			cur.WriteByte(' ')
		}
		cur.WriteString(w)
	}
	if cur.Len() > 0 {
		lines = append(lines, cur.String())
	}
	return lines
}

// required reports whether serve refuses to start without the variable.
func (v Var) required() bool { return strings.HasSuffix(v.Help, "Required by serve.") }
