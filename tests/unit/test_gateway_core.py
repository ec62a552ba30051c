"""The transport-free gateway core, driven with tiny fakes of features / registry / model."""
from __future__ import annotations

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from services.common.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from services.gateway.core import CoreLimits, EmbeddingItem, GatewayCore, ItemError
from services.gateway.metrics import GatewayMetrics
from services.gateway.ab_config import load_config
from services.gateway.routing import assign
from services.registry.serving_view import PromptInfo
from test_gateway_fakes import (
    AB_YAML, FakeFeatures, FakeModel, FakeRegistry, StaticRouting, expected_embedding, scenario, user,
)


def make_core(users=("alice", "bob", "carol"), model: FakeModel | None = None, features: FakeFeatures | None = None,
              registry: FakeRegistry | None = None, limits: CoreLimits | None = None):
    features = features or FakeFeatures([user(u) for u in users])
    model = model or FakeModel()
    registry = registry or FakeRegistry("concert", "churn", "promo")
    metrics = GatewayMetrics(CollectorRegistry())
    core = GatewayCore(features, registry, model, StaticRouting(AB_YAML), limits, metrics)
    return core, features, model, registry, metrics


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


def test_get_embedding_returns_model_output_and_metadata() -> None:
    core, _, model, _, metrics = make_core()
    item, timing = core.get_embedding("alice", "churn")  # churn is not in the A/B config: default arm, active
    assert item.arm == "default" and item.prompt_version == "zero-shot" and item.model_version == "m1"
    assert item.feature_version == 3 and item.feature_timestamp == pytest.approx(1_700_000_000.5)
    assert not item.fallback and not item.cache_hit
    np.testing.assert_allclose(item.values, expected_embedding("alice", "churn", "zero-shot", 3))
    assert timing.total_ms >= timing.model_ms >= 0 and timing.features_ms >= 0
    again, _ = core.get_embedding("alice", "churn")
    assert again.cache_hit  # same (model, user, feature version): the prefix is reused
    assert sample(metrics, "qanchor_gateway_prefix_cache_total", result="hit") == 1
    assert sample(metrics, "qanchor_gateway_prefix_cache_total", result="miss") == 1
    assert sample(metrics, "qanchor_gateway_arm_requests_total", scenario="churn", arm="default") == 2


def test_unknown_user_gets_cold_start_embedding_not_an_error() -> None:
    core, _, model, _, metrics = make_core()
    item, _ = core.get_embedding("zoe", "churn")
    assert item.fallback and item.feature_version == 0 and item.feature_timestamp == 0.0
    assert not model.requests[-1].user.found
    np.testing.assert_allclose(item.values, expected_embedding("zoe", "churn", "zero-shot", 0))
    assert sample(metrics, "qanchor_gateway_cold_start_total") == 1


def test_ab_arms_pick_prompt_and_are_reported() -> None:
    core, _, model, _, metrics = make_core(users=[f"u{i}" for i in range(40)])
    cfg = load_config(AB_YAML)
    seen = set()
    for i in range(40):
        uid = f"u{i}"
        item, _ = core.get_embedding(uid, "concert")
        want = assign(cfg, "concert", uid)
        assert item.arm == want.arm
        req = model.requests[-1]
        if want.arm == "tuned":
            assert item.prompt_version == "v2" and req.prompts[0] is not None
            assert req.prompts[0].artifact_uri.endswith("concert/v2.safetensors")
            np.testing.assert_allclose(item.values, expected_embedding(uid, "concert", "2", 3))
        else:
            assert item.prompt_version == "zero-shot" and req.prompts[0] is None
        seen.add(item.arm)
    assert seen == {"control", "tuned"}
    total = sum(sample(metrics, "qanchor_gateway_arm_requests_total", scenario="concert", arm=a) for a in seen)
    assert total == 40


def test_get_user_embeddings_sends_one_model_request_for_all_scenarios() -> None:
    core, features, model, _, _ = make_core()
    results, _ = core.get_user_embeddings("alice", ["churn", "nope", "promo"])
    assert len(model.requests) == 1 and model.requests[0].scenarios == ["churn", "promo"]
    assert features.calls == [["alice"]]
    assert isinstance(results[0], EmbeddingItem) and results[0].scenario == "churn"
    assert isinstance(results[1], ItemError) and results[1].code == grpc.StatusCode.NOT_FOUND
    assert "nope" in results[1].message and "RegisterScenario" in results[1].message
    assert isinstance(results[2], EmbeddingItem) and results[2].scenario == "promo"
    assert results[0].cache_hit is False and results[2].cache_hit is False  # one prefix computation for both


def test_batch_groups_by_user_one_feature_lookup_per_error_items() -> None:
    core, features, model, _, _ = make_core()
    items = [("alice", "churn"), ("bob", "churn"), ("alice", "promo"), ("bad\nid", "churn"),
             ("carol", "missing"), ("bob", "promo"), ("zoe", "churn"), ("alice", "churn")]
    results, _ = core.batch_get(items)
    assert features.calls == [["alice", "bob", "zoe"]]  # one lookup, distinct users, invalid ones excluded
    assert [r.user.user_id for r in model.requests] == ["alice", "bob", "zoe"]
    assert model.requests[0].scenarios == ["churn", "promo"]  # duplicate (alice, churn) shares a row
    assert len(results) == len(items)
    for (uid, scen), r in zip(items, results):
        if uid == "bad\nid":
            assert isinstance(r, ItemError) and r.code == grpc.StatusCode.INVALID_ARGUMENT
        elif scen == "missing":
            assert isinstance(r, ItemError) and r.code == grpc.StatusCode.NOT_FOUND
        else:
            assert isinstance(r, EmbeddingItem) and (r.user_id, r.scenario) == (uid, scen)
            assert r.fallback == (uid == "zoe")


def test_unknown_scenario_and_invalid_input_raise_typed_errors() -> None:
    core, *_ = make_core()
    with pytest.raises(NotFound, match="'ghost' is not registered"):
        core.get_embedding("alice", "ghost")
    with pytest.raises(InvalidArgument, match="user_id is empty"):
        core.get_embedding("", "churn")
    with pytest.raises(InvalidArgument, match="scenario name"):
        core.get_embedding("alice", "Bad Name")
    with pytest.raises(InvalidArgument, match="distinct"):
        core.get_user_embeddings("alice", ["churn", "churn"])
    with pytest.raises(InvalidArgument, match="empty"):
        core.batch_get([])


def test_size_limits() -> None:
    core, *_ = make_core(limits=CoreLimits(max_batch_items=3, max_scenarios=2))
    with pytest.raises(InvalidArgument, match="maximum is 2 .*GATEWAY_MAX_SCENARIOS"):
        core.get_user_embeddings("alice", ["churn", "promo", "concert"])
    with pytest.raises(InvalidArgument, match="maximum is 3 .*GATEWAY_MAX_BATCH_ITEMS"):
        core.batch_get([("alice", "churn")] * 4)


def test_model_down_is_unavailable_for_the_whole_call() -> None:
    core, *_ = make_core(model=FakeModel(error=Unavailable("triton unreachable")))
    with pytest.raises(Unavailable):
        core.get_embedding("alice", "churn")
    with pytest.raises(Unavailable):
        core.batch_get([("alice", "churn"), ("bob", "churn")])


def test_per_scenario_model_errors_become_item_errors() -> None:
    core, *_ = make_core(model=FakeModel(failing_scenarios={"promo"}))
    results, _ = core.get_user_embeddings("alice", ["churn", "promo"])
    assert isinstance(results[0], EmbeddingItem)
    assert isinstance(results[1], ItemError) and results[1].code == grpc.StatusCode.NOT_FOUND
    assert results[1].message == "prompt artifact missing"
    with pytest.raises(NotFound, match="prompt artifact missing"):
        core.get_embedding("alice", "promo")


def test_deadline_is_passed_to_the_model_and_enforced() -> None:
    core, _, model, _, _ = make_core()
    core.get_embedding("alice", "churn", timeout_s=0.5)
    assert 0.4 < model.timeouts[-1] < 0.5  # remaining budget minus the margin
    slow, _, slow_model, _, _ = make_core(features=FakeFeatures([user("alice")], delay_s=0.05))
    with pytest.raises(DeadlineExceeded, match="deadline passed before the model"):
        slow.get_embedding("alice", "churn", timeout_s=0.02)
    assert slow_model.requests == []  # no model work for a caller that already gave up


def test_feature_store_failure_is_unavailable() -> None:
    core, *_ = make_core(features=FakeFeatures([], fail=True))
    with pytest.raises(Unavailable, match="feature store lookup failed"):
        core.get_embedding("alice", "churn")


def test_retired_arm_prompt_falls_back_to_active_version() -> None:
    registry = FakeRegistry("churn", "promo")
    registry.scenarios["concert"] = scenario("concert", tuned_status="RETIRED")
    core, _, model, _, metrics = make_core(users=[f"u{i}" for i in range(30)], registry=registry)
    arms = set()
    for i in range(30):
        item, _ = core.get_embedding(f"u{i}", "concert")
        assert item.prompt_version == "zero-shot"
        arms.add(item.arm)
    assert arms == {"control", "default"}  # tuned-arm users served active, labelled "default"
    assert sum(v.value for m in metrics.arm_fallbacks.collect() for v in m.samples
               if v.name.endswith("_total")) > 0


def test_tuned_prompt_pins_its_model_version() -> None:
    registry = FakeRegistry("churn")
    registry.scenarios["concert"] = scenario("concert", tuned_model="m7")
    core, _, model, _, _ = make_core(users=[f"u{i}" for i in range(30)], registry=registry)
    for i in range(30):
        item, _ = core.get_embedding(f"u{i}", "concert")
        assert item.model_version == ("m7" if item.arm == "tuned" else "m1")
        assert model.requests[-1].model_version == item.model_version


def test_zero_shot_info_prefers_servable_lowest_version() -> None:
    info = scenario("x")
    assert info.zero_shot == PromptInfo(1, "zero-shot", "ACTIVE")
