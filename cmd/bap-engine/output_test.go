package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

type outRow struct {
	UserID string  `json:"user_id"`
	Status string  `json:"status"`
	URL    *string `json:"url"`
}

func TestPrinterFormats(t *testing.T) {
	v := map[string]any{"engines": []outRow{{UserID: "alice", Status: "running"}}, "total": 1}
	rows := [][]string{{"USER", "STATUS", "URL"}, {"alice", "running", "-"}}
	render := func(p *printer) string {
		var b bytes.Buffer
		p.w = &b
		require.NoError(t, p.wideTable(v, rows, 2, "1 engine"))
		return b.String()
	}

	table := render(&printer{format: outputTable})
	require.Contains(t, table, "USER")
	require.NotContains(t, table, "URL", "wide-only column in table mode")
	require.Contains(t, table, "1 engine")

	wide := render(&printer{format: outputWide})
	require.Contains(t, wide, "URL")

	js := render(&printer{format: outputJSON})
	require.JSONEq(t, `{"engines":[{"user_id":"alice","status":"running","url":null}],"total":1}`, js)
	require.Equal(t, js, render(&printer{json: true}), "--json is -o json")

	y := render(&printer{format: "YAML"})
	require.Equal(t, "engines:\n  - user_id: alice\n    status: running\n    url: null\ntotal: 1\n", y)

	_, err := (&printer{format: "xml"}).mode()
	require.ErrorContains(t, err, `unknown output format "xml"`)
}

func TestProgressWithoutTerminalPrintsWholeLines(t *testing.T) {
	var b bytes.Buffer
	p := startProgress(&b, "upgrade alice", "snapshotting the brain")
	p.phase("waiting for health")
	p.done(errors.New("boom"))
	out := b.String()
	require.NotContains(t, out, "\r")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 3)
	require.Equal(t, "upgrade alice: snapshotting the brain…", lines[0])
	require.Equal(t, "upgrade alice: waiting for health…", lines[1])
	require.True(t, strings.HasPrefix(lines[2], "upgrade alice: failed in "), lines[2])
}
