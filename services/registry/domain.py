"""Transport-free records the repository returns (plain frozen dataclasses, never live ORM objects)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class PromptKind(str, enum.Enum):
    ZERO_SHOT = "ZERO_SHOT"  # the query text alone
    TUNED = "TUNED"          # query text + tuned soft-prompt tokens (artifact)


class PromptStatus(str, enum.Enum):
    READY = "READY"      # servable; the A/B config may route to it
    ACTIVE = "ACTIVE"    # the scenario's default version (exactly one per scenario)
    RETIRED = "RETIRED"  # kept for audit, never served


class JobState(str, enum.Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"  # by CancelTuningJob; the worker stops at its next progress step

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class ModelState(str, enum.Enum):
    REGISTERED = "REGISTERED"  # recorded; not in the model repository yet
    PUBLISHED = "PUBLISHED"    # in the model repository: servable, A/B arms may route to it
    PROMOTED = "PROMOTED"      # the default model version (at most one)
    RETIRED = "RETIRED"        # taken out of serving (qanchor model retire); kept on record


@dataclass(frozen=True)
class PromptVersionRecord:
    scenario: str
    version: int
    kind: PromptKind
    status: PromptStatus
    model_version: str
    artifact_uri: str
    sha256: str
    metrics: dict[str, float]
    created_at: datetime


@dataclass(frozen=True)
class ScenarioRecord:
    name: str
    query_text: str
    description: str
    active_version: int
    created_at: datetime
    versions: tuple[PromptVersionRecord, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class TuningJobRecord:
    job_id: str
    scenario: str
    state: JobState
    progress: float
    message: str
    labels_uri: str
    model_version: str
    params: dict[str, str]
    prompt_version: int | None
    metrics: dict[str, float]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ModelVersionRecord:
    model_version: str
    state: ModelState
    artifact_uri: str
    sha256: str  # of the artifact's manifest.json
    metrics: dict[str, float]
    source_id: str
    published_uri: str
    created_by: str
    created_at: datetime
    published_at: datetime | None
    promoted_at: datetime | None
