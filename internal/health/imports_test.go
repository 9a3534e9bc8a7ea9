package health_test

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/health"
	"github.com/september/bap-engine/internal/metrics"
)

// TestImports keeps the architecture true: health reaches engines only
// through lifecycle and the registry, never through a backend, and uses no
// database driver.
func TestImports(t *testing.T) {
	t.Parallel()
	allowed := map[string]bool{
		"github.com/september/bap-engine/internal/audit":     true,
		"github.com/september/bap-engine/internal/bap":       true,
		"github.com/september/bap-engine/internal/lifecycle": true,
		"github.com/september/bap-engine/internal/registry":  true,
		"github.com/september/bap-engine/internal/metrics":   true,
	}
	files, err := filepath.Glob("*.go")
	require.NoError(t, err)
	checked := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly)
		require.NoError(t, err)
		for _, imp := range f.Imports {
			path, err := strconv.Unquote(imp.Path.Value)
			require.NoError(t, err)
			if strings.HasPrefix(path, "github.com/september/bap-engine/") {
				require.True(t, allowed[path], "%s imports %s", name, path)
			}
			require.NotContains(t, path, "sqlite", "%s imports %s", name, path)
			require.NotContains(t, path, "pgx", "%s imports %s", name, path)
		}
		checked++
	}
	require.Positive(t, checked)
}

// The Prometheus metrics are the production Observer.
var _ health.Observer = (*metrics.Metrics)(nil)
