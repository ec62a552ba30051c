"""How CLI commands find and authenticate to the registry (shared by scenario commands)."""
from __future__ import annotations

import argparse

from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings
from services.registry.client import RegistryClient


class CliRegistrySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="QANCHOR_", extra="ignore", frozen=True)

    # host:port of the registry; None = 127.0.0.1 at QANCHOR_PORT_BASE + registry offset.
    registry_target: str | None = None
    # Bearer token sent to the registry (the admin token for register/promote/tune).
    registry_token: str | None = None
    # Per-RPC deadline.
    registry_timeout_s: float = 10.0


def add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", help="registry host:port (env QANCHOR_REGISTRY_TARGET; default: local stack)")
    p.add_argument("--token", help="bearer token (env QANCHOR_REGISTRY_TOKEN); admin token for writes")


def client_from_args(args: argparse.Namespace) -> RegistryClient:
    settings = CliRegistrySettings()
    target = args.registry or settings.registry_target or f"127.0.0.1:{settings.port('registry_grpc')}"
    return RegistryClient(target, token=args.token or settings.registry_token, timeout_s=settings.registry_timeout_s)
