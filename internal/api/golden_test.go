package api_test

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// goldenError is what a golden file holds of an error answer.
type goldenError struct {
	Status     int    `json:"status"`
	RetryAfter string `json:"retry_after,omitempty"`
	Body       struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	} `json:"body"`
}

// Normalisers for the parts of messages that differ between runs.
var (
	portRange = regexp.MustCompile(`\b\d{4,5}-\d{4,5}\b`)
	quoted    = regexp.MustCompile(`"[^"]*"`)
)

// checkGolden compares an error answer with testdata/golden/<name>.json:
// status, Retry-After, and the body, which must be exactly the envelope.
// norm adjusts the message for run-dependent parts.
func checkGolden(t *testing.T, name string, r response, norm ...func(string) string) {
	t.Helper()
	var got goldenError
	got.Status = r.status
	got.RetryAfter = r.header.Get("Retry-After")
	dec := json.NewDecoder(bytesReader(r.body))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&got.Body), "error body must be exactly the envelope: %s", r.body)
	require.Equal(t, "application/json", r.header.Get("Content-Type"))
	for _, n := range norm {
		got.Body.Error.Message = n(got.Body.Error.Message)
	}
	path := filepath.Join("testdata", "golden", name+".json")
	if *update {
		b, err := json.MarshalIndent(got, "", "  ")
		require.NoError(t, err)
		require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
		require.NoError(t, os.WriteFile(path, append(b, '\n'), 0o644))
		return
	}
	b, err := os.ReadFile(path)
	require.NoError(t, err, "missing golden file; run go test -run %s -update", t.Name())
	var want goldenError
	require.NoError(t, json.Unmarshal(b, &want))
	require.Equal(t, want, got)
}

func normPorts(s string) string { return portRange.ReplaceAllString(s, "<min>-<max>") }
