#!/usr/bin/env bash
# Build the reference engine (`bap-engine engine`) into a local Docker image,
# FROM scratch, with the classic builder (BuildKit may be unavailable and no
# registry is needed: nothing is pulled).
#
#   scripts/engine-image.sh [TAG]          # default tag: bap-engine-ref:dev
#
# Use the tag as ORCH_ENGINE_IMAGE (or a provision's engine_version) to run
# engines with the docker backend, or export BAP_ENGINE_TEST_IMAGE=TAG so the
# tests (dockertest.BuildEngineImage) reuse it instead of building their own.
# The Dockerfile is internal/backend/docker/dockertest/engine.Dockerfile, the
# same one the tests build from.
set -euo pipefail
cd "$(dirname "$0")/.."

tag="${1:-bap-engine-ref:dev}"
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT

echo "==> go build ./cmd/bap-engine (static)"
CGO_ENABLED=0 GOOS=linux go build -trimpath -o "$ctx/bap-engine" ./cmd/bap-engine
cp internal/backend/docker/dockertest/engine.Dockerfile "$ctx/Dockerfile"

echo "==> docker build -t $tag"
# (The CLI warns that the legacy builder is deprecated; it is chosen on purpose.)
DOCKER_BUILDKIT=0 docker build --quiet --tag "$tag" "$ctx"
echo "$tag"
