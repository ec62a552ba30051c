"""The registry as the gateway's `ScenarioLookup`: the registry client's cached serving view, None for unknown names.

The registry client caches answers for its TTL and serves a stale entry while the registry is unreachable, so
the registry is a control plane, not a reason to stop serving embeddings.
"""
from __future__ import annotations

from services.common.errors import NotFound
from services.registry.client import RegistryClient
from services.registry.serving_view import ScenarioInfo


class RegistryLookup:
    """Implements `services.gateway.ab_config.ScenarioLookup`; unknown scenarios are None, not errors."""

    def __init__(self, client: RegistryClient) -> None:
        self.client = client

    def get_scenario(self, name: str, timeout_s: float | None = None) -> ScenarioInfo | None:
        try:
            return self.client.serving_info(name, timeout_s=timeout_s)
        except NotFound:
            return None

    def close(self) -> None:
        self.client.close()
