"""A gateway any client can use: calls without a deadline get the configured budget, the budget left reaches the
registry, scenario lookups are deduplicated (cached both ways: test_registry_servicer.py), load beyond the
in-flight limit is refused at once, the gateway starts while the registry is down, and A/B reloads fail closed
while a dependency cannot validate them."""
from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from services.common.errors import Unavailable
from services.common.grpc_server import mark_serving
from services.common.proto.qanchor.v1 import embedding_pb2 as pb
from services.common.proto.qanchor.v1 import embedding_pb2_grpc as pb_grpc
from services.gateway.metrics import GatewayMetrics
from services.gateway.server import build_gateway, create_gateway_server
from services.gateway.servicer import SERVICE_NAME
from services.gateway.settings import GatewaySettings
from test_gateway_fakes import AB_YAML, FakeFeatures, FakeModel, FakeRegistry, user

TOKEN = "t0k"


class CountingRegistry(FakeRegistry):
    def __init__(self, *names: str) -> None:
        super().__init__(*names)
        self.calls: list[tuple[str, float | None]] = []
        self.down = False

    def get_scenario(self, name, timeout_s=None):  # type: ignore[no-untyped-def]
        self.calls.append((name, timeout_s))
        if self.down:
            raise Unavailable("registry at 127.0.0.1:1 is unreachable")
        return super().get_scenario(name, timeout_s)


class GatedModel(FakeModel):
    """Holds every call until released: lets a test fill the server's in-flight slots deterministically."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def infer(self, requests, timeout_s):  # type: ignore[no-untyped-def]
        self.entered.set()
        self.release.wait(30)
        return super().infer(requests, timeout_s)


def serve(tmp_path: Path, registry=None, model=None, **kw):  # type: ignore[no-untyped-def]
    ab = tmp_path / "ab.yaml"
    ab.write_text(AB_YAML)
    settings = GatewaySettings(grpc_port=0, token=TOKEN, ab_config=ab, model_versions=["m1"], **kw)
    gateway = build_gateway(settings, features=FakeFeatures([user("alice")]),
                            registry=registry or CountingRegistry("concert", "churn"), model=model or FakeModel(),
                            metrics=GatewayMetrics(CollectorRegistry()))
    server, port = create_gateway_server(settings, gateway)
    server.start()
    mark_serving(server, [SERVICE_NAME])
    return gateway, server, f"127.0.0.1:{port}"


def test_calls_without_a_deadline_get_the_default_budget(tmp_path: Path) -> None:
    registry, model = CountingRegistry("concert", "churn"), FakeModel()
    gateway, server, target = serve(tmp_path, registry, model, default_timeout_s=1.5)
    registry.calls.clear()  # the A/B validation's own lookups
    try:
        with grpc.insecure_channel(target) as ch:
            stub, md = pb_grpc.EmbeddingServiceStub(ch), [("authorization", f"Bearer {TOKEN}")]
            one = stub.GetEmbedding(pb.GetEmbeddingRequest(user_id="alice", scenario="churn"), metadata=md)
            assert one.embedding.scenario == "churn"  # was DEADLINE_EXCEEDED
            batch = stub.BatchGetEmbeddings(pb.BatchGetEmbeddingsRequest(items=[
                pb.GetEmbeddingRequest(user_id="alice", scenario="churn")] * 3), metadata=md)
            assert all(r.HasField("embedding") for r in batch.results)  # was INTERNAL (OverflowError)
        assert all(0 < t <= 1.5 for t in model.timeouts)
        assert all(t is not None and 0 < t <= 1.5 for _, t in registry.calls)  # the budget reaches the registry
    finally:
        server.stop(0)
        gateway.close()


def test_one_lookup_per_distinct_scenario_of_a_call(tmp_path: Path) -> None:
    registry = CountingRegistry("concert", "churn")
    gateway, server, _ = serve(tmp_path, registry)
    try:
        registry.calls.clear()
        results, _ = gateway.core.batch_get([("alice", "ghost")] * 200 + [("alice", "churn")] * 56)
        assert sorted(name for name, _ in registry.calls) == ["churn", "ghost"]
        assert sum(1 for r in results if getattr(r, "code", None) == grpc.StatusCode.NOT_FOUND) == 200
    finally:
        server.stop(0)
        gateway.close()


def test_calls_beyond_the_in_flight_limit_are_refused_at_once(tmp_path: Path) -> None:
    model = GatedModel()
    gateway, server, target = serve(tmp_path, model=model, max_concurrent_rpcs=1)
    try:
        with grpc.insecure_channel(target) as ch:
            stub, md = pb_grpc.EmbeddingServiceStub(ch), [("authorization", f"Bearer {TOKEN}")]
            first = stub.GetEmbedding.future(pb.GetEmbeddingRequest(user_id="alice", scenario="churn"), metadata=md,
                                             timeout=30)
            assert model.entered.wait(30)  # the one slot is taken
            with pytest.raises(grpc.RpcError) as info:
                stub.GetEmbedding(pb.GetEmbeddingRequest(user_id="alice", scenario="churn"), metadata=md, timeout=30)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                                                          timeout=30)
            assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes are never refused
            model.release.set()
            assert first.result().embedding.scenario == "churn"
    finally:
        model.release.set()
        server.stop(0)
        gateway.close()


def test_the_gateway_starts_and_serves_while_the_registry_is_down(tmp_path: Path) -> None:
    registry = CountingRegistry("concert", "churn")
    registry.down = True
    gateway, server, _ = serve(tmp_path, registry)
    try:
        assert gateway.watcher.provisional  # the A/B file parsed; its validation waits for the registry
        with pytest.raises(Unavailable):
            gateway.core.get_embedding("alice", "churn")
        registry.down = False
        gateway.watcher.poll()
        assert not gateway.watcher.provisional
        assert gateway.core.get_embedding("alice", "churn")[0].scenario == "churn"
    finally:
        server.stop(0)
        gateway.close()


class FlakyModel(FakeModel):
    def __init__(self) -> None:
        super().__init__()
        self.versions: set[str] | None = {"m1"}

    def known_model_versions(self) -> set[str]:
        if self.versions is None:
            raise ConnectionError("model server unreachable")
        return set(self.versions)


def test_ab_reload_fails_closed_while_the_model_server_is_down(tmp_path: Path) -> None:
    model = FlakyModel()
    ab = tmp_path / "ab.yaml"
    ab.write_text(AB_YAML.replace("default: {model_version: m1}", "default: {model_version: m1}"))
    settings = GatewaySettings(grpc_port=0, token=TOKEN, ab_config=ab)  # model versions come from the model
    gateway = build_gateway(settings, features=FakeFeatures([user("alice")]), registry=CountingRegistry("concert"),
                            model=model, metrics=GatewayMetrics(CollectorRegistry()))
    try:
        assert gateway.watcher.generation == 1 and not gateway.watcher.provisional
        model.versions = None  # Triton down during a reload
        ab.write_text(AB_YAML.replace("weight: 50, prompt_version: zero-shot", "weight: 50, prompt_version: "
                                      "zero-shot, model_version: m2"))
        assert not gateway.watcher.poll()  # cannot be checked: not swapped in (it was, unchecked, before)
        assert "model server" in (gateway.watcher.last_error or "") and gateway.watcher.generation == 1
        model.versions = {"m1", "m2"}  # back, and now it knows m2: the rejected file goes live on the next poll
        assert gateway.watcher.poll() and gateway.watcher.generation == 2
        model.versions = {"m1"}  # m2 disappears: the live config is checked again and flagged
        gateway.watcher.poll()
        assert gateway.metrics.registry.get_sample_value("qanchor_gateway_ab_reloads_total",
                                                         {"result": "failure"}) == 2
    finally:
        gateway.close()
