"""Adapter: the registry's cached serving view (`services.registry.client.RegistryClient.serving_info`) ->
the `ScenarioLookup` that routing and the core use.

The registry client caches answers for its TTL and serves a stale entry while the registry is unreachable, so
the registry is a control plane, not a reason to stop serving embeddings.
"""
from __future__ import annotations

from services.common.errors import NotFound
from services.common.proto.qanchor.v1 import registry_pb2
from services.gateway.routing import PromptInfo, ScenarioInfo
from services.registry.client import RegistryClient, ServingInfo


def scenario_from_serving(info: ServingInfo) -> ScenarioInfo:
    # serving_info lists only servable versions: the active one is ACTIVE, every other one READY.
    versions = {
        v.version: PromptInfo(
            version=v.version,
            kind="zero-shot" if v.kind == registry_pb2.PROMPT_KIND_ZERO_SHOT else "tuned",
            status="ACTIVE" if v.version == info.active_version else "READY",
            model_version=v.model_version, artifact_uri=v.artifact_uri, sha256=v.sha256,
        )
        for v in info.versions.values()
    }
    return ScenarioInfo(info.scenario, info.query_text, info.active_version, versions)


class RegistryLookup:
    """Implements `services.gateway.routing.ScenarioLookup`; unknown scenarios are None, not errors."""

    def __init__(self, client: RegistryClient) -> None:
        self.client = client

    def get_scenario(self, name: str) -> ScenarioInfo | None:
        try:
            return scenario_from_serving(self.client.serving_info(name))
        except NotFound:
            return None

    def close(self) -> None:
        self.client.close()
