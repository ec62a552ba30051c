#!/usr/bin/env bash
# Start tritonserver on the qanchor model repository with the contract's ports (model image entrypoint).
#
#   qanchor-triton [extra tritonserver flags...]
#
# Model repository: $QANCHOR_TRITON_MODEL_REPOSITORY, else $QANCHOR_STATE_DIR/model_repository (docs/contracts.md),
# written by `python -m training.export`. Ports: $QANCHOR_PORT_BASE + 0 (HTTP), +1 (gRPC), +2 (metrics).
# Flags mirror the local stack (services/stack/triton.py), except that addresses bind all interfaces.
# exec: tritonserver replaces this shell, so it receives SIGTERM itself and drains before exiting.
set -euo pipefail
state_dir="${QANCHOR_STATE_DIR:-/var/lib/qanchor}"
repo="${QANCHOR_TRITON_MODEL_REPOSITORY:-$state_dir/model_repository}"
backends="${QANCHOR_TRITON_BACKEND_DIR:-/opt/tritonserver/backends}"
base="${QANCHOR_PORT_BASE:-19000}"
if ! compgen -G "$repo/*/config.pbtxt" >/dev/null; then
  echo "event=triton_no_models repository=$repo hint='run python -m training.export first (compose: the model-export service; helm: the model-export init container)'" >&2
  exit 1
fi
# explicit + --load-model='*': clients may load/unload at run time, and a restart comes back with every model.
# Pinned host memory speeds GPU copies; CPU pods set QANCHOR_TRITON_PINNED_MEMORY_BYTES=0 and save ~256 MB.
echo "event=triton_start repository=$repo http=$((base)) grpc=$((base + 1)) metrics=$((base + 2))" >&2
# Idle OpenMP threads must sleep, not spin: spinning threads starve the other models on a shared CPU.
# (QANCHOR_CPU_WAIT=spin, for dedicated cores, is applied by each model's model.py: training/export/cpu_wait.py.)
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec tritonserver \
  --model-repository="$repo" \
  --backend-directory="$backends" \
  --http-port="$((base))" --grpc-port="$((base + 1))" --metrics-port="$((base + 2))" \
  --model-control-mode=explicit --load-model='*' \
  --exit-timeout-secs="${QANCHOR_TRITON_EXIT_TIMEOUT_S:-10}" \
  --pinned-memory-pool-byte-size="${QANCHOR_TRITON_PINNED_MEMORY_BYTES:-268435456}" \
  "$@"
