#!/usr/bin/env bash
# The test command (README "second command"; .ci/run calls exactly this).
# Sets up both environments (reused from the cache when lock files are unchanged), checks generated stubs,
# runs unit tests in both environments, then integration tests against the real local stack
# (Kafka, Redis, Triton, Feast, registry DB), which the test session starts and stops itself.
# Extra arguments go to every pytest run (e.g. -x, -k name). Slow and GPU tests are excluded by default:
#   QANCHOR_TEST_MARKERS="slow" scripts/test.sh     # run only the slow ones
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
MARKERS="${QANCHOR_TEST_MARKERS:-not slow and not gpu}"
start=$(date +%s)
log() { printf '[test] %s\n' "$*" >&2; }

bash scripts/setup_env.sh
log "setup done in $(( $(date +%s) - start ))s"

if [ -x scripts/check_protos.sh ]; then bash scripts/check_protos.sh; fi
if [ -x scripts/helm_lint.sh ]; then bash scripts/helm_lint.sh --ensure-helm; fi
# grpcurl (built once from the Go module proxy) for the no-deadline test; without Go that test says so and skips.
if [ -z "${QANCHOR_GRPCURL:-}" ] && command -v go >/dev/null 2>&1; then
  QANCHOR_GRPCURL="$(bash scripts/ensure_grpcurl.sh)" && export QANCHOR_GRPCURL || log "grpcurl could not be built"
fi
# kube-apiserver + etcd for the Kubernetes job-backend tests, built once from the Go module proxy (minutes) and
# cached in $QANCHOR_CACHE_DIR/bin like helm; later runs reuse them.
if [ -x scripts/kube_build.sh ]; then
  bash scripts/kube_build.sh >/dev/null || log "kube-apiserver/etcd could not be built (see above); the Kubernetes job-backend tests will try again and report it"
fi

status=0
run() {  # run LABEL PYTHON ARGS...
  local label="$1"; shift
  log "== $label =="
  set +e
  "$@"
  local rc=$?
  set -e
  # pytest exit 5 = nothing collected for this environment: not a failure.
  if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then status=$rc; log "$label FAILED (exit $rc)"; fi
}
REPORTS="$(mktemp -d)"
run "unit tests, model env"    .venv-model/bin/python -m pytest tests/unit -m "$MARKERS" -p no:cacheprovider --junitxml="$REPORTS/unit-model.xml" "$@"
run "unit tests, services env" .venv/bin/python       -m pytest tests/unit -m "$MARKERS" -p no:cacheprovider --junitxml="$REPORTS/unit-services.xml" "$@"
run "integration tests (real stack)" .venv/bin/python -m pytest tests/integration -m "$MARKERS" -p no:cacheprovider --junitxml="$REPORTS/integration.xml" "$@"
log "total $(( $(date +%s) - start ))s, exit $status"
# One closing line over the three runs.
python3 - "$REPORTS" <<'PY'
import sys, pathlib, xml.etree.ElementTree as ET
t = dict(tests=0, failures=0, errors=0, skipped=0)
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.xml")):
    for s in ET.parse(f).getroot().iter("testsuite"):
        for k in t:
            t[k] += int(s.get(k, 0))
failed = t["failures"] + t["errors"]
print(f"qanchor: {t['tests'] - failed - t['skipped']} passed, {failed} failed, {t['skipped']} skipped")
PY
exit $status
