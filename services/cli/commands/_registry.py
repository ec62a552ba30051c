"""What the registry commands (`qanchor scenario`, `qanchor model`) share: the client, its connection flags, enum
names without their prefix."""
from __future__ import annotations

import argparse
from typing import Any

from services.cli.output import add_json_flag
from services.cli.target import registry_target
from services.registry.client import RegistryClient


def registry_client(args: argparse.Namespace) -> RegistryClient:
    from services.cli.target import CliSettings

    settings = CliSettings()
    target = registry_target(args, settings)
    return RegistryClient(target.address, token=target.token, timeout_s=settings.registry_timeout_s,
                          tls=settings.tls())


def enum_name(value: int, enum: Any, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix)


def add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", help="registry host:port (env QANCHOR_REGISTRY_TARGET; default: the local stack)")
    p.add_argument("--token", help="bearer token (env QANCHOR_REGISTRY_TOKEN; default: the local stack's admin "
                                   "token from $QANCHOR_STATE_DIR/run/tokens.json)")
    add_json_flag(p)
