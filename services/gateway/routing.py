"""A/B routing: which arm, prompt version and model version serve a (user, scenario), from the A/B config
(`services.gateway.ab_config`).

A user is assigned by a salted hash of `salt:scenario:user_id`, at 1/10,000 resolution, so assignment is sticky,
independent across scenarios, and reproducible offline (`qanchor ab assign --config config/ab.yaml
--scenario concert_ads alice bob`).

The hash is GrowthBook's v2 scheme (FNV-1a 32 applied twice: `fnv1a(str(fnv1a(seed + user)))`), with
seed = `salt:scenario:`, so an analyst can reproduce a split with GrowthBook's own SDK.
"""
from __future__ import annotations

from dataclasses import dataclass

from services.gateway.ab_config import ACTIVE, BUCKETS, DEFAULT_ARM, ABConfig, PromptRef


def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def bucket(salt: str, scenario: str, user_id: str) -> int:
    """The user's bucket in [0, 10000) for this scenario. Pure: the whole of the assignment logic."""
    first = fnv1a32(f"{salt}:{scenario}:{user_id}".encode("utf-8"))
    # Hashing twice spreads near-identical ids (user1, user2, ...) evenly; plain FNV-1a clusters them.
    return fnv1a32(str(first).encode("ascii")) % BUCKETS


@dataclass(frozen=True)
class Assignment:
    scenario: str
    arm: str
    prompt_version: PromptRef  # int, "zero-shot" or "active"; the core resolves it against the registry
    model_version: str
    bucket: int


def assign(config: ABConfig, scenario: str, user_id: str) -> Assignment:
    """Deterministic arm for (user, scenario). Unlisted scenarios get the 'default' arm (active prompt)."""
    b = bucket(config.salt, scenario, user_id)
    routing = config.scenarios.get(scenario)
    if routing is None:
        return Assignment(scenario, DEFAULT_ARM, ACTIVE, config.default.model_version, b)
    upper = 0
    for arm in routing.arms:
        upper += round(arm.weight * 100)
        if b < upper:
            return Assignment(scenario, arm.name, arm.prompt_version,
                              arm.model_version or config.default.model_version, b)
    raise AssertionError("unreachable: weights are validated to cover every bucket")


def routed_model_versions(config: ABConfig, user_id: str) -> list[str]:
    """Every model version a request of this user may be served by, sorted: the default one (unlisted scenarios,
    arms without a version) and the one each listed scenario's arm assigns them. A user's prefix depends on the model
    version only, so this is what warming their prefix must cover (services/ingest/warm.py)."""
    return sorted({config.default.model_version} | {assign(config, s, user_id).model_version for s in config.scenarios})
