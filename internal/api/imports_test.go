package api_test

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestImportsNoBackendOrConcreteStore keeps the api above the engines and
// the databases: it talks to lifecycle, discovery and the Store interface.
func TestImportsNoBackendOrConcreteStore(t *testing.T) {
	t.Parallel()
	forbidden := []string{
		"github.com/september/bap-engine/internal/backend",
		"github.com/september/bap-engine/internal/registry/sqlite",
		"github.com/september/bap-engine/internal/registry/postgres",
		"github.com/jackc/pgx",
		"modernc.org/sqlite",
		"github.com/moby/moby",
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
			for _, bad := range forbidden {
				require.False(t, path == bad || strings.HasPrefix(path, bad+"/"), "%s imports %s", name, path)
			}
		}
		checked++
	}
	require.Positive(t, checked)
}
