#!/usr/bin/env bash
# Offline validation of the deployment files: docker-compose.yml, the Helm chart (helm/qanchor) and the
# standalone Job manifests (helm/jobs).
#
#   scripts/helm_lint.sh                build or reuse the tools, then run every check (exit 0 = all good)
#   scripts/helm_lint.sh --ensure-helm  only build or reuse the tools (helm, compose-check); print helm's path
#
# Checks: compose-check (docker/compose-check: the compose-go loader behind `docker compose config`: schema,
# interpolation, references) on docker-compose.yml; `helm lint --strict` with the default and GPU values;
# `helm template` of each value set (plus the ServiceMonitor and Kubernetes-job-backend variants); every rendered
# manifest and helm/jobs/*.yaml validated with kubernetes-validate (--strict: unknown fields fail) per pinned
# Kubernetes version.
# No cluster and no Docker engine are needed. Neither tool is packaged for pip/apt here, so both are built with
# Go from the Go module proxy into a cache outside the clone, once, and reused afterwards.
#
# Environment:
#   QANCHOR_CACHE_DIR      cache root (default ~/.cache/qanchor); helm goes to $QANCHOR_CACHE_DIR/bin
#   QANCHOR_HELM_VERSION   helm release to build (default v3.22.0)
#   QANCHOR_HELM           use this helm binary instead of building one
#   QANCHOR_COMPOSE_CHECK  use this compose-check binary instead of building one
#   QANCHOR_KUBE_VERSIONS  Kubernetes versions to validate against (default "1.29.0 1.37.0": the chart's
#                          kubeVersion floor and the newest schema bundled with kubernetes-validate)
#   QANCHOR_HELM_OUT       keep rendered manifests in this directory (default: a temp dir, removed)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${QANCHOR_CACHE_DIR:-$HOME/.cache/qanchor}"
HELM_VERSION="${QANCHOR_HELM_VERSION:-v3.22.0}"
HELM="${QANCHOR_HELM:-$CACHE/bin/helm-$HELM_VERSION}"
KUBE_VERSIONS="${QANCHOR_KUBE_VERSIONS:-1.29.0 1.37.0}"
KVALIDATE="${QANCHOR_KUBERNETES_VALIDATE:-$ROOT/.venv/bin/kubernetes-validate}"
CHART="$ROOT/helm/qanchor"
log() { printf 'event=%s\n' "$*" >&2; }

build_helm() {
  if [ -x "$HELM" ]; then
    log "helm_reuse path=$HELM"
    return
  fi
  command -v go >/dev/null 2>&1 || {
    log "helm_missing path=$HELM hint='install Go (https://go.dev/dl) or set QANCHOR_HELM to a helm binary'"
    exit 1
  }
  mkdir -p "$CACHE/bin"
  local gobin start
  gobin="$(mktemp -d)"
  start=$(date +%s)
  log "helm_build version=$HELM_VERSION into=$HELM (first time: several minutes)"
  GOBIN="$gobin" GOFLAGS=-mod=mod go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$gobin/helm" "$HELM.tmp" && mv "$HELM.tmp" "$HELM"  # atomic: a concurrent run never sees half a file
  rmdir "$gobin"
  log "helm_built version=$HELM_VERSION seconds=$(( $(date +%s) - start ))"
}

# compose-check is keyed by the hash of its sources, so an edit rebuilds it and old binaries stay harmless.
COMPOSE_SRC="$ROOT/docker/compose-check"
COMPOSE_KEY="$(cat "$COMPOSE_SRC/go.mod" "$COMPOSE_SRC/go.sum" "$COMPOSE_SRC/main.go" | sha256sum | cut -c1-12)"
COMPOSE_CHECK="${QANCHOR_COMPOSE_CHECK:-$CACHE/bin/compose-check-$COMPOSE_KEY}"
build_compose_check() {
  if [ -x "$COMPOSE_CHECK" ]; then
    log "compose_check_reuse path=$COMPOSE_CHECK"
    return
  fi
  command -v go >/dev/null 2>&1 || { log "compose_check_missing hint='install Go or set QANCHOR_COMPOSE_CHECK'"; exit 1; }
  mkdir -p "$CACHE/bin"
  local start=$(date +%s)
  (cd "$COMPOSE_SRC" && go build -mod=readonly -trimpath -o "$COMPOSE_CHECK.tmp" .)
  mv "$COMPOSE_CHECK.tmp" "$COMPOSE_CHECK"
  log "compose_check_built path=$COMPOSE_CHECK seconds=$(( $(date +%s) - start ))"
}

build_helm
build_compose_check
if [ "${1:-}" = "--ensure-helm" ] || [ "${1:-}" = "--build-only" ]; then
  echo "$HELM"
  exit 0
fi
(cd "$ROOT" && "$COMPOSE_CHECK" -q docker-compose.yml) || { log "compose_check_failed file=docker-compose.yml"; exit 1; }
log "compose_check_ok file=docker-compose.yml"

[ -x "$KVALIDATE" ] || { log "kubernetes_validate_missing path=$KVALIDATE hint='run scripts/setup_env.sh services'"; exit 1; }

OUT="${QANCHOR_HELM_OUT:-}"
if [ -z "$OUT" ]; then
  OUT="$(mktemp -d)"
  trap 'rm -rf "$OUT"' EXIT
fi
mkdir -p "$OUT"
export HELM_CACHE_HOME="$OUT/.helm/cache" HELM_CONFIG_HOME="$OUT/.helm/config" HELM_DATA_HOME="$OUT/.helm/data"

floor="${KUBE_VERSIONS%% *}"
"$HELM" lint --strict "$CHART" --kube-version "$floor" >"$OUT/lint-default.log" 2>&1 \
  || { cat "$OUT/lint-default.log" >&2; log "helm_lint_failed values=default"; exit 1; }
"$HELM" lint --strict "$CHART" --kube-version "$floor" -f "$CHART/values-gpu.yaml" >"$OUT/lint-gpu.log" 2>&1 \
  || { cat "$OUT/lint-gpu.log" >&2; log "helm_lint_failed values=gpu"; exit 1; }
log "helm_lint_ok values=default,gpu"

render() {  # render NAME [helm template args...]
  local name="$1"; shift
  "$HELM" template qanchor "$CHART" --namespace qanchor --kube-version "$floor" "$@" >"$OUT/$name.yaml"
  log "helm_template_ok name=$name documents=$(grep -c '^kind:' "$OUT/$name.yaml")"
}
render default
render gpu -f "$CHART/values-gpu.yaml" --set jobs.tuning.enabled=true
# The Kubernetes job backend: the worker's ServiceAccount, Role and RoleBinding (RBAC), no GPU on the worker.
render jobs-kubernetes --set jobs.kubernetes.enabled=true
# ServiceMonitor and PrometheusRule are CRDs: validated for shape by the chart (and tests/unit/test_deploy_helm.py),
# and skipped by kubernetes-validate (no schema).
render servicemonitor --set serviceMonitor.enabled=true --set prometheusRule.enabled=true \
  --api-versions monitoring.coreos.com/v1

status=0
for kv in $KUBE_VERSIONS; do
  for f in "$OUT/default.yaml" "$OUT/gpu.yaml" "$OUT/jobs-kubernetes.yaml" "$OUT/servicemonitor.yaml" \
           "$ROOT"/helm/jobs/*.yaml; do
    if "$KVALIDATE" --strict --quiet -k "$kv" "$f" >"$OUT/validate.log" 2>&1; then
      log "kubernetes_validate_ok kube=$kv file=$(basename "$f")"
    else
      # Custom resources (ServiceMonitor, PrometheusRule) have no bundled schema: that warning alone is not a failure.
      if ! grep -v -E "^$|ServiceMonitor|PrometheusRule|monitoring.coreos.com" "$OUT/validate.log" | grep -q .; then
        log "kubernetes_validate_ok kube=$kv file=$(basename "$f") note=custom_resources_skipped"
      else
        cat "$OUT/validate.log" >&2
        log "kubernetes_validate_failed kube=$kv file=$(basename "$f")"
        status=1
      fi
    fi
  done
done
[ "$status" = 0 ] && log "helm_checks_ok kube_versions='$KUBE_VERSIONS'"
exit "$status"
