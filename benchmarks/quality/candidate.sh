#!/usr/bin/env bash
# Every table a candidate model is judged by, on the users and protocol of the default's (docs/quality.md): the
# visible ten with the prompt-tuned row, the eight unseen scenarios (zero-shot only) and the label budgets.
#
#   benchmarks/quality/candidate.sh runs/own-full/checkpoint own_full
#       # -> benchmarks/results/quality_own_full.*, quality_unseen_own_full.*, quality_budget_own_full.*
#   TUNE_STEPS=0 benchmarks/quality/candidate.sh CKPT NAME               # skip the tuned row (~40 min less on 2 cores)
#   TUNE_OBJECTIVE=probe benchmarks/quality/candidate.sh CKPT NAME       # tune against the probe-started head
#
# ~1 h on 2 CPU cores with tuning (prefixes ~3 min, tuning ~4 min per scenario, the rest embedding passes and
# probes); the embeddings land in var/embcache, so a rerun of one table takes minutes.
# Env: TUNE_STEPS (200), TUNE_OBJECTIVE (prototype | probe), THREADS (torch threads, default: all cores),
# EMBED_CACHE (var/embcache).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
if [ $# -ne 2 ]; then
  echo "usage: $0 CHECKPOINT_DIR NAME   (tables go to benchmarks/results/quality*_NAME.*)" >&2; exit 2
fi
CKPT="$1" NAME="$2"
if [ ! -f "$CKPT/manifest.json" ]; then
  echo "$CKPT is not a checkpoint directory (no manifest.json): train it first (scripts/train_default.sh)" >&2; exit 2
fi
THREADS="${THREADS:-$(nproc)}"
# shellcheck source=scripts/model_job_env.sh
. "$ROOT/scripts/model_job_env.sh"
TUNE_STEPS="${TUNE_STEPS:-200}"
TUNE_OBJECTIVE="${TUNE_OBJECTIVE:-prototype}"
RES="$ROOT/benchmarks/results"
users=(--dataset ml-1m --checkpoint "$CKPT" --train-users 1000 --val-users 300 --eval-users 625
       --embed-cache "${EMBED_CACHE:-$STATE/embcache}" --tune-objective "$TUNE_OBJECTIVE")
baselines=("bag_of_items+genres (LR)" "tabular stats (LR)" "mean MiniLM of event texts" "dense user vector (LR)")
model=("Q-Anchor static query" "Q-Anchor zero-shot")
tuned=()
if [ "$TUNE_STEPS" -gt 0 ]; then tuned=("Q-Anchor prompt-tuned"); fi
selected=()  # the visible table only: per scenario the tuned prompt where its val probe beats the query's
if [ "$TUNE_STEPS" -gt 0 ]; then selected=("Q-Anchor prompt-tuned where val improves"); fi
log() { printf '[candidate] %s\n' "$*" >&2; }

log "visible ten: $CKPT tune_steps=$TUNE_STEPS tune_objective=$TUNE_OBJECTIVE"
nice -n 10 "$PY" benchmarks/quality/run.py "${users[@]}" --tune-steps "$TUNE_STEPS" --draws 1000 \
  --rows "${baselines[@]}" "${model[@]}" "${tuned[@]}" "${selected[@]}" --out "$RES/quality_$NAME"
log "unseen eight"
nice -n 10 "$PY" benchmarks/quality/run.py "${users[@]}" --tune-steps 0 --draws 1000 --no-same-question \
  --scenarios benchmarks/quality/scenarios_unseen.yaml --rows "${baselines[@]}" "${model[@]}" \
  --out "$RES/quality_unseen_$NAME"
log "label budgets"
nice -n 10 "$PY" benchmarks/quality/label_budget.py "${users[@]}" --tune-steps "$TUNE_STEPS" \
  --budgets 25 50 100 200 400 1000 --repeats 10 --rows "${model[@]}" "${tuned[@]}" "${baselines[@]}" \
  --out "$RES/quality_budget_$NAME"
log "done: $RES/quality_$NAME.md, quality_unseen_$NAME.md, quality_budget_$NAME.md"
