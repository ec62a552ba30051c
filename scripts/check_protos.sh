#!/usr/bin/env bash
# Fail if the committed stubs in services/common/proto differ from what scripts/gen_protos.sh produces now.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

"$REPO_ROOT/scripts/gen_protos.sh" "$TMP" >/dev/null
if ! diff -r -x __pycache__ "$TMP/services/common/proto" "$REPO_ROOT/services/common/proto"; then
  echo "check_protos: generated stubs are stale; run scripts/gen_protos.sh and commit services/common/proto" >&2
  exit 1
fi
echo "check_protos: stubs up to date"
