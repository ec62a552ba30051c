#!/usr/bin/env bash
# The run command (README "first command"): set everything up, then run the demo end to end.
#   scripts/run.sh                   # stack up (infra, models, services), replay MovieLens, embeddings, report
#   scripts/run.sh --users 50        # extra arguments go to `python -m services.demo` (--help lists them)
# The stack keeps running afterwards; stop it with `.venv/bin/qanchor stack down`.
# QANCHOR_STATE_DIR (default ./var) and QANCHOR_PORT_BASE (default 19000) place it (docs/contracts.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# Models and data come from installed packages only, never a hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
bash scripts/setup_env.sh
exec .venv/bin/python -m services.demo "$@"
