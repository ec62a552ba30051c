"""Where CLI commands send their calls, and with which token (kubectl-style discovery of the local stack).

Explicit flags win, then `QANCHOR_*` environment variables, then the local stack of `QANCHOR_STATE_DIR`
(default `./var`): its addresses from `run/endpoints.json` (written by `qanchor stack up`; without it, the port
layout of `QANCHOR_PORT_BASE`) and its tokens from `run/tokens.json`. A discovered token is only sent to the local
stack's own address, never to a target named by a flag or variable.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.grpc_client import ClientTls
from services.common.settings import ServiceSettings
from services.stack.settings import StateLayout



class CliSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="QANCHOR_", extra="ignore", frozen=True)

    # host:port of the gateway; None = the local stack's.
    gateway_target: str | None = None
    # Bearer token of the gateway (GATEWAY_TOKEN on the server side); None = the local stack's client token.
    gateway_token: SecretStr | None = None
    # Per-call deadline of `qanchor embed`, seconds.
    gateway_timeout_s: float = 5.0
    # host:port of the registry; None = the local stack's.
    registry_target: str | None = None
    # Bearer token of the registry (the admin token for register/promote/tune); None = the local stack's admin token.
    registry_token: SecretStr | None = None
    # Per-RPC deadline of registry commands, seconds.
    registry_timeout_s: float = 10.0
    # Kafka bootstrap servers; None = the local stack's broker.
    kafka_bootstrap: str | None = None
    # TLS to the gateway and the registry: the CA bundle to trust (set it to use TLS), and a client certificate
    # for servers that require one (mutual TLS).
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    def tls(self) -> ClientTls | None:
        if self.tls_ca_file is None and self.tls_cert_file is None:
            return None
        return ClientTls(self.tls_ca_file, self.tls_cert_file, self.tls_key_file)


@dataclass(frozen=True)
class Target:
    address: str
    token: str | None
    # Where the address came from: "flag", "env" or "local stack" (error messages say what to change).
    source: str


@dataclass(frozen=True)
class LocalStack:
    """The addresses and tokens of the local stack under `state_dir`, as far as it has written them."""

    state_dir: Path
    gateway: str
    registry: str
    kafka: str
    client_token: str | None
    admin_token: str | None

    @classmethod
    def discover(cls, settings: CliSettings) -> "LocalStack":
        layout = StateLayout(Path(settings.state_dir))
        recorded = _read_json(layout.endpoints_file)
        # An explicit QANCHOR_PORT_BASE names the stack; the recorded endpoints speak for one started without it.
        if recorded and "QANCHOR_PORT_BASE" not in os.environ:
            gateway, registry, kafka = recorded.get("gateway"), recorded.get("registry"), recorded.get("kafka")
        else:
            gateway = registry = kafka = None
        tokens = _read_json(layout.tokens_file) or {}
        return cls(
            state_dir=Path(settings.state_dir),
            gateway=gateway or f"127.0.0.1:{settings.port('gateway_grpc')}",
            registry=registry or f"127.0.0.1:{settings.port('registry_grpc')}",
            kafka=kafka or f"127.0.0.1:{settings.port('kafka')}",
            client_token=tokens.get("client"),
            admin_token=tokens.get("admin"),
        )


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _resolve(flag_address: str | None, env_address: str | None, local_address: str, flag_token: str | None,
             env_token: str | None, local_token: str | None) -> Target:
    source = "flag" if flag_address else "env" if env_address else "local stack"
    address = flag_address or env_address or local_address
    token = flag_token or env_token
    if token is None and address == local_address:
        token = local_token
    return Target(address, token, source)


def gateway_target(args: argparse.Namespace, settings: CliSettings | None = None) -> Target:
    settings = settings or CliSettings()
    local = LocalStack.discover(settings)
    return _resolve(getattr(args, "gateway", None), settings.gateway_target, local.gateway,
                    getattr(args, "token", None), _secret(settings.gateway_token), local.client_token)


def registry_target(args: argparse.Namespace, settings: CliSettings | None = None) -> Target:
    settings = settings or CliSettings()
    local = LocalStack.discover(settings)
    # The admin token also authorises reads, so one token serves every registry command.
    return _resolve(getattr(args, "registry", None), settings.registry_target, local.registry,
                    getattr(args, "token", None), _secret(settings.registry_token), local.admin_token)


def kafka_bootstrap(args: argparse.Namespace, settings: CliSettings | None = None) -> str:
    settings = settings or CliSettings()
    return getattr(args, "bootstrap", None) or settings.kafka_bootstrap or LocalStack.discover(settings).kafka
