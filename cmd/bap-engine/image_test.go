package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/backend/docker"
)

// TestImageHygiene reads the Dockerfile, .dockerignore and the compose file
// (no image can be built offline here): secrets and local state never enter
// a build context, the orchestrator image has CA certificates and a
// non-root user, version stamps reach the binary, and the compose file's
// default engine image is one it builds.
func TestImageHygiene(t *testing.T) {
	root := filepath.Join("..", "..")
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(root, name))
		require.NoError(t, err)
		return string(b)
	}
	ignore := strings.Fields(read(".dockerignore"))
	for _, must := range []string{".git", ".env", ".bap-engine/"} {
		require.Contains(t, ignore, must, ".dockerignore")
	}

	df := read("Dockerfile")
	stages := regexp.MustCompile(`(?m)^FROM `).Split(df, -1)
	final := stages[len(stages)-1]
	require.Contains(t, final, "/etc/ssl/certs/ca-certificates.crt", "CA certificates for sslmode=verify-full")
	user := regexp.MustCompile(`(?m)^USER (\S+)`).FindStringSubmatch(final)
	require.NotNil(t, user, "the orchestrator stage names a user")
	require.NotRegexp(t, `^(0|root)(:|$)`, user[1], "a non-root user")
	require.Contains(t, df, "-X main.version=${VERSION}")
	require.Contains(t, df, "-X main.commit=${COMMIT}")
	require.Regexp(t, `(?m)^FROM scratch AS engine$`, df, "a target for the reference engine image")

	mk := read("Makefile")
	require.Contains(t, mk, "-X main.version=$(VERSION)")

	compose := read("docker-compose.yml")
	image := regexp.MustCompile(`ORCH_ENGINE_IMAGE: \$\{ORCH_ENGINE_IMAGE:-([^}]+)\}`).FindStringSubmatch(compose)
	require.NotNil(t, image, "the compose file sets a default engine image")
	require.Contains(t, compose, "image: "+image[1], "the default engine image is one the compose file builds")
	require.Contains(t, compose, "target: engine")
	require.Contains(t, compose, "image: "+docker.DefaultHelperImage,
		"the orchestrator's image is tagged as the snapshot helper's default")
}
