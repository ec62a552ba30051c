"""Python client of the registry, used by the CLI and the gateway.

Errors come back as services.common.errors exceptions (same classes the server raised). For the gateway's hot
path, `serving_info(name)` returns what it needs to route a request (query text, active version, READY versions)
from a short TTL cache, so a registry blip or a burst of requests does not turn into a registry round trip each.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from services.common.errors import DeadlineExceeded, NotFound, QAnchorError, Unavailable, error_for_code
from services.common.proto.qanchor.v1 import registry_pb2 as pb
from services.common.proto.qanchor.v1 import registry_pb2_grpc as pb_grpc

T = TypeVar("T")


@dataclass(frozen=True)
class ServingVersion:
    version: int
    kind: int            # registry_pb2.PromptKind value
    model_version: str   # "" = any model (zero-shot)
    artifact_uri: str
    sha256: str


@dataclass(frozen=True)
class ServingInfo:
    """What the gateway needs to serve a scenario: the anchor query and which prompt versions may serve."""

    scenario: str
    query_text: str
    active_version: int
    versions: Mapping[int, ServingVersion]  # ACTIVE and READY versions only (RETIRED never serve)
    fetched_at: float

    @property
    def active(self) -> ServingVersion:
        return self.versions[self.active_version]


def serving_info_from_proto(s: pb.Scenario, fetched_at: float) -> ServingInfo:
    servable = (pb.PROMPT_STATUS_ACTIVE, pb.PROMPT_STATUS_READY)
    versions = {v.version: ServingVersion(v.version, v.kind, v.model_version, v.artifact_uri, v.sha256)
                for v in s.versions if v.status in servable}
    return ServingInfo(s.name, s.query_text, s.active_version, versions, fetched_at)


class RegistryClient:
    def __init__(
        self, target: str, *, token: str | None = None, timeout_s: float = 5.0, cache_ttl_s: float = 5.0,
        max_stale_s: float = 300.0, channel: grpc.Channel | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self._channel = channel or grpc.insecure_channel(target)
        self._owns_channel = channel is None
        self.stub = pb_grpc.ScenarioRegistryStub(self._channel)
        self.token = token
        self.timeout_s = timeout_s
        self.cache_ttl_s = cache_ttl_s
        # How long an expired entry may still be served while the registry is unreachable.
        self.max_stale_s = max_stale_s
        self._clock = clock
        self._cache: dict[str, ServingInfo] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: Any, request_id: str | None = None) -> T:
        metadata = []
        if self.token:
            metadata.append(("authorization", f"Bearer {self.token}"))
        if request_id:
            metadata.append(("x-request-id", request_id))
        try:
            return method(request, metadata=metadata, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or str(exc.code())  # type: ignore[attr-defined]
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                details += f" (registry at {self.target}: is it running and reachable? retry with backoff)"
            err: QAnchorError = error_for_code(code, details)
            raise err from None

    # --- RPCs ----------------------------------------------------------------------------------------------

    def register_scenario(self, name: str, query_text: str, description: str = "") -> pb.Scenario:
        s = self._call(self.stub.RegisterScenario,
                       pb.RegisterScenarioRequest(name=name, query_text=query_text, description=description))
        self.invalidate(name)
        return s

    def get_scenario(self, name: str) -> pb.Scenario:
        return self._call(self.stub.GetScenario, pb.GetScenarioRequest(name=name))

    def list_scenarios(self, page_size: int = 0) -> list[pb.Scenario]:
        """Every scenario (follows page tokens)."""
        out: list[pb.Scenario] = []
        token = ""
        while True:
            resp = self._call(self.stub.ListScenarios, pb.ListScenariosRequest(page_size=page_size, page_token=token))
            out.extend(resp.scenarios)
            token = resp.next_page_token
            if not token:
                return out

    def list_prompt_versions(self, scenario: str) -> list[pb.PromptVersion]:
        return list(self._call(self.stub.ListPromptVersions, pb.ListPromptVersionsRequest(scenario=scenario)).versions)

    def promote(self, scenario: str, version: int) -> pb.PromptVersion:
        v = self._call(self.stub.PromotePromptVersion, pb.PromotePromptVersionRequest(scenario=scenario,
                                                                                    version=version))
        self.invalidate(scenario)
        return v

    def start_tuning_job(self, scenario: str, labels_uri: str, model_version: str = "",
                         params: Mapping[str, str] | None = None) -> pb.TuningJob:
        return self._call(self.stub.StartTuningJob, pb.StartTuningJobRequest(
            scenario=scenario, labels_uri=labels_uri, model_version=model_version, params=dict(params or {})))

    def get_tuning_job(self, job_id: str) -> pb.TuningJob:
        return self._call(self.stub.GetTuningJob, pb.GetTuningJobRequest(job_id=job_id))

    def list_tuning_jobs(self, scenario: str = "", states: Sequence[int] = (), limit: int = 0) -> list[pb.TuningJob]:
        """Jobs newest first (follows page tokens); `states` are registry_pb2.JobState values; limit 0 = all."""
        out: list[pb.TuningJob] = []
        token = ""
        while True:
            page_size = min(limit - len(out), 1000) if limit else 0
            resp = self._call(self.stub.ListTuningJobs, pb.ListTuningJobsRequest(
                scenario=scenario, states=list(states), page_size=page_size, page_token=token))
            out.extend(resp.jobs)
            token = resp.next_page_token
            if not token or (limit and len(out) >= limit):
                return out[:limit] if limit else out

    def cancel_tuning_job(self, job_id: str, reason: str = "") -> pb.TuningJob:
        return self._call(self.stub.CancelTuningJob, pb.CancelTuningJobRequest(job_id=job_id, reason=reason))

    # --- gateway view ----------------------------------------------------------------------------------------

    def serving_info(self, scenario: str) -> ServingInfo:
        """Cached for `cache_ttl_s`; NotFound is not cached (a just-registered scenario serves at once).

        If the registry is unreachable, an expired entry younger than `max_stale_s` is served instead of failing:
        routing on slightly old versions beats failing every embedding request.
        """
        now = self._clock()
        with self._lock:
            hit = self._cache.get(scenario)
        if hit is not None and now - hit.fetched_at < self.cache_ttl_s:
            return hit
        try:
            info = serving_info_from_proto(self.get_scenario(scenario), now)
        except (Unavailable, DeadlineExceeded):
            if hit is not None and now - hit.fetched_at < self.max_stale_s:
                return hit
            raise
        except NotFound:
            self.invalidate(scenario)
            raise
        with self._lock:
            self._cache[scenario] = info
        return info

    def invalidate(self, scenario: str | None = None) -> None:
        with self._lock:
            if scenario is None:
                self._cache.clear()
            else:
                self._cache.pop(scenario, None)
