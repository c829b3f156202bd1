#!/usr/bin/env bash
# Builds a pinned Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-proxy, kubectl) from source through the Go module
# proxy, into a cache outside the repository. Idempotent; prints the bin dir.
# Nothing Kubernetes is ever committed: only this recipe's pins.
set -euo pipefail
K8S_VERSION=${K8S_VERSION:-v1.33.13}
ETCD_VERSION=${ETCD_VERSION:-v3.5.35}
CACHE=${KPRS_CACHE:-/var/cache/kube-proxy-rs}
BIN=$CACHE/k8s/$K8S_VERSION/bin
export PATH="$PATH:/usr/local/go/bin"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
mkdir -p "$BIN"
want=(etcd kube-apiserver kube-controller-manager kube-proxy kubectl)
missing=0
for b in "${want[@]}"; do [ -x "$BIN/$b" ] || missing=1; done
if [ $missing = 0 ]; then echo "$BIN"; exit 0; fi
[ -n "${KPRS_CHECK_ONLY:-}" ] && exit 1
# Go >= 1.24 (Kubernetes 1.33's go.mod). Debian 12 ships 1.19; on a fresh
# machine bookworm-backports brings 1.23, which fetches the pinned 1.24
# toolchain from the Go module proxy (golang.org/toolchain) on first use.
GO_TOOLCHAIN=${GO_TOOLCHAIN:-go1.24.11}
go_ok() { "$1" version 2>/dev/null | grep -qE 'go1\.(2[4-9]|[3-9][0-9])'; }
if ! command -v go >/dev/null || ! go_ok go; then
  if [ ! -x /usr/lib/go-1.23/bin/go ]; then
    echo "build.sh: installing Go 1.23 from bookworm-backports (toolchain $GO_TOOLCHAIN via the module proxy)" >&2
    echo "deb http://deb.debian.org/debian bookworm-backports main" > /etc/apt/sources.list.d/kprs-backports.list
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports golang-1.23-go >/dev/null
  fi
  export PATH="/usr/lib/go-1.23/bin:$PATH" GOTOOLCHAIN=$GO_TOOLCHAIN
  go_ok go || { echo "build.sh: no Go >= 1.24 (tried $GO_TOOLCHAIN through Go 1.23)" >&2; exit 1; }
fi
command -v openssl >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; }

work=$CACHE/k8s/$K8S_VERSION/src
mkdir -p "$work"
staging_v=v0.${K8S_VERSION#v1.}
# k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with
# ./staging, which does not apply to a dependent: pin each to its release.
staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go
  cloud-provider cluster-bootstrap code-generator component-base component-helpers
  controller-manager cri-api cri-client csi-translation-lib dynamic-resource-allocation
  endpointslice externaljwt kms kube-aggregator kube-controller-manager kube-proxy
  kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission
  sample-apiserver sample-cli-plugin sample-controller)
if [ ! -f "$work/go.mod" ]; then
  (
    cd "$work"
    printf 'module kprs.local/k8sbuild\n\ngo 1.24\n\nrequire k8s.io/kubernetes %s\n\n' "$K8S_VERSION" > go.mod
    for m in "${staging[@]}"; do
      printf 'replace k8s.io/%s => k8s.io/%s %s\n' "$m" "$m" "$staging_v" >> go.mod
    done
    printf 'package main\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver/app"\nfunc main() {}\n' > tools.go
  )
fi
cd "$work"
build() { # build <out> <package>
  [ -x "$BIN/$1" ] && return 0
  echo "build.sh: building $1 ($2)" >&2
  nice go build -trimpath -ldflags=-s -o "$BIN/$1" "$2"
}
go mod tidy >/dev/null 2>&1 || true
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build kube-proxy k8s.io/kubernetes/cmd/kube-proxy
build kubectl k8s.io/kubernetes/cmd/kubectl

etcd_work=$CACHE/etcd/$ETCD_VERSION/src
if [ ! -x "$BIN/etcd" ]; then
  mkdir -p "$etcd_work"
  (
    cd "$etcd_work"
    [ -f go.mod ] || printf 'module kprs.local/etcdbuild\n\ngo 1.23\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > go.mod
    go mod tidy >/dev/null 2>&1 || true
    echo "build.sh: building etcd" >&2
    nice go build -trimpath -ldflags=-s -o "$BIN/etcd" go.etcd.io/etcd/server/v3
  )
fi
echo "$K8S_VERSION" > "$BIN/VERSION"
echo "$BIN"
