// Package dockertest helps tests that need a real Docker daemon: a client
// that fails (CI=true) or skips when there is none, the reference engine
// image built locally (no registry is needed), and cleanup of everything a
// test deployment created. It imports no bap-engine package, so any test
// may use it.
package dockertest

import (
	"archive/tar"
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/build"
	"github.com/moby/moby/api/types/jsonstream"
	"github.com/moby/moby/client"
)

// Label keys, as in package backend (not imported, to keep this package a leaf).
const (
	labelManaged    = "bap-engine.managed"
	labelDeployment = "bap-engine.deployment"
)

// dockerfile builds the reference engine image FROM scratch.
//
//go:embed engine.Dockerfile
var dockerfile []byte

// Client returns a client of the Docker daemon named by the environment
// (DOCKER_HOST or the local socket), closed when the test ends. Without a
// reachable daemon the test fails when CI=true and is skipped otherwise.
func Client(t testing.TB) *client.Client {
	t.Helper()
	cli, err := client.New(client.FromEnv)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
		cancel()
		if err != nil {
			_ = cli.Close()
		}
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("docker required (CI=true) but the daemon is not reachable: %v", err)
		}
		t.Skipf("docker daemon not reachable, skipping (set CI=true to make this a failure): %v", err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// imageBuild is one tag's build, done once per test binary.
type imageBuild struct {
	once sync.Once
	err  error
}

var builds sync.Map // tag → *imageBuild

// ImageEnv names a prebuilt reference engine image (for instance one made
// by scripts/engine-image.sh in CI) that BuildEngineImage returns instead of
// building.
const ImageEnv = "BAP_ENGINE_TEST_IMAGE"

// BuildEngineImage builds the reference engine into a local image FROM
// scratch tagged tag, once per test binary, and returns tag. The image's
// /bap-engine is the standalone engine (internal/engine/standalone), which
// answers the two commands the backend runs the image with, `engine` and
// the snapshot helper's `snapshot FROM TO`, as the orchestrator's binary
// does, at a tenth of its size. It needs the go tool and the module source
// (found with `go env GOMOD`); a failed build fails the test. When ImageEnv
// is set, that image is used as it is (it must exist) and nothing is built.
func BuildEngineImage(t testing.TB, tag string) string {
	t.Helper()
	cli := Client(t)
	if img := os.Getenv(ImageEnv); img != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := cli.ImageInspect(ctx, img); err != nil {
			t.Fatalf("%s=%s: %v", ImageEnv, img, err)
		}
		return img
	}
	v, _ := builds.LoadOrStore(tag, &imageBuild{})
	b := v.(*imageBuild)
	b.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		b.err = buildEngineImage(ctx, cli, tag)
	})
	if b.err != nil {
		t.Fatalf("build engine image %s: %v", tag, b.err)
	}
	return tag
}

// buildEngineImage compiles the binary, sends {Dockerfile, bap-engine} as
// the build context to the classic builder (BuildKit may be missing) and
// drops the image the tag pointed at before, so rebuilds leave no litter.
func buildEngineImage(ctx context.Context, cli *client.Client, tag string) error {
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "bap-engine-image-")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "bap-engine")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "./internal/engine/standalone")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./internal/engine/standalone: %w\n%s", err, out)
	}
	buildCtx, err := contextTar(bin)
	if err != nil {
		return err
	}

	var oldID string
	if img, err := cli.ImageInspect(ctx, tag); err == nil {
		oldID = img.ID
	}
	res, err := cli.ImageBuild(ctx, buildCtx, client.ImageBuildOptions{
		Tags:        []string{tag},
		Version:     build.BuilderV1,
		Remove:      true,
		ForceRemove: true,
	})
	if err != nil {
		return fmt.Errorf("image build: %w", err)
	}
	defer res.Body.Close()
	if err := readBuildOutput(res.Body); err != nil {
		return err
	}
	img, err := cli.ImageInspect(ctx, tag)
	if err != nil {
		return fmt.Errorf("inspect built image: %w", err)
	}
	if oldID != "" && oldID != img.ID {
		// Still in use by a container of a concurrent test run: leave it.
		_, _ = cli.ImageRemove(ctx, oldID, client.ImageRemoveOptions{})
	}
	return nil
}

// moduleRoot is the directory of the main module's go.mod.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("go env GOMOD: not inside a module")
	}
	return filepath.Dir(mod), nil
}

// contextTar is the build context: the Dockerfile and the binary.
func contextTar(bin string) (io.Reader, error) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, fmt.Errorf("read binary: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	for _, f := range []struct {
		name string
		mode int64
		data []byte
	}{
		{"Dockerfile", 0o644, dockerfile},
		{"bap-engine", 0o755, data},
	} {
		hdr := &tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), ModTime: now, Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("tar %s: %w", f.name, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, fmt.Errorf("tar %s: %w", f.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("tar: %w", err)
	}
	return &buf, nil
}

// readBuildOutput consumes the builder's JSON messages and returns the
// first error it reports, with the build log for context.
func readBuildOutput(r io.Reader) error {
	dec := json.NewDecoder(r)
	var log strings.Builder
	for {
		var m jsonstream.Message
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read build output: %w", err)
		}
		log.WriteString(m.Stream)
		if m.Error != nil {
			return fmt.Errorf("image build failed: %s\n%s", m.Error.Message, log.String())
		}
	}
}

// CleanupDeployment removes, when the test ends, every container and volume
// labelled with deployment (running or not), and any network named in
// networks — whatever the test left behind, even after a failure.
func CleanupDeployment(t testing.TB, cli *client.Client, deployment string, networks ...string) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		f := make(client.Filters).Add("label", labelManaged+"=true", labelDeployment+"="+deployment)
		cs, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
		if err != nil {
			t.Errorf("cleanup: list containers of %s: %v", deployment, err)
		}
		for _, c := range cs.Items {
			err := retryBusy(ctx, func() error {
				_, err := cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true})
				return err
			})
			if err != nil {
				t.Errorf("cleanup: remove container %s: %v", c.ID, err)
			}
		}
		vs, err := cli.VolumeList(ctx, client.VolumeListOptions{Filters: f})
		if err != nil {
			t.Errorf("cleanup: list volumes of %s: %v", deployment, err)
		}
		for _, v := range vs.Items {
			err := retryBusy(ctx, func() error {
				_, err := cli.VolumeRemove(ctx, v.Name, client.VolumeRemoveOptions{Force: true})
				return err
			})
			if err != nil {
				t.Errorf("cleanup: remove volume %s: %v", v.Name, err)
			}
		}
		for _, n := range networks {
			_, err := cli.NetworkRemove(ctx, n, client.NetworkRemoveOptions{})
			if err != nil && !cerrdefs.IsNotFound(err) {
				t.Errorf("cleanup: remove network %s: %v", n, err)
			}
		}
	})
}

// retryBusy runs remove until it succeeds, finds nothing, or stops
// reporting a conflict (a removal already in progress, a volume still held
// by a container being removed), for up to 15 s.
func retryBusy(ctx context.Context, remove func() error) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := remove()
		if err == nil || cerrdefs.IsNotFound(err) {
			return nil
		}
		if !cerrdefs.IsConflict(err) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Kill sends SIGKILL to a container from outside, as a crash would end it.
func Kill(ctx context.Context, cli *client.Client, container string) error {
	if _, err := cli.ContainerKill(ctx, container, client.ContainerKillOptions{Signal: "SIGKILL"}); err != nil {
		return fmt.Errorf("kill container %s: %w", container, err)
	}
	return nil
}

// DeriveImage builds tag FROM base (a local image: nothing is pulled) with
// the environment env baked in, once per test binary, and returns tag: an
// engine image that differs from base only in what its engines are told
// (the upgrade tests use one that refuses its own version).
func DeriveImage(t testing.TB, base, tag string, env map[string]string) string {
	t.Helper()
	cli := Client(t)
	v, _ := builds.LoadOrStore(tag, &imageBuild{})
	b := v.(*imageBuild)
	b.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		df := "FROM " + base + "\n"
		keys := make([]string, 0, len(env))
		for k := range env {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			df += fmt.Sprintf("ENV %s=%q\n", k, env[k])
		}
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		if b.err = tw.WriteHeader(&tar.Header{Name: "Dockerfile", Mode: 0o644, Size: int64(len(df)), ModTime: time.Now(), Typeflag: tar.TypeReg}); b.err != nil {
			return
		}
		if _, b.err = tw.Write([]byte(df)); b.err != nil {
			return
		}
		if b.err = tw.Close(); b.err != nil {
			return
		}
		res, err := cli.ImageBuild(ctx, &buf, client.ImageBuildOptions{Tags: []string{tag}, Version: build.BuilderV1, Remove: true, ForceRemove: true})
		if err != nil {
			b.err = fmt.Errorf("image build: %w", err)
			return
		}
		defer res.Body.Close()
		b.err = readBuildOutput(res.Body)
	})
	if b.err != nil {
		t.Fatalf("derive image %s from %s: %v", tag, base, b.err)
	}
	return tag
}
