#!/usr/bin/env bash
# Builds (once) the two Kubernetes control-plane binaries the job-backend tests run against: kube-apiserver
# and etcd, from source through the Go module proxy, into a cache outside the clone (like the Kafka JARs).
#
#   scripts/kube_build.sh             build or reuse both; print their paths (one per line)
#
# kube-apiserver: k8s.io/kubernetes is not meant to be required as a module (its go.mod points the staging
# modules at ./staging/...), so a scratch module replaces every k8s.io/<staging module> by its published
# v0.<minor>.<patch> tag and builds k8s.io/kubernetes/cmd/kube-apiserver (first build: several minutes,
# ~150 MB). etcd: the same trick for go.etcd.io/etcd/{api,client/pkg,client,pkg}/v3, then the server (~20 s).
# There is no kubelet and no controller-manager: Pods never run; tests drive status through the API.
#
# Environment:
#   QANCHOR_CACHE_DIR            cache root (default ~/.cache/qanchor); binaries go to $QANCHOR_CACHE_DIR/bin
#   QANCHOR_KUBE_VERSION         Kubernetes release (default v1.34.3)
#   QANCHOR_ETCD_VERSION         etcd release (default v3.6.5)
#   QANCHOR_KUBE_APISERVER       use this kube-apiserver binary instead of building one
#   QANCHOR_ETCD                 use this etcd binary instead of building one
set -euo pipefail
CACHE="${QANCHOR_CACHE_DIR:-$HOME/.cache/qanchor}"
KUBE_VERSION="${QANCHOR_KUBE_VERSION:-v1.34.3}"
ETCD_VERSION="${QANCHOR_ETCD_VERSION:-v3.6.5}"
APISERVER="${QANCHOR_KUBE_APISERVER:-$CACHE/bin/kube-apiserver-$KUBE_VERSION}"
ETCD="${QANCHOR_ETCD:-$CACHE/bin/etcd-$ETCD_VERSION}"
log() { printf 'event=%s\n' "$*" >&2; }

STAGING="api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api cri-client
csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator
kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission
sample-apiserver sample-cli-plugin sample-controller"

need_go() {
  command -v go >/dev/null 2>&1 && return
  log "go_missing hint='install Go >= 1.24 (https://go.dev/dl), or set QANCHOR_KUBE_APISERVER and QANCHOR_ETCD to prebuilt binaries'"
  exit 1
}

# build_module OUT PACKAGE MODULE@VERSION GO_MOD_REPLACES
build_module() {
  local out="$1" pkg="$2" req="$3" replaces="$4"
  local work start
  need_go
  mkdir -p "$CACHE/bin" "$CACHE/gobuild"
  work="$(mktemp -d "$CACHE/gobuild/$(basename "$out").XXXXXX")"
  trap 'rm -rf "$work"' RETURN
  start=$(date +%s)
  log "build_start binary=$(basename "$out") package=$pkg (first time: minutes; cached afterwards)"
  printf 'module qanchor.local/kubebuild\n\ngo 1.24\n\n%s\n' "$replaces" >"$work/go.mod"
  # GOFLAGS=-mod=mod: let go get write go.sum; the module cache is Go's own (GOMODCACHE), shared by builds.
  (cd "$work" && GOFLAGS=-mod=mod go get "$req" >/dev/null 2>"$work/get.log") \
    || { cat "$work/get.log" >&2; log "build_failed step=go_get module=$req"; exit 1; }
  (cd "$work" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$out.tmp" "$pkg") \
    || { log "build_failed step=go_build package=$pkg"; exit 1; }
  mv "$out.tmp" "$out"   # atomic: a concurrent run never sees half a file
  log "build_done binary=$out seconds=$(( $(date +%s) - start ))"
}

if [ -x "$ETCD" ]; then
  log "etcd_reuse path=$ETCD"
else
  reps="replace ("
  for m in api client/pkg client/v3 pkg; do
    case "$m" in
      client/v3) reps+=$'\n'"  go.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 $ETCD_VERSION" ;;
      *) reps+=$'\n'"  go.etcd.io/etcd/$m/v3 => go.etcd.io/etcd/$m/v3 $ETCD_VERSION" ;;
    esac
  done
  reps+=$'\n'")"
  build_module "$ETCD" go.etcd.io/etcd/server/v3 "go.etcd.io/etcd/server/v3@$ETCD_VERSION" "$reps"
fi

if [ -x "$APISERVER" ]; then
  log "kube_apiserver_reuse path=$APISERVER"
else
  staging_version="v0.${KUBE_VERSION#v1.}"
  reps="replace ("
  for m in $STAGING; do reps+=$'\n'"  k8s.io/$m => k8s.io/$m $staging_version"; done
  reps+=$'\n'")"
  build_module "$APISERVER" k8s.io/kubernetes/cmd/kube-apiserver "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION" "$reps"
fi
echo "$APISERVER"
echo "$ETCD"
