package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// Output formats of the client commands (-o), as kubectl names them.
const (
	outputTable = "table" // the default: the main columns
	outputWide  = "wide"  // every column
	outputJSON  = "json"  // the API's JSON, indented
	outputYAML  = "yaml"  // the same document as YAML, fields in the API's order
)

var outputFormats = []string{outputTable, outputWide, outputJSON, outputYAML}

// printer renders the client commands' results in the format chosen with
// -o (or --json, kept as an alias of -o json). Every command prints through
// it, so every command honours every format.
type printer struct {
	w      io.Writer
	format string
	json   bool
}

// registerFlags adds -o/--output and --json to fs (persistent flags of a
// command group).
func (p *printer) registerFlags(fs *pflag.FlagSet) {
	if fs.Lookup("output") != nil {
		return
	}
	fs.StringVarP(&p.format, "output", "o", outputTable, "output format: "+strings.Join(outputFormats, "|"))
	fs.BoolVar(&p.json, "json", false, "print JSON (same as -o json)")
}

// mode is the chosen format, or an error naming the valid ones.
func (p *printer) mode() (string, error) {
	if p.json {
		return outputJSON, nil
	}
	f := strings.ToLower(strings.TrimSpace(p.format))
	if f == "" {
		return outputTable, nil
	}
	for _, ok := range outputFormats {
		if f == ok {
			return f, nil
		}
	}
	return "", fmt.Errorf("unknown output format %q (want one of %s)", p.format, strings.Join(outputFormats, ", "))
}

// structured prints v as JSON or YAML when one of those was chosen and
// reports whether it did.
func (p *printer) structured(v any) (bool, error) {
	m, err := p.mode()
	if err != nil {
		return true, err
	}
	switch m {
	case outputJSON:
		enc := json.NewEncoder(p.w)
		enc.SetIndent("", "  ")
		return true, enc.Encode(v)
	case outputYAML:
		b, err := toYAML(v)
		if err != nil {
			return true, err
		}
		_, err = p.w.Write(b)
		return true, err
	}
	return false, nil
}

// toYAML renders v's JSON form as block YAML, keeping the JSON field order
// (YAML reads JSON, so decoding into a node keeps the order; clearing the
// styles turns JSON's flow style into block style).
func toYAML(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var n yaml.Node
	if err := yaml.Unmarshal(b, &n); err != nil {
		return nil, err
	}
	blockStyle(&n)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&n); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func blockStyle(n *yaml.Node) {
	if n.Kind == yaml.ScalarNode {
		// Strings keep their quotes only when YAML needs them.
		if n.Style == yaml.DoubleQuotedStyle && n.Tag == "!!str" {
			n.Style = 0
		}
	} else {
		n.Style = 0
	}
	for _, c := range n.Content {
		blockStyle(c)
	}
}

// table prints v as rows (rows[0] is the header) with a footer line, or v
// itself in a structured format. Every column shows in table and wide mode.
func (p *printer) table(v any, rows [][]string, footer string) error {
	return p.wideTable(v, rows, -1, footer)
}

// wideTable is table whose columns after the first narrow ones show only
// with -o wide (narrow < 0: all columns always).
func (p *printer) wideTable(v any, rows [][]string, narrow int, footer string) error {
	if done, err := p.structured(v); done {
		return err
	}
	m, _ := p.mode()
	tw := tabwriter.NewWriter(p.w, 0, 4, 2, ' ', 0)
	for _, r := range rows {
		if m != outputWide && narrow >= 0 && narrow < len(r) {
			r = r[:narrow]
		}
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if footer == "" {
		return nil
	}
	_, err := fmt.Fprintln(p.w, footer)
	return err
}

// kv prints "key: value" lines, or v itself in a structured format.
func (p *printer) kv(v any, pairs [][2]string) error {
	if done, err := p.structured(v); done {
		return err
	}
	tw := tabwriter.NewWriter(p.w, 0, 4, 2, ' ', 0)
	for _, kv := range pairs {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
	}
	return tw.Flush()
}

// value prints any result struct: in a structured format as asked, else its
// JSON fields (nested ones as a.b) as key: value lines.
func (p *printer) value(v any) error {
	if done, err := p.structured(v); done {
		return err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		enc := json.NewEncoder(p.w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	return p.kv(v, flatten("", m))
}

func flatten(prefix string, m map[string]any) [][2]string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out [][2]string
	for _, k := range keys {
		name := prefix + k
		switch x := m[k].(type) {
		case map[string]any:
			out = append(out, flatten(name+".", x)...)
		case nil:
			out = append(out, [2]string{name, "-"})
		default:
			b, _ := json.Marshal(x)
			s := strings.Trim(string(b), `"`)
			out = append(out, [2]string{name, s})
		}
	}
	return out
}

// isTerminal reports whether w is a terminal (a character device), where
// progress may redraw its line with \r; anywhere else it prints whole lines.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
