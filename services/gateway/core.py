"""The gateway's transport-free core: validate -> arm -> registry -> Feast (one lookup) -> Triton -> results.

No protobuf and no gRPC context here: the servicer converts messages, the CLI or a benchmark can call the core
directly, and unit tests drive it with tiny fakes of the three clients (features, registry, model).

Errors are `services.common.errors` exceptions carrying their gRPC code. Batch calls turn item-level problems into
per-item errors (`ItemError`); a failure of a dependency as a whole (model server down, deadline gone) fails the
call, because no item can succeed and the caller's retry policy keys on the status code.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Protocol, Sequence, Union

import grpc
import numpy as np

from services.common.errors import (
    DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound, QAnchorError, Unavailable, error_for_code,
)
from services.common.features import FeatureSpec, UserFeatures
from services.common.validation import validate_scenario_name, validate_user_id
from services.gateway.ab_config import ACTIVE, DEFAULT_ARM, ABConfig, ScenarioLookup
from services.gateway.routing import Assignment, assign
from services.registry.serving_view import ZERO_SHOT, PromptInfo, ScenarioInfo

if TYPE_CHECKING:
    from services.gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)


# ---- the three dependencies ----------------------------------------------------------------------------------
class FeatureSource(Protocol):
    """One batched online lookup; unknown users come back `found=False`, never as an error."""

    spec: FeatureSpec

    def get(self, user_ids: Sequence[str]) -> list[UserFeatures]: ...


@dataclass
class ModelRequest:
    """One Triton `qanchor` request: one user, S scenarios (docs/gateway.md, tensor contract)."""

    user: UserFeatures
    model_version: str
    scenarios: list[str]
    query_texts: list[str]
    prompts: list[PromptInfo | None]  # None = zero-shot (the query text alone)


@dataclass
class ModelResult:
    embeddings: np.ndarray  # [S, D] float32, row i for scenarios[i]
    cache_hit: bool
    status: list[int]  # per scenario grpc.StatusCode value, 0 = OK
    errors: list[str]
    model_version: str  # the version that actually served (the model's answer wins over the request)


class ModelClient(Protocol):
    def infer(self, requests: Sequence[ModelRequest], timeout_s: float) -> list[ModelResult | QAnchorError]: ...

    def ready(self) -> bool:
        """Readiness: the model server answers and has the model loaded."""
        ...

    def known_model_versions(self) -> set[str]:
        """Model versions the server can serve (what A/B arms may name); may raise when the server is down."""
        ...


class ConfigSource(Protocol):
    @property
    def config(self) -> ABConfig: ...


# ---- results ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EmbeddingItem:
    user_id: str
    scenario: str
    values: np.ndarray  # [D] float32
    model_version: str
    prompt_version: str  # ZERO_SHOT or "v<N>"
    arm: str
    feature_version: int
    feature_timestamp: float  # unix seconds; 0 = no features
    cache_hit: bool
    fallback: bool


@dataclass(frozen=True)
class ItemError:
    code: grpc.StatusCode
    message: str


ItemResult = Union[EmbeddingItem, ItemError]


@dataclass
class Timing:
    total_ms: float = 0.0
    features_ms: float = 0.0
    model_ms: float = 0.0


# A "deadline" further away than this is no deadline: gRPC reports ~9e18 s remaining for a call without one
# (grpcurl and most client libraries send none by default).
NO_DEADLINE_S = 1e6


@dataclass(frozen=True)
class CoreLimits:
    max_batch_items: int = 256  # BatchGetEmbeddings items per call
    max_scenarios: int = 64  # GetUserEmbeddings scenarios per call
    default_timeout_s: float = 2.0  # the call's budget when the caller set no deadline
    deadline_margin_s: float = 0.005  # kept back from the caller's deadline to build and send the reply


def call_budget(timeout_s: float | None, limits: CoreLimits) -> float:
    """Seconds this call may take: the caller's deadline, or the configured default when it set none."""
    if timeout_s is None or timeout_s > NO_DEADLINE_S:
        return limits.default_timeout_s
    return timeout_s


@dataclass
class _Planned:
    index: int
    user_id: str
    scenario: str
    arm: str
    model_version: str
    info: ScenarioInfo
    prompt: PromptInfo


class GatewayCore:
    def __init__(self, features: FeatureSource, registry: ScenarioLookup, model: ModelClient,
                 routing: ConfigSource, limits: CoreLimits | None = None,
                 metrics: "GatewayMetrics | None" = None, default_model: Callable[[], str] | None = None) -> None:
        self.features = features
        # The registry's promoted model version (a cached read, never a call): serves arms and scenarios the A/B
        # config gives no model_version; "" = the model server's own default.
        self.default_model = default_model or (lambda: "")
        self.registry = registry
        self.model = model
        self.routing = routing
        self.limits = limits or CoreLimits()
        self.metrics = metrics

    # ---- the three RPCs ----------------------------------------------------------------------------------
    def get_embedding(self, user_id: str, scenario: str,
                      timeout_s: float | None = None) -> tuple[EmbeddingItem, Timing]:
        results, timing = self._run([(user_id, scenario)], timeout_s)  # a bad id comes back as the item's error
        item = results[0]
        if isinstance(item, ItemError):
            raise error_for_code(item.code, item.message)
        return item, timing

    def get_user_embeddings(self, user_id: str, scenarios: Sequence[str],
                            timeout_s: float | None = None) -> tuple[list[ItemResult], Timing]:
        validate_user_id(user_id)
        if not scenarios:
            raise InvalidArgument("scenarios is empty; pass at least one registered scenario name")
        if len(scenarios) > self.limits.max_scenarios:
            raise InvalidArgument(f"{len(scenarios)} scenarios in one call; the maximum is "
                                  f"{self.limits.max_scenarios} (GATEWAY_MAX_SCENARIOS): split the call")
        dupes = sorted({s for s in scenarios if list(scenarios).count(s) > 1})
        if dupes:
            raise InvalidArgument(f"scenarios must be distinct; repeated: {dupes}")
        return self._run([(user_id, s) for s in scenarios], timeout_s, user_checked=True)

    def batch_get(self, items: Sequence[tuple[str, str]],
                  timeout_s: float | None = None) -> tuple[list[ItemResult], Timing]:
        if not items:
            raise InvalidArgument("items is empty; pass at least one (user_id, scenario) pair")
        if len(items) > self.limits.max_batch_items:
            raise InvalidArgument(f"{len(items)} items in one call; the maximum is {self.limits.max_batch_items} "
                                  "(GATEWAY_MAX_BATCH_ITEMS): split the call")
        return self._run(list(items), timeout_s)

    # ---- pipeline ----------------------------------------------------------------------------------------
    def _run(self, pairs: list[tuple[str, str]], timeout_s: float | None,
             user_checked: bool = False) -> tuple[list[ItemResult], Timing]:
        t0 = time.perf_counter()
        deadline = t0 + call_budget(timeout_s, self.limits)
        results: list[ItemResult | None] = [None] * len(pairs)
        config = self.routing.config

        # validate, then look each distinct scenario up once (with what is left of the budget), then route:
        # per item, so one bad pair does not sink a batch
        valid: list[tuple[int, str, str]] = []
        for i, (user_id, scenario) in enumerate(pairs):
            try:
                if not user_checked:
                    validate_user_id(user_id)
                validate_scenario_name(scenario)
            except QAnchorError as exc:
                results[i] = ItemError(exc.code, exc.message)
                continue
            valid.append((i, user_id, scenario))
        infos = self._scenarios(dict.fromkeys(s for _, _, s in valid), deadline)
        by_user: "OrderedDict[str, list[_Planned]]" = OrderedDict()
        for i, user_id, scenario in valid:
            try:
                planned = self._plan(i, user_id, infos[scenario], config)
            except QAnchorError as exc:
                results[i] = ItemError(exc.code, exc.message)
                continue
            by_user.setdefault(user_id, []).append(planned)
        t_routed = time.perf_counter()
        self._observe("route", t_routed - t0)

        timing = Timing()
        if by_user:
            users = self._lookup(list(by_user), timing, deadline)
            requests, owners = self._requests(by_user, users)
            self._infer(requests, owners, users, deadline, results, timing)

        timing.total_ms = (time.perf_counter() - t0) * 1000
        self._observe("total", timing.total_ms / 1000)
        # The gateway's own share of the call: everything but the model client call (transport + Triton).
        self._observe("overhead", max(0.0, timing.total_ms - timing.model_ms) / 1000)
        out = [r if r is not None else ItemError(grpc.StatusCode.INTERNAL, "item was not computed") for r in results]
        if self.metrics is not None:
            for r in out:
                if isinstance(r, ItemError):
                    self.metrics.item_errors.labels(r.code.name).inc()
        return out, timing

    def _scenarios(self, names: Iterable[str], deadline: float) -> dict[str, ScenarioInfo | QAnchorError]:
        """Each distinct scenario of the call looked up once; a registry call gets what is left of the budget."""
        out: dict[str, ScenarioInfo | QAnchorError] = {}
        for name in names:
            remaining = deadline - time.perf_counter() - self.limits.deadline_margin_s
            try:
                if remaining <= 0:
                    raise DeadlineExceeded("the deadline passed while looking up scenarios; raise the deadline")
                info = self.registry.get_scenario(name, timeout_s=remaining)
                out[name] = info if info is not None else NotFound(
                    f"scenario {name!r} is not registered; register it with RegisterScenario (or check the "
                    "spelling with ListScenarios)")
            except QAnchorError as exc:
                out[name] = exc
        return out

    def _plan(self, index: int, user_id: str, info: ScenarioInfo | QAnchorError, config: ABConfig) -> _Planned:
        if isinstance(info, QAnchorError):
            raise info
        scenario = info.name
        a = assign(config, scenario, user_id)
        prompt, arm = self._resolve_prompt(a, info)
        # A tuned prompt only fits the model it was tuned for: that model wins over the arm's default.
        model_version = prompt.model_version or a.model_version or self.default_model()
        if self.metrics is not None:
            self.metrics.arm_requests.labels(scenario, arm).inc()
        return _Planned(index, user_id, scenario, arm, model_version, info, prompt)

    def _resolve_prompt(self, a: Assignment, info: ScenarioInfo) -> tuple[PromptInfo, str]:
        if a.prompt_version == ACTIVE:
            prompt = info.versions.get(info.active_version)
        elif a.prompt_version == ZERO_SHOT:
            prompt = info.zero_shot
        else:
            prompt = info.versions.get(int(a.prompt_version))
        if prompt is not None and prompt.servable:
            return prompt, a.arm
        # The config was valid when loaded, but the registry moved on (version retired): serve the active
        # version rather than fail, and make it visible in logs and the arm label.
        active = info.versions.get(info.active_version)
        if active is None or not active.servable:
            raise FailedPrecondition(f"scenario {info.name!r} has no servable prompt version; promote a READY "
                                     "version with PromotePromptVersion")
        log.warning("arm prompt not servable: serving the active version",
                    extra={"event": "arm_prompt_unservable", "scenario": info.name, "arm": a.arm,
                           "prompt_version": a.prompt_version, "served": f"active:v{active.version}"})
        if self.metrics is not None:
            self.metrics.arm_fallbacks.labels(info.name, a.arm).inc()
        return active, DEFAULT_ARM

    def _lookup(self, user_ids: list[str], timing: Timing, deadline: float) -> dict[str, UserFeatures]:
        t = time.perf_counter()
        if deadline - t - self.limits.deadline_margin_s <= 0:
            raise DeadlineExceeded("the deadline passed before the feature lookup (the scenario lookups took it); "
                                   "raise the deadline or retry")
        try:
            rows = self.features.get(user_ids)
        except QAnchorError:
            raise
        except Exception as exc:  # the store's own exception types vary by backend (SQLite, Redis)
            log.error("feature lookup failed", extra={"event": "feature_lookup_failed", "users": len(user_ids),
                                                      "error": repr(exc)})
            raise Unavailable(f"feature store lookup failed ({type(exc).__name__}: {exc}); retry with backoff, "
                              "and check the online store (Redis/SQLite) is reachable") from exc
        elapsed = time.perf_counter() - t
        timing.features_ms = elapsed * 1000
        self._observe("features", elapsed)
        by_id = {r.user_id: r for r in rows}
        return {u: by_id.get(u) or UserFeatures.missing(u) for u in user_ids}

    def _requests(self, by_user: "OrderedDict[str, list[_Planned]]", users: dict[str, UserFeatures]
                  ) -> tuple[list[ModelRequest], list[list[list[_Planned]]]]:
        """One request per (user, model version); `owners[r][row]` are the items answered by row `row`."""
        requests: list[ModelRequest] = []
        owners: list[list[list[_Planned]]] = []
        for user_id, planned in by_user.items():
            groups: "OrderedDict[str, OrderedDict[str, list[_Planned]]]" = OrderedDict()
            for p in planned:
                # Same (user, scenario) twice in a batch may still differ in prompt only if routing changed
                # mid-call, which it cannot (one config snapshot per call): one row serves both.
                groups.setdefault(p.model_version, OrderedDict()).setdefault(p.scenario, []).append(p)
            for model_version, rows in groups.items():
                firsts = [items[0] for items in rows.values()]
                requests.append(ModelRequest(
                    user=users[user_id], model_version=model_version,
                    scenarios=[p.scenario for p in firsts],
                    query_texts=[p.info.query_text for p in firsts],
                    prompts=[None if p.prompt.kind == ZERO_SHOT else p.prompt for p in firsts],
                ))
                owners.append(list(rows.values()))
        return requests, owners

    def _infer(self, requests: list[ModelRequest], owners: list[list[list[_Planned]]],
               users: dict[str, UserFeatures], deadline: float, results: list[ItemResult | None],
               timing: Timing) -> None:
        remaining = deadline - time.perf_counter() - self.limits.deadline_margin_s
        if remaining <= 0:
            raise DeadlineExceeded("the deadline passed before the model was called (feature lookup took "
                                   f"{timing.features_ms:.1f} ms); raise the deadline or retry")
        t = time.perf_counter()
        outcomes = self.model.infer(requests, remaining)
        elapsed = time.perf_counter() - t
        timing.model_ms = elapsed * 1000
        self._observe("model", elapsed)

        failures = [o for o in outcomes if isinstance(o, QAnchorError)]
        # Every request failed the same way (server down, deadline gone): that is the call's status.
        if failures and len(failures) == len(outcomes) and len({f.code for f in failures}) == 1:
            raise failures[0]
        for req, rows, outcome in zip(requests, owners, outcomes):
            if isinstance(outcome, QAnchorError):
                for items in rows:
                    for p in items:
                        results[p.index] = ItemError(outcome.code, outcome.message)
                continue
            if self.metrics is not None:
                self.metrics.prefix_cache.labels("hit" if outcome.cache_hit else "miss").inc()
            user = users[req.user.user_id]
            if not user.found and self.metrics is not None:
                self.metrics.fallbacks.inc(sum(len(items) for items in rows))
            for row, items in enumerate(rows):
                code = outcome.status[row] if row < len(outcome.status) else 0
                for p in items:
                    if code:
                        results[p.index] = ItemError(status_code(code), outcome.errors[row] or
                                                     f"model failed for scenario {p.scenario!r}")
                        continue
                    results[p.index] = EmbeddingItem(
                        user_id=p.user_id, scenario=p.scenario,
                        values=np.asarray(outcome.embeddings[row], dtype=np.float32),
                        model_version=outcome.model_version or p.model_version,
                        prompt_version=p.prompt.label, arm=p.arm,
                        feature_version=user.feature_version if user.found else 0,
                        feature_timestamp=user.updated_at if user.found else 0.0,
                        cache_hit=outcome.cache_hit, fallback=not user.found,
                    )

    def _observe(self, stage: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.stage_seconds.labels(stage).observe(seconds)


def status_code(value: int) -> grpc.StatusCode:
    """The grpc.StatusCode for a wire integer (its members' values are (int, name) tuples)."""
    for member in grpc.StatusCode:
        if member.value[0] == value:
            return member
    return grpc.StatusCode.UNKNOWN
