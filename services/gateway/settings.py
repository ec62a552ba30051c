"""Gateway settings (env prefix GATEWAY_), built once in `__main__` and passed down."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from services.common.grpc_client import ClientTls
from services.common.settings import GrpcServerSettings, repo_root


class GatewaySettings(GrpcServerSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    GRPC_PORT_NAME: ClassVar[str] = "gateway_grpc"

    # The A/B routing file (docs/ab.md); in Kubernetes a mounted ConfigMap, reloaded without a restart.
    ab_config: Path = Field(default_factory=lambda: repo_root() / "config" / "ab.yaml")
    # Seconds between checks of ab_config for changes.
    ab_poll_s: float = 5.0
    # How often health re-checks that the model server has the model loaded; while it has not, the
    # qanchor.v1.EmbeddingService health status is NOT_SERVING (the overall "" status stays SERVING: liveness).
    readiness_interval_s: float = 5.0
    # gc.freeze() after startup: full collections stop rescanning Feast's/pandas' startup objects. Common practice
    # for latency-sensitive Python servers; no measurable difference at 100 req/s on 2 cores (BENCHMARKS.md).
    gc_freeze: bool = True
    # Triton gRPC endpoint host:port, comma-separated for several replicas; None = 127.0.0.1:<QANCHOR_PORT_BASE + 1>.
    triton_url: str | None = None
    # "static": the addresses in triton_url; "dns": each is a name (a headless Service) re-resolved to all of its
    # addresses every triton_dns_refresh_s, so Triton replicas joining or leaving are picked up.
    triton_discovery: Literal["static", "dns"] = "static"
    triton_dns_refresh_s: float = 10.0
    # "affinity": each user's calls go to one replica (consistent hashing with bounded load), so its prefix-KV LRU
    # hits; "round_robin" ignores the user (every replica then has to cache every user; for comparison).
    triton_routing: Literal["affinity", "round_robin"] = "affinity"
    # Bounded load: a replica holding more than this multiple of the mean in-flight calls takes no new ones.
    triton_load_factor: float = 1.25
    # Seconds a replica that answered UNAVAILABLE is skipped (its calls fail over to the user's next replica).
    triton_retry_cooldown_s: float = 2.0
    # Name of the model in Triton's repository.
    triton_model: str = "qanchor"
    # Registry gRPC endpoint host:port; None = 127.0.0.1:<QANCHOR_PORT_BASE + 52>.
    registry_target: str | None = None
    # Bearer token for the registry's read RPCs (None = registry is open).
    registry_token: SecretStr | None = None
    # Seconds a scenario lookup is cached: how long a newly promoted prompt takes to reach traffic.
    registry_cache_ttl_s: float = 5.0
    # Seconds an unknown scenario name is remembered (one registry call per name, not per request); a scenario
    # registered elsewhere serves within this long.
    registry_negative_ttl_s: float = 1.0
    # Longest single registry call; a call also never outlives the caller's remaining deadline.
    registry_timeout_s: float = 1.0
    # TLS to the registry: CA bundle to trust (set it to use TLS), and this gateway's certificate for mutual TLS.
    registry_tls_ca_file: Path | None = None
    registry_tls_cert_file: Path | None = None
    registry_tls_key_file: Path | None = None
    # feature_store.yaml or a state dir holding feast/feature_store.yaml; None = QANCHOR_STATE_DIR.
    feast_location: Path | None = None
    # Model versions A/B arms may name; empty = ask the model (config.pbtxt parameter "model_versions") and the
    # registry (versions published with `qanchor model publish`).
    model_versions: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Seconds the registry's published / promoted model versions are cached: how long a newly published version
    # takes to become a valid A/B target, and a promoted one the default model version (docs/models.md).
    models_refresh_s: float = 5.0
    # Request size limits (INVALID_ARGUMENT above them).
    max_batch_items: int = 256
    max_scenarios: int = 64
    # Budget of a call that carries no gRPC deadline (grpcurl and most client libraries send none by default).
    default_timeout_s: float = 2.0
    # Kept back from the caller's deadline to build and send the reply.
    deadline_margin_s: float = 0.005

    @field_validator("model_versions", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        # GATEWAY_MODEL_VERSIONS=m1,m2 (a comma list reads better in a Helm value than JSON)
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v

    def resolved_triton_url(self) -> str:
        return self.triton_url or f"127.0.0.1:{self.port('triton_grpc')}"

    def registry_tls(self) -> ClientTls | None:
        if self.registry_tls_ca_file is None and self.registry_tls_cert_file is None:
            return None
        return ClientTls(self.registry_tls_ca_file, self.registry_tls_cert_file, self.registry_tls_key_file)

    def resolved_registry_target(self) -> str:
        return self.registry_target or f"127.0.0.1:{self.port('registry_grpc')}"

    def resolved_metrics_port(self) -> int:
        return self.metrics_port if self.metrics_port is not None else self.port("gateway_metrics")
