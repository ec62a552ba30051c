"""The online path's promises with the real Q-Anchor model in Triton (untrained `tiny` export), real registry over
gRPC, real Feast: a scenario registered by query text serves at once; GetUserEmbeddings for 10 scenarios returns the
same vectors as 10 single calls; Triton going away is UNAVAILABLE within the caller's deadline, the gateway's
EmbeddingService health turns NOT_SERVING (readiness) while the overall status stays SERVING (liveness), and serving
and health recover when it returns.
"""
from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from services.common.errors import AlreadyExists, DeadlineExceeded, Unavailable
from services.common.feast_store import get_store
from services.common.features import load_feature_spec
from services.common.features_online import FeatureWriter
from services.common.grpc_server import ReadinessMonitor, mark_serving
from services.gateway.embedding_client import EmbeddingClient
from services.gateway.server import build_gateway, create_gateway_server
from services.gateway.servicer import SERVICE_NAME
from services.gateway.settings import GatewaySettings
from services.registry.client import RegistryClient
from services.registry.server import create_registry_server
from services.registry.settings import RegistrySettings
from test_gateway_stack import _ensure_real_model, features

pytestmark = pytest.mark.integration

TOKEN, ADMIN, USER = "ops-token", "ops-admin", "dora"
QUERIES = [
    "Will this user watch a horror film next month?", "Is this user a woman?", "Is this user younger than 25?",
    "Will this user rate films more harshly than before?", "Will this user still be active next month?",
    "Does this user like classic films from before 1970?", "Is this user a student?",
    "Will comedies be a larger share of this user's next ratings?", "Is this user 45 or older?",
    "Does this user work in a technical occupation?",
]
NAMES = [f"ops_s{i}" for i in range(len(QUERIES))]


@pytest.fixture(scope="module")
def online(stack, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("gateway_ops")
    _ensure_real_model(Path(stack.model_repository))
    triton = tgrpc.InferenceServerClient(stack.triton_grpc)
    triton.load_model("qanchor")
    FeatureWriter(get_store(stack.feast_config), load_feature_spec()).write([features(USER, 3, 5, time.time())])

    reg_settings = RegistrySettings(grpc_port=0, database_url=f"sqlite:///{tmp / 'registry.db'}", admin_token=ADMIN)
    reg_server, reg_port, _ = create_registry_server(reg_settings)
    reg_server.start()
    admin = RegistryClient(f"127.0.0.1:{reg_port}", token=ADMIN)
    ab = tmp / "ab.yaml"
    ab.write_text("salt: ops\n")
    settings = GatewaySettings(grpc_port=0, token=TOKEN, ab_config=ab, ab_poll_s=0.1, triton_url=stack.triton_grpc,
                               triton_model="qanchor", registry_target=f"127.0.0.1:{reg_port}",
                               registry_cache_ttl_s=0.5, feast_location=stack.feast_config)
    gateway = build_gateway(settings)
    server, port = create_gateway_server(settings, gateway)
    server.start()
    mark_serving(server, [SERVICE_NAME])
    monitor = ReadinessMonitor(server, [SERVICE_NAME], gateway.ready, interval_s=0.5).start()
    client = EmbeddingClient(f"127.0.0.1:{port}", token=TOKEN, timeout_s=120.0)
    state = {"client": client, "admin": admin, "triton": triton, "triton_url": stack.triton_grpc, "port": port}
    yield state
    monitor.stop()
    client.close()
    server.stop(0)
    gateway.close()
    admin.close()
    reg_server.stop(0)
    try:
        state["triton"].unload_model("qanchor")
    finally:
        state["triton"].close()


def _live(triton: tgrpc.InferenceServerClient) -> bool:
    try:
        return bool(triton.is_server_live())
    except InferenceServerException:  # connection refused while it starts
        return False


def _health(port: int, service: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def _wait_health(port: int, service: str, want: int, within_s: float) -> None:
    give_up = time.monotonic() + within_s
    while (got := _health(port, service)) != want:
        assert time.monotonic() < give_up, f"{service or 'overall'} health {got}, expected {want} within {within_s}s"
        time.sleep(0.2)


def test_registered_query_serves_at_once_and_ten_scenarios_equal_ten_single_calls(  # type: ignore[no-untyped-def]
        online) -> None:
    client, admin = online["client"], online["admin"]
    for name, query in zip(NAMES, QUERIES):
        admin.register_scenario(name, query)  # zero-shot version 1, servable at once

    multi = client.get_user_embeddings(USER, NAMES)
    assert [r.WhichOneof("result") for r in multi.results] == ["embedding"] * len(NAMES), multi
    vectors = np.asarray([r.embedding.values for r in multi.results])
    assert all(r.embedding.prompt_version == "zero-shot" and not r.embedding.fallback for r in multi.results)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert not np.allclose(vectors[0], vectors[1])  # the query anchors the embedding

    for name, expected in zip(NAMES, vectors):
        single = client.get_embedding(USER, name).embedding
        assert single.cache_hit  # the prefix computed by the multi-scenario call is reused
        np.testing.assert_allclose(single.values, expected, atol=1e-5)


def test_triton_down_is_unavailable_within_the_deadline_then_serving_recovers(  # type: ignore[no-untyped-def]
        online, stack_manager) -> None:
    client = online["client"]
    try:
        online["admin"].register_scenario(NAMES[0], QUERIES[0])
    except AlreadyExists:  # registered by the test above
        pass
    client.get_embedding(USER, NAMES[0])  # healthy first
    stack_manager.down(["triton"])
    try:
        deadline_s = 3.0
        started = time.monotonic()
        with pytest.raises((Unavailable, DeadlineExceeded)) as err:
            client.get_embedding(USER, NAMES[0], timeout_s=deadline_s)
        elapsed = time.monotonic() - started
        assert isinstance(err.value, Unavailable), f"expected UNAVAILABLE, got {err.value!r}"
        assert elapsed < deadline_s + 0.5, f"answered after {elapsed:.2f}s, past the {deadline_s}s deadline"
        # readiness follows the model server; liveness does not (a gateway restart would not bring Triton back)
        _wait_health(online["port"], SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING, within_s=10)
        assert _health(online["port"], "") == health_pb2.HealthCheckResponse.SERVING
    finally:
        stack_manager.up(["triton"])

    # A fresh client: the old channel sits in gRPC's reconnect backoff after the refused connections.
    online["triton"].close()
    triton = online["triton"] = tgrpc.InferenceServerClient(online["triton_url"])
    give_up = time.monotonic() + 120
    while not _live(triton):
        assert time.monotonic() < give_up, "triton did not come back"
        time.sleep(0.5)
    if not triton.is_model_ready("qanchor"):
        triton.load_model("qanchor")
    while True:  # the gateway reconnects on its own: no restart, no reconfiguration
        try:
            e = client.get_embedding(USER, NAMES[0], timeout_s=30.0).embedding
            break
        except Unavailable:
            if time.monotonic() > give_up:
                raise
            time.sleep(1.0)
    assert e.dim > 0 and not e.fallback and not e.cache_hit  # a restarted Triton starts with an empty prefix cache
    _wait_health(online["port"], SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING, within_s=10)
