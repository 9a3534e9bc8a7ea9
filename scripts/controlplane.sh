#!/usr/bin/env bash
# Builds the real kube-apiserver and etcd that internal/kubetest starts for
# the tests, from the Go module proxy at the versions pinned in
# tools/controlplane/go.mod, into a cache outside the repo keyed by version:
#
#   ${BAP_CACHE_DIR:-$HOME/.cache/bap-engine}/controlplane/<version>/{kube-apiserver,etcd}
#
# A machine builds them once (kube-apiserver takes minutes); later runs find
# them and do nothing. Prints the directory on its last line, so
# `dir=$(scripts/controlplane.sh | tail -1)` works. internal/kubetest looks in
# the same place (or in BAP_KUBETEST_BIN_DIR when set).
set -euo pipefail
cd "$(dirname "$0")/../tools/controlplane"

# The version key: kubernetes' and etcd's versions as the tools module pins
# them, so bumping either one builds afresh into a new directory.
k8s_version=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
etcd_version=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
cache=${BAP_CACHE_DIR:-$HOME/.cache/bap-engine}
dir="$cache/controlplane/$k8s_version"
mkdir -p "$dir"

build() { # build NAME PACKAGE VERSION [LDFLAGS]
  local name=$1 pkg=$2 version=$3 ldflags="-s -w ${4:-}" stamp="$dir/$1.version"
  # The stamp records how the binary was built, so a change of recipe
  # rebuilds it.
  local recipe="$version $ldflags"
  if [ -x "$dir/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$recipe" ]; then
    echo "==> $name $version: cached in $dir" >&2
    return
  fi
  echo "==> $name $version: building (kube-apiserver takes several minutes on 2 cores)" >&2
  local start tmp
  start=$(date +%s)
  tmp="$dir/.$name.$$"
  # A build that dies halfway leaves no binary behind that looks complete.
  trap 'rm -f "$tmp"' EXIT
  CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$tmp" "$pkg"
  mv -f "$tmp" "$dir/$name"
  echo "$recipe" >"$stamp"
  trap - EXIT
  echo "==> $name $version: built in $(( $(date +%s) - start ))s ($(du -h "$dir/$name" | cut -f1))" >&2
}

build etcd go.etcd.io/etcd/server/v3 "$etcd_version"
# Kubernetes' own build stamps the version into the binary (the apiserver
# reports it at /version, which clients and helm's kubeVersion checks read).
minor=$(echo "$k8s_version" | cut -d. -f2)
vpkg=k8s.io/component-base/version
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$k8s_version" \
  "-X $vpkg.gitVersion=$k8s_version -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean"
echo "$dir"
