"""Python client of the registry, used by the CLI and the gateway.

Errors come back as services.common.errors exceptions (same classes the server raised). For the gateway's hot
path, `serving_info(name)` returns the serving view (`services.registry.serving_view.ScenarioInfo`: query text,
active version, servable versions) from a short TTL cache, so a registry blip or a burst of requests does not turn
into a registry round trip each.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from services.common.errors import DeadlineExceeded, NotFound, Unavailable
from services.common.grpc_client import ClientTls, open_channel, unary_call
from services.common.proto.qanchor.v1 import registry_pb2 as pb
from services.common.proto.qanchor.v1 import registry_pb2_grpc as pb_grpc
from services.registry.serving_view import ScenarioInfo, scenario_from_proto

T = TypeVar("T")


class RegistryClient:
    def __init__(
        self, target: str, *, token: str | None = None, timeout_s: float = 5.0, cache_ttl_s: float = 5.0,
        max_stale_s: float = 300.0, negative_ttl_s: float = 1.0, channel: grpc.Channel | None = None,
        clock: Callable[[], float] = time.monotonic, tls: ClientTls | None = None,
    ) -> None:
        self.target = target
        self._channel = channel or open_channel(target, tls)
        self._owns_channel = channel is None
        self.stub = pb_grpc.ScenarioRegistryStub(self._channel)
        self.token = token
        self.timeout_s = timeout_s
        self.cache_ttl_s = cache_ttl_s
        # How long an expired entry may still be served while the registry is unreachable.
        self.max_stale_s = max_stale_s
        self._clock = clock
        self._cache: dict[str, tuple[float, ScenarioInfo]] = {}  # name -> (fetched at, view)
        # Unknown names are remembered this long, so a burst of requests for one does not become a burst of
        # registry calls; a registration through this client forgets it at once.
        self.negative_ttl_s = negative_ttl_s
        self._missing: dict[str, float] = {}  # name -> when the registry said NOT_FOUND
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: Any, request_id: str | None = None,
              timeout_s: float | None = None) -> T:
        timeout = self.timeout_s if timeout_s is None else max(0.001, min(timeout_s, self.timeout_s))
        return unary_call(method, request, token=self.token, timeout_s=timeout, request_id=request_id,
                          where=f"registry at {self.target}")

    # --- RPCs ----------------------------------------------------------------------------------------------

    def register_scenario(self, name: str, query_text: str, description: str = "") -> pb.Scenario:
        s = self._call(self.stub.RegisterScenario,
                       pb.RegisterScenarioRequest(name=name, query_text=query_text, description=description))
        self.invalidate(name)
        return s

    def get_scenario(self, name: str, timeout_s: float | None = None) -> pb.Scenario:
        return self._call(self.stub.GetScenario, pb.GetScenarioRequest(name=name), timeout_s=timeout_s)

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

    # --- model versions (docs/models.md) ---------------------------------------------------------------------

    def register_model(self, model_version: str, artifact_uri: str, sha256: str,
                       metrics: Mapping[str, float] | None = None, source_id: str = "",
                       created_by: str = "") -> pb.ModelVersion:
        return self._call(self.stub.RegisterModel, pb.RegisterModelRequest(
            model_version=model_version, artifact_uri=artifact_uri, sha256=sha256, metrics=dict(metrics or {}),
            source_id=source_id, created_by=created_by))

    def get_model(self, model_version: str) -> pb.ModelVersion:
        return self._call(self.stub.GetModel, pb.GetModelRequest(model_version=model_version))

    def list_models(self, states: Sequence[int] = (), timeout_s: float | None = None) -> list[pb.ModelVersion]:
        """Newest first; `states` are registry_pb2.ModelState values (empty = all)."""
        return list(self._call(self.stub.ListModels, pb.ListModelsRequest(states=list(states)),
                               timeout_s=timeout_s).models)

    def publish_model(self, model_version: str, published_uri: str) -> pb.ModelVersion:
        return self._call(self.stub.PublishModel, pb.PublishModelRequest(model_version=model_version,
                                                                          published_uri=published_uri))

    def promote_model(self, model_version: str) -> pb.ModelVersion:
        return self._call(self.stub.PromoteModel, pb.PromoteModelRequest(model_version=model_version))

    def retire_model(self, model_version: str) -> pb.ModelVersion:
        return self._call(self.stub.RetireModel, pb.RetireModelRequest(model_version=model_version))

    # --- gateway view ----------------------------------------------------------------------------------------

    def serving_info(self, scenario: str, timeout_s: float | None = None) -> ScenarioInfo:
        """Cached for `cache_ttl_s`; NotFound for `negative_ttl_s` (short: a scenario registered elsewhere serves
        within it; one registered through this client at once). `timeout_s` bounds the registry call (at most
        the client's own timeout): the gateway passes what is left of its caller's deadline.

        If the registry is unreachable, an expired entry younger than `max_stale_s` is served instead of failing:
        routing on slightly old versions beats failing every embedding request.
        """
        now = self._clock()
        with self._lock:
            hit = self._cache.get(scenario)
            missing_since = self._missing.get(scenario)
        if hit is not None and now - hit[0] < self.cache_ttl_s:
            return hit[1]
        if missing_since is not None and now - missing_since < self.negative_ttl_s:
            raise NotFound(f"scenario {scenario!r} is not registered (cached answer); register it with "
                           "RegisterScenario")
        try:
            info = scenario_from_proto(self.get_scenario(scenario, timeout_s=timeout_s))
        except (Unavailable, DeadlineExceeded):
            if hit is not None and now - hit[0] < self.max_stale_s:
                return hit[1]
            raise
        except NotFound:
            with self._lock:
                self._cache.pop(scenario, None)
                if len(self._missing) >= 10_000:  # bounded: a client sending random names cannot grow it
                    self._missing.clear()
                self._missing[scenario] = now
            raise
        with self._lock:
            self._cache[scenario] = (now, info)
            self._missing.pop(scenario, None)
        return info

    def invalidate(self, scenario: str | None = None) -> None:
        with self._lock:
            if scenario is None:
                self._cache.clear()
                self._missing.clear()
            else:
                self._cache.pop(scenario, None)
                self._missing.pop(scenario, None)
