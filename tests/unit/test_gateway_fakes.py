"""Tiny fakes of the gateway's three clients (unit tests only; integration tests use the real stack)."""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from services.common.errors import QAnchorError
from services.common.features import FeatureSpec, SourceEvents, SourceSpec, UserFeatures
from services.gateway.core import ModelRequest, ModelResult
from services.gateway.ab_config import ABConfig, load_config
from services.registry.serving_view import PromptInfo, ScenarioInfo

SPEC = FeatureSpec(sources=(SourceSpec("liked", 4), SourceSpec("disliked", 2)), tabular_dim=3, encoder_dim=384)
DIM = 8


def user(user_id: str, version: int = 3, n_liked: int = 2, updated_at: float = 1_700_000_000.5) -> UserFeatures:
    rng = np.random.default_rng(zlib.crc32(user_id.encode()))
    vecs = rng.standard_normal((n_liked, 384)).astype(np.float16)
    return UserFeatures(user_id, {"liked": SourceEvents([f"m{i}" for i in range(n_liked)], vecs,
                                                        np.arange(n_liked, dtype=np.int64))},
                        np.arange(3, dtype=np.float32), version, updated_at)


class FakeFeatures:
    spec = SPEC

    def __init__(self, users: Sequence[UserFeatures], delay_s: float = 0.0, fail: bool = False) -> None:
        self.users = {u.user_id: u for u in users}
        self.calls: list[list[str]] = []
        self.delay_s = delay_s
        self.fail = fail

    def get(self, user_ids: Sequence[str]) -> list[UserFeatures]:
        self.calls.append(list(user_ids))
        if self.fail:
            raise ConnectionError("redis is down")
        time.sleep(self.delay_s)
        return [self.users.get(u) or UserFeatures.missing(u) for u in user_ids]


def scenario(name: str, tuned_status: str = "READY", tuned_model: str = "") -> ScenarioInfo:
    return ScenarioInfo(name, f"Will this user like {name}?", 1, {
        1: PromptInfo(1, "zero-shot", "ACTIVE"),
        2: PromptInfo(2, "tuned", tuned_status, tuned_model, f"file:///prompts/{name}/v2.safetensors", "cd" * 32),
    })


class FakeRegistry:
    def __init__(self, *names: str) -> None:
        self.scenarios = {n: scenario(n) for n in names}

    def get_scenario(self, name: str, timeout_s: float | None = None) -> ScenarioInfo | None:
        return self.scenarios.get(name)


def expected_embedding(user_id: str, scenario_name: str, prompt: str, feature_version: int) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(f"{user_id}|{scenario_name}|{prompt}|{feature_version}".encode()))
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


@dataclass
class FakeModel:
    """Deterministic embeddings; prefix cache keyed like the real model (model, user, feature version)."""

    error: QAnchorError | None = None
    failing_scenarios: set[str] = field(default_factory=set)
    requests: list[ModelRequest] = field(default_factory=list)
    timeouts: list[float] = field(default_factory=list)
    cache: set[tuple[str, str, int]] = field(default_factory=set)
    served_version: str = ""

    def infer(self, requests: Sequence[ModelRequest], timeout_s: float) -> list[ModelResult | QAnchorError]:
        self.timeouts.append(timeout_s)
        out: list[ModelResult | QAnchorError] = []
        for r in requests:
            self.requests.append(r)
            if self.error is not None:
                out.append(self.error)
                continue
            fv = r.user.feature_version if r.user.found else 0
            key = (r.model_version, r.user.user_id if r.user.found else "", fv)
            hit = key in self.cache
            self.cache.add(key)
            prompts = ["zero-shot" if p is None else str(p.version) for p in r.prompts]
            emb = np.stack([expected_embedding(r.user.user_id, s, p, fv) for s, p in zip(r.scenarios, prompts)])
            status = [5 if s in self.failing_scenarios else 0 for s in r.scenarios]
            errors = ["prompt artifact missing" if s in self.failing_scenarios else "" for s in r.scenarios]
            out.append(ModelResult(emb, hit, status, errors, self.served_version or r.model_version or "m-default"))
        return out

    def ready(self) -> bool:
        return True

    def known_model_versions(self) -> set[str]:
        return set()


class StaticRouting:
    def __init__(self, config: ABConfig | str) -> None:
        self._config = load_config(config) if isinstance(config, str) else config

    @property
    def config(self) -> ABConfig:
        return self._config


AB_YAML = """
salt: unit
default: {model_version: m1}
scenarios:
  concert:
    arms:
      - {name: control, weight: 50, prompt_version: zero-shot}
      - {name: tuned, weight: 50, prompt_version: 2}
"""
