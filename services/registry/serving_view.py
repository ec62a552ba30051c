"""The registry's serving view of a scenario: what the gateway needs to route and serve it, built once from the
registry's protobuf (`RegistryClient.serving_info`) and read as is by A/B routing and the gateway's core.

Transport-free (plain frozen dataclasses), so routing and its tests need no registry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from services.common.proto.qanchor.v1 import registry_pb2 as pb

# How the zero-shot kind (the query text alone, no tuned prompt) is written outside the registry: a prompt's
# `kind`, an A/B arm's `prompt_version`, and the `prompt_version` every response carries.
ZERO_SHOT = "zero-shot"
TUNED = "tuned"

PromptKindLabel = Literal["zero-shot", "tuned"]
PromptStatusLabel = Literal["READY", "ACTIVE", "RETIRED", "UNSPECIFIED"]


@dataclass(frozen=True)
class PromptInfo:
    version: int
    kind: PromptKindLabel
    status: PromptStatusLabel
    model_version: str = ""  # the model a tuned prompt was trained for; "" = any
    artifact_uri: str = ""
    sha256: str = ""

    @property
    def servable(self) -> bool:
        return self.status in ("READY", "ACTIVE")

    @property
    def label(self) -> str:
        """What responses carry in `prompt_version`: 'zero-shot' or 'v<N>'."""
        return ZERO_SHOT if self.kind == ZERO_SHOT else f"v{self.version}"


@dataclass(frozen=True)
class ScenarioInfo:
    name: str
    query_text: str
    active_version: int
    versions: dict[int, PromptInfo] = field(default_factory=dict)

    @property
    def active(self) -> PromptInfo | None:
        return self.versions.get(self.active_version)

    @property
    def zero_shot(self) -> PromptInfo | None:
        servable = [p for p in self.versions.values() if p.kind == ZERO_SHOT and p.servable]
        return min(servable, key=lambda p: p.version) if servable else None


def scenario_from_proto(s: pb.Scenario) -> ScenarioInfo:
    """The serving view of a registry Scenario: servable (ACTIVE and READY) versions only; RETIRED never serve."""
    servable = (pb.PROMPT_STATUS_ACTIVE, pb.PROMPT_STATUS_READY)
    versions = {
        v.version: PromptInfo(
            version=v.version,
            kind=ZERO_SHOT if v.kind == pb.PROMPT_KIND_ZERO_SHOT else TUNED,
            status="ACTIVE" if v.version == s.active_version else "READY",
            model_version=v.model_version, artifact_uri=v.artifact_uri, sha256=v.sha256,
        )
        for v in s.versions if v.status in servable
    }
    return ScenarioInfo(s.name, s.query_text, s.active_version, versions)
