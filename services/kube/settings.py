"""Settings of the Kubernetes job backend (env prefix QANCHOR_KUBE_), shared by the tuning worker and the CLI.

Dict and list values are JSON in the environment, e.g.
    QANCHOR_KUBE_NODE_SELECTOR='{"nvidia.com/gpu.present": "true"}'
    QANCHOR_KUBE_TOLERATIONS='[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]'
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings

_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


class KubeJobSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="QANCHOR_KUBE_", extra="ignore", frozen=True)

    # kubeconfig file; None = in-cluster credentials when running in a pod (the mounted ServiceAccount token),
    # else $KUBECONFIG / ~/.kube/config, else the local stack's $QANCHOR_STATE_DIR/kube/kubeconfig.
    kubeconfig: Path | None = None
    # kubeconfig context; None = its current context.
    context: str | None = None
    # Namespace of the Jobs; None = the pod's own namespace in-cluster, else the context's, else "default".
    namespace: str | None = None
    # Image of the Job containers: the model image (torch, training, the tuning code).
    image: str = "qanchor-model:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    # ServiceAccount of the Job pods; they never call the API, so their token is never mounted.
    service_account: str = ""
    # Extended resource name of a GPU, and GPUs per pod (0 = CPU-only pods).
    gpu_resource: str = "nvidia.com/gpu"
    gpus: int = 1
    # CPU and memory requests per pod (memory is also the limit: a node must never swap a training run).
    cpu: str = "4"
    memory: str = "16Gi"
    # Where GPU pods may run: node labels, and the taints they tolerate.
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    # Seconds a finished Job (and its pods' logs) stays before the TTL controller deletes it.
    ttl_seconds_after_finished: int = 3600
    # Pod retries before the Job fails (a deterministic error fails fast; node drains are ignored anyway).
    backoff_limit: int = 0
    # PersistentVolumeClaim mounted at artifacts_mount in every Job pod ("" = none: local experiments only).
    artifacts_claim: str = ""
    # Path of the artifacts volume inside the pods, and the same volume's path where the backend runs (the
    # worker verifies the sha256 of what the pod wrote); equal in-cluster, differ only outside a cluster.
    artifacts_mount: Path = Path("/var/lib/qanchor/artifacts")
    local_artifacts_dir: Path | None = None
    # The platform's event log (docs/eventlog.md): a PersistentVolumeClaim mounted read-only at event_log_mount in
    # every Job pod, with QANCHOR_EVENT_LOG_DIR pointing there, so `qanchor train submit ... -- --dataset offline`
    # reads it ("" = not mounted). The claim must allow several pods (ReadWriteMany / ReadOnlyMany): its writer, the
    # eventlog pod, keeps it mounted.
    event_log_claim: str = ""
    event_log_mount: Path = Path("/var/lib/qanchor/eventlog")
    # Triton's model repository as the tuning pods see it (a published copy on the artifacts volume).
    model_repository: Path = Path("/var/lib/qanchor/artifacts/model_repository")
    # Extra environment of every Job container.
    env: dict[str, str] = Field(default_factory=dict)
    # PriorityClass of the Job pods ("" = the cluster default).
    priority_class: str = ""
    # Port of the torchrun c10d rendezvous on pod index 0 (multi-node pretraining).
    rendezvous_port: int = 29500
    # Seconds between state checks while watching a Job (cancellation and time limits are checked as often).
    poll_s: float = 5.0

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, v: str) -> str:
        if not _QUANTITY.match(v):
            raise ValueError(f"{v!r} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")
        return v

    @field_validator("gpus", "backoff_limit", "ttl_seconds_after_finished")
    @classmethod
    def _non_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be >= 0")
        return v

    @field_validator("node_selector")
    @classmethod
    def _selector(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not _LABEL_KEY.match(k)]
        if bad:
            raise ValueError(f"node selector keys {bad} are not label keys (prefix/name)")
        return v

    @field_validator("tolerations")
    @classmethod
    def _tolerations(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        allowed = {"key", "operator", "value", "effect", "tolerationSeconds"}
        for t in v:
            extra = set(t) - allowed
            if extra:
                raise ValueError(f"toleration {t} has unknown fields {sorted(extra)}; allowed: {sorted(allowed)}")
            if t.get("operator", "Equal") not in ("Equal", "Exists"):
                raise ValueError(f"toleration {t}: operator must be Equal or Exists")
        return v

    def resolved_local_artifacts_dir(self) -> Path:
        return Path(self.local_artifacts_dir or self.artifacts_mount)

    def to_pod_path(self, local: Path) -> Path:
        """A path under the local artifacts dir, as the pods see it on the artifacts volume."""
        return self.artifacts_mount / Path(local).resolve().relative_to(self.resolved_local_artifacts_dir().resolve())

    def to_local_path(self, pod_path: Path) -> Path:
        """A path the pods wrote on the artifacts volume, where this process sees it."""
        return self.resolved_local_artifacts_dir() / Path(pod_path).relative_to(self.artifacts_mount)
