"""Settings shared by every service: state dir, port base, gRPC server knobs.

Each service subclasses `GrpcServerSettings` with its own env prefix (e.g. `REGISTRY_`) and builds it once in its
`__main__`. The state dir and port base are stack-wide, so they are read from the unprefixed `QANCHOR_*` variables
whatever the service's prefix (see docs/contracts.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Fixed offsets from QANCHOR_PORT_BASE (docs/contracts.md), so several stacks run side by side.
PORT_OFFSETS: dict[str, int] = {
    "triton_http": 0,
    "triton_grpc": 1,
    "triton_metrics": 2,
    "kube_apiserver": 43,  # optional Kubernetes control plane (services/stack/kube.py)
    "etcd": 44,
    "etcd_peer": 45,
    "gateway_grpc": 51,
    "registry_grpc": 52,
    "gateway_metrics": 60,
    "ingest_metrics": 61,
    "tuning_metrics": 62,
    "eventlog_metrics": 63,
    "redis": 79,
    "kafka": 92,
    "kafka_controller": 93,
}
DEFAULT_PORT_BASE = 19000


def repo_root() -> Path:
    # services/common/settings.py -> repo root; the editable install keeps this layout.
    return Path(__file__).resolve().parents[2]


def project_pythonpath() -> str:
    """PYTHONPATH for every Python process the project starts (services, Triton's Python backend, the exporter).

    The virtualenvs are cached outside the clone and shared by every checkout on the machine, and their editable
    install points at whichever checkout ran setup last; an explicit path makes each checkout run its own code.
    """
    return str(repo_root())


def port_for(name: str, port_base: int = DEFAULT_PORT_BASE) -> int:
    """Port of a stack component: `port_base + PORT_OFFSETS[name]`."""
    try:
        return port_base + PORT_OFFSETS[name]
    except KeyError:
        known = ", ".join(sorted(PORT_OFFSETS))
        raise ValueError(f"unknown port name {name!r}; known names: {known}") from None


class ServiceSettings(BaseSettings):
    """Base of every service's settings: stack-wide state dir, port base and log level."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # Where logs, databases and other runtime state live; shared by the whole local stack.
    state_dir: Path = Field(
        default_factory=lambda: repo_root() / "var",
        validation_alias=AliasChoices("QANCHOR_STATE_DIR"),
    )
    # Base of all ports; each component adds its fixed offset (PORT_OFFSETS).
    port_base: int = Field(default=DEFAULT_PORT_BASE, validation_alias=AliasChoices("QANCHOR_PORT_BASE"))
    # Python logging level name for this service.
    log_level: str = "INFO"

    def port(self, name: str) -> int:
        return port_for(name, self.port_base)


class GrpcServerSettings(ServiceSettings):
    """Knobs of a gRPC server built by `services.common.grpc_server.create_server`."""

    # Key into PORT_OFFSETS used when `grpc_port` is not set explicitly.
    GRPC_PORT_NAME: ClassVar[str] = ""

    # Interface to bind; use 0.0.0.0 inside containers.
    host: str = "127.0.0.1"
    # Explicit port (0 = pick a free one, for tests); None = port_base + offset of GRPC_PORT_NAME.
    grpc_port: int | None = None
    # Worker threads for RPCs (a few more are added for health checks and reflection).
    max_workers: int = 16
    # Calls in flight at once; one more is refused at once with RESOURCE_EXHAUSTED (retryable) rather than queued
    # behind a slow dependency. None = max_workers, 0 = no limit (extra calls queue in gRPC).
    max_concurrent_rpcs: int | None = None
    # Largest request/response accepted; a batch of 256 x 1024-d float embeddings is ~1 MiB.
    max_message_bytes: int = 16 * 1024 * 1024
    # Seconds in-flight RPCs get to finish after SIGTERM before they are cancelled.
    grace_seconds: float = 5.0
    # Bearer token for regular RPCs. Required: a server without one refuses to start unless allow_no_token is set.
    token: SecretStr | None = None
    # Development only: serve regular RPCs without a token (anyone who reaches the port may call them).
    allow_no_token: bool = False
    # Bearer token for admin RPCs; None = admin RPCs are refused (fail closed).
    admin_token: SecretStr | None = None
    # Prometheus /metrics HTTP port; None = not exported over HTTP.
    metrics_port: int | None = None
    # TLS: PEM certificate chain and private key of this server; both None = plaintext (the local stack).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Mutual TLS: PEM CA bundle that client certificates must chain to; None = clients need no certificate.
    tls_client_ca_file: Path | None = None

    def resolved_max_concurrent_rpcs(self) -> int:
        return self.max_workers if self.max_concurrent_rpcs is None else self.max_concurrent_rpcs

    def resolved_grpc_port(self) -> int:
        if self.grpc_port is not None:
            return self.grpc_port
        if not self.GRPC_PORT_NAME:
            raise ValueError(f"{type(self).__name__} sets neither grpc_port nor GRPC_PORT_NAME")
        return self.port(self.GRPC_PORT_NAME)
