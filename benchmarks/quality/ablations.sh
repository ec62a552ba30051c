#!/usr/bin/env bash
# Training ablations (paper Table 3) on the CPU preset: pretrain the full recipe and three variants side by side at
# one step count, then write the quality table with one zero-shot row per variant.
#
#   benchmarks/quality/ablations.sh                   # 120 steps each, two runs at a time, then the table
#   STEPS=2000 DEVICE=cuda JOBS=1 benchmarks/quality/ablations.sh
#
# Variants (config overrides of preset smollm2-cpu):
#   full               the recipe as is (contrastive + NTP, hierarchical user/source tokens)
#   no contrastive     loss.contrastive_weight=0   (NTP only)
#   no NTP             loss.ntp_weight=0           (contrastive only)
#   no user+source     input.summary_tokens=false  (prefix holds event and tabular tokens only)
# Every variant sees the same batches (data order is a pure function of seed and step), so rows differ only by
# the ablated part. A finished run (checkpoint at STEPS) is reused; an interrupted one resumes. The full recipe at
# the default artifact's step count *is* the default artifact (scripts/train_default.sh runs the same command), so
# it is reused rather than trained again.
# Memory: one CPU run of the preset holds ~5 GB; keep JOBS x 5 GB (plus anything else running) under the machine's
# RAM, or the kernel kills a run (it resumes from its last 10-step checkpoint on the next invocation).
# Env: STEPS (120), DEVICE (cpu), JOBS (parallel pretrain runs, 2), THREADS (torch threads per run, 1),
#      RUNS (run directories, $QANCHOR_STATE_DIR/runs/ablation), OUT (table stem, benchmarks/results/quality_ablations),
#      QUALITY_ARGS (extra arguments for benchmarks/quality/run.py; default: the 100/40/100-user CPU probe).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/model_job_env.sh
. "$ROOT/scripts/model_job_env.sh"
STEPS="${STEPS:-120}"
JOBS="${JOBS:-2}"
RUNS="${RUNS:-$STATE/runs/ablation}"
OUT="${OUT:-$ROOT/benchmarks/results/quality_ablations}"
QUALITY_ARGS="${QUALITY_ARGS:---train-users 100 --val-users 40 --eval-users 100}"
log() { printf '[ablations] %s\n' "$*" >&2; }
[ -x "$PY" ] || { log "missing $PY: run scripts/setup_env.sh first"; exit 1; }

# name|label in the table|override ("" = none)
VARIANTS=(
  "full|full recipe|"
  "no_contrastive|no contrastive loss|loss.contrastive_weight=0"
  "no_ntp|no NTP loss|loss.ntp_weight=0"
  "no_summary_tokens|no user+source tokens|input.summary_tokens=false"
)

saved_step() { manifest_step "$1/checkpoint"; }  # a run directory's latest checkpoint
checkpoint_of() {  # variant name -> checkpoint directory of its finished run
  if [ "$1" = full ] && [ "$(manifest_step "$ROOT/artifacts/default")" = "$STEPS" ]; then
    echo "$ROOT/artifacts/default"
  else
    echo "$RUNS/$1/checkpoint"
  fi
}

pretrain() {  # name override
  local dir="$RUNS/$1" args=()
  [ -n "$2" ] && args+=(--set "$2")
  if [ -d "$dir/trainer" ] && [ "$(saved_step "$dir")" -gt 0 ]; then args+=(--resume); fi
  log "pretrain variant=$1 override=${2:-none} steps=$STEPS log=$dir.log"
  nice -n 10 "$PY" -m training.pretrain --config smollm2-cpu --dataset ml-1m --steps "$STEPS" --device "$DEVICE" \
    --out "$dir" --save-every 10 --eval-every 20 "${args[@]}" >>"$dir.log" 2>&1 \
    || { log "variant=$1 failed: see $dir.log"; return 1; }
  log "variant=$1 done step=$(saved_step "$dir")"
}

mkdir -p "$RUNS"
pids=()
for v in "${VARIANTS[@]}"; do
  IFS='|' read -r name label override <<<"$v"
  ckpt="$(checkpoint_of "$name")"
  if [ "$(manifest_step "$ckpt")" = "$STEPS" ]; then log "variant=$name reused ($ckpt)"; continue; fi
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  pretrain "$name" "$override" &
  pids+=($!)
done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=1; done
[ "$failed" = 0 ] || { log "a pretrain run failed; fix it and re-run (finished variants are reused)"; exit 1; }

ablation_args=()
for v in "${VARIANTS[@]}"; do
  IFS='|' read -r name label override <<<"$v"
  ablation_args+=(--ablation "$label @$STEPS steps=$(checkpoint_of "$name")")
done
# shellcheck disable=SC2086  # QUALITY_ARGS is a list of flags
# reference rows on the same users: two baselines and the full recipe's config with no pretraining at all
"$PY" benchmarks/quality/run.py --dataset ml-1m --checkpoint "$(checkpoint_of full)" \
  --rows "bag_of_items+genres (LR)" "mean MiniLM of event texts" "ablation: zero-shot, no pretraining" \
  --embed-cache "$STATE/quality-emb" $QUALITY_ARGS --device "$DEVICE" "${ablation_args[@]}" --out "$OUT"
