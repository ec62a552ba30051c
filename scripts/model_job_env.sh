# Sourced by the CPU/GPU model jobs (scripts/train_default.sh, benchmarks/quality/ablations.sh): the model env's
# interpreter, offline model loading, thread settings and a manifest reader. Expects ROOT to be set.
# QANCHOR_MODEL_PYTHON: another interpreter with the model packages (a GPU host's own torch, say)
PY="${QANCHOR_MODEL_PYTHON:-$ROOT/.venv-model/bin/python}"
DEVICE="${DEVICE:-cpu}"
STATE="${QANCHOR_STATE_DIR:-$ROOT/var}"
THREADS="${THREADS:-1}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# PASSIVE: idle OpenMP workers sleep instead of spinning; on a busy 2-core machine spinning workers steal the
# core from the thread doing the work (benchmarks/serving/README.md measured ~10x on SmolLM2 inference)
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

manifest_step() {  # the step recorded in a checkpoint directory's manifest (extra.step), or -1
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["extra"]["step"])' "$1/manifest.json" \
    2>/dev/null || echo -1
}
