#!/usr/bin/env bash
# The whole test suite: vet, unit and integration tests with the race detector
# against SQLite and PostgreSQL (and Docker when a daemon answers; required
# when CI=true), then a short fixed-time run of every fuzz target.
# Installs PostgreSQL's server binaries, Python's cryptography (for the
# Fernet compatibility checks) and Chromium (for the dashboard's browser
# tests) first if this machine lacks them.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_BIN=/usr/lib/postgresql/15/bin
if [ ! -x "$PG_BIN/postgres" ] && [ -z "${BAP_TEST_DATABASE_URL:-}" ]; then
  echo "==> PostgreSQL 15 server binaries missing: installing them"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql-15 >/dev/null
fi

if ! python3 -c 'import cryptography.fernet' >/dev/null 2>&1; then
  echo "==> python3 with cryptography missing (Fernet compatibility checks): installing it"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-cryptography >/dev/null
fi

if ! command -v chromium >/dev/null 2>&1; then
  echo "==> chromium missing (the dashboard's browser tests): installing it"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
fi

if [ "${CI:-}" = "true" ] && ! docker info >/dev/null 2>&1; then
  echo "==> Docker daemon not answering: trying to start it"
  (command -v service >/dev/null && service docker start) || (command -v dockerd >/dev/null && (dockerd >/tmp/dockerd.log 2>&1 &) ) || true
  for _ in $(seq 1 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi

start=$(date +%s)
echo "==> go vet ./..."
go vet ./...

echo "==> go test -race ./..."
go test -race -count=1 -timeout 20m ./... 2>&1 | tee /tmp/bap-engine-test.log

FUZZTIME=${FUZZTIME:-10s}
echo "==> fuzz targets (${FUZZTIME} each)"
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "--- $pkg $target"
    go test -run='^$' -fuzz="^${target}\$" -fuzztime="$FUZZTIME" "$pkg"
  done
done

echo "==> all tests passed in $(( $(date +%s) - start ))s"
