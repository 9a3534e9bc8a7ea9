#!/usr/bin/env bash
# The whole test suite: vet, unit and integration tests with the race detector
# against SQLite and PostgreSQL (and Docker when a daemon answers; required
# when CI=true), a 3-minute soak of a real orchestrator (BAP_SOAK sets its
# length), then a short fixed-time run of every fuzz target. The soak and the
# Python client's tests, which mostly wait (on a paced load, on a rate
# limit's minute), run beside the race suite rather than after it.
# The Kubernetes tests run against a real kube-apiserver and etcd, built
# from source once per machine by scripts/controlplane.sh (several minutes
# cold, a no-op once cached outside the repo).
# Then the Go client module's own tests and examples (it is a module of its
# own, so `go test ./...` here does not reach it) and the Python client's
# tests (pytest against a real `bap-engine serve`, and the example product).
# Installs PostgreSQL's server binaries, Python's cryptography (for the
# Fernet compatibility checks), the Debian packages the Python client, its
# tests and the example product need, and Chromium (for the dashboard's
# browser tests) first if this machine lacks them.
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

# Debian's python3-* packages install for /usr/bin/python3, which may not be
# the python3 first on PATH.
PY=/usr/bin/python3
PY_DEBS="python3-httpx python3-pytest python3-fastapi python3-uvicorn"
if ! "$PY" -c 'import httpx, pytest, fastapi, uvicorn' >/dev/null 2>&1; then
  echo "==> Python client test packages missing: installing $PY_DEBS"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 $PY_DEBS >/dev/null
  "$PY" -c 'import httpx, pytest, fastapi, uvicorn' || { echo "FAIL: $PY cannot import httpx, pytest, fastapi, uvicorn after installing $PY_DEBS" >&2; exit 1; }
fi

if ! command -v chromium >/dev/null 2>&1; then
  echo "==> chromium missing (the dashboard's browser tests): installing it"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
fi

if ! command -v promtool >/dev/null 2>&1; then
  echo "==> promtool missing (checks deploy/monitoring's alert rules): installing Debian's prometheus package"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } || true
  if ! command -v promtool >/dev/null 2>&1 && [ "${CI:-}" = "true" ]; then
    echo "FAIL: promtool is needed in CI and could not be installed (apt-get install prometheus)" >&2
    exit 1
  fi
fi

if [ "${CI:-}" = "true" ] && ! docker info >/dev/null 2>&1; then
  echo "==> Docker daemon not answering: trying to start it"
  (command -v service >/dev/null && service docker start) || (command -v dockerd >/dev/null && (dockerd >/tmp/dockerd.log 2>&1 &) ) || true
  for _ in $(seq 1 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi

start=$(date +%s)
# step prints a step's title with the seconds since the start, so a slow run
# shows where its time went.
step() { echo "==> [+$(( $(date +%s) - start ))s] $*"; }
if command -v promtool >/dev/null 2>&1; then
  echo "==> promtool: alert rules, their unit tests and the example scrape config (deploy/monitoring)"
  promtool check rules deploy/monitoring/alerts.yml
  promtool test rules deploy/monitoring/tests/alerts_test.yml
  promtool check config --syntax-only deploy/monitoring/prometheus.yml
else
  echo "==> promtool missing and not installable here: alert rules NOT checked (CI fails on this)"
fi
step "control plane for the Kubernetes tests (kube-apiserver, etcd; built once per machine)"
cp_start=$(date +%s)
BAP_KUBETEST_BIN_DIR=$(./scripts/controlplane.sh | tail -1)
export BAP_KUBETEST_BIN_DIR
step "control plane ready in $BAP_KUBETEST_BIN_DIR ($(( $(date +%s) - cp_start ))s)"

step "go vet ./..."
go vet ./...

# Beside the race suite, one after the other: the soak (a real orchestrator
# on PostgreSQL with 500 engines under mixed and hostile load, without the
# race detector; BAP_SOAK=6h runs it for hours), then the Python client's
# tests (pytest against a real `bap-engine serve`, and the example product).
# Their logs are printed when they end.
SOAK=${BAP_SOAK:-3m}
SOAK_TIMEOUT=30m
if [ -n "${BAP_SOAK:-}" ]; then SOAK_TIMEOUT=0; fi
bin_dir="$(mktemp -d)"
beside_pid=""
cleanup() {
  if [ -n "$beside_pid" ]; then kill -- -"$beside_pid" 2>/dev/null || true; wait "$beside_pid" 2>/dev/null || true; fi
  rm -rf "$bin_dir"
}
trap cleanup EXIT
go build -o "$bin_dir/bap-engine" ./cmd/bap-engine
step "soak (${SOAK}), then the Python client's tests, beside the race suite"
set -m
(
  set +e
  BAP_SOAK="$SOAK" go test -count=1 -timeout "$SOAK_TIMEOUT" -run '^TestSoak$' -v ./cmd/bap-engine/ >/tmp/bap-engine-soak.log 2>&1
  echo $? >"$bin_dir/soak.rc"
  echo "soak ended at +$(( $(date +%s) - start ))s" >>/tmp/bap-engine-soak.log
  BAP_ENGINE_BIN="$bin_dir/bap-engine" "$PY" -m pytest -q -p no:cacheprovider clients/python/tests >/tmp/bap-engine-python.log 2>&1
  echo $? >"$bin_dir/python.rc"
  echo "Python tests ended at +$(( $(date +%s) - start ))s" >>/tmp/bap-engine-python.log
) &
beside_pid=$!
set +m

step "go test -race ./... (the soak runs beside it)"
race_rc=0
go test -race -count=1 -timeout 40m -skip '^TestSoak$' ./... 2>&1 | tee /tmp/bap-engine-test.log || race_rc=$?

step "Go client module (client/): vet, tests and examples"
client_rc=0
(cd client && go vet ./... && go test -race -count=1 ./...) || client_rc=$?

step "waiting for the soak and the Python client's tests"
wait "$beside_pid" || true
beside_pid=""
echo "==> soak log"
cat /tmp/bap-engine-soak.log
echo "==> Python client's tests (clients/python/)"
cat /tmp/bap-engine-python.log
soak_rc=$(cat "$bin_dir/soak.rc" 2>/dev/null || echo "did not run")
python_rc=$(cat "$bin_dir/python.rc" 2>/dev/null || echo "did not run")
failed=""
[ "$race_rc" = 0 ] || failed="$failed race-suite($race_rc)"
[ "$client_rc" = 0 ] || failed="$failed go-client($client_rc)"
[ "$soak_rc" = 0 ] || failed="$failed soak($soak_rc)"
[ "$python_rc" = 0 ] || failed="$failed python($python_rc)"
if [ -n "$failed" ]; then
  echo "FAIL:$failed" >&2
  exit 1
fi

FUZZTIME=${FUZZTIME:-10s}
step "fuzz targets (${FUZZTIME} each)"
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "--- $pkg $target"
    go test -run='^$' -fuzz="^${target}\$" -fuzztime="$FUZZTIME" "$pkg"
  done
done

step "all tests passed in $(( $(date +%s) - start ))s"
