"""The gateway over real gRPC (in-process server on a free port) with fakes of its three backends.

Also: the real tritonclient adapter against a port nobody listens on (UNAVAILABLE within the deadline) and the
tensors it builds (docs/gateway.md contract).
"""
from __future__ import annotations

import socket
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from services.common.errors import DeadlineExceeded, InvalidArgument, NotFound, Unauthenticated, Unavailable
from services.common.grpc_server import mark_serving
from services.gateway.embedding_client import EmbeddingClient
from services.gateway.clients.triton import ServedCounts, TritonModelClient, build_inputs, served_counts
from services.gateway.core import ModelRequest
from services.gateway.metrics import GatewayMetrics
from services.gateway.ab_config import ConfigError
from services.gateway.server import build_gateway, create_gateway_server
from services.gateway.servicer import SERVICE_NAME
from services.gateway.settings import GatewaySettings
from test_gateway_fakes import AB_YAML, SPEC, FakeFeatures, FakeModel, FakeRegistry, expected_embedding, scenario, user

TOKEN = "s3cret"


class SlowModel(FakeModel):
    def infer(self, requests, timeout_s):  # type: ignore[no-untyped-def]
        time.sleep(timeout_s + 0.05)  # a model that overruns any budget it is given
        raise AssertionError("a real client would have timed out")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(tmp_path: Path, model=None, ab_text: str = AB_YAML, **settings_kw):  # type: ignore[no-untyped-def]
    ab = tmp_path / "ab.yaml"
    ab.write_text(ab_text)
    settings = GatewaySettings(grpc_port=0, token=TOKEN, ab_config=ab, ab_poll_s=0.05, model_versions=["m1", "m7"],
                               **settings_kw)
    gateway = build_gateway(settings, features=FakeFeatures([user("alice"), user("bob")]),
                            registry=FakeRegistry("concert", "churn", "promo"), model=model or FakeModel(),
                            metrics=GatewayMetrics(CollectorRegistry()))
    server, port = create_gateway_server(settings, gateway)
    server.start()
    mark_serving(server, [SERVICE_NAME])
    return gateway, server, f"127.0.0.1:{port}"


@pytest.fixture()
def running(tmp_path: Path):  # type: ignore[no-untyped-def]
    gateway, server, target = start(tmp_path)
    client = EmbeddingClient(target, token=TOKEN)
    yield gateway, client, target, tmp_path
    client.close()
    server.stop(0)
    gateway.close()


def test_get_embedding_over_grpc(running) -> None:  # type: ignore[no-untyped-def]
    gateway, client, *_ = running
    resp = client.get_embedding("alice", "churn")
    e = resp.embedding
    np.testing.assert_allclose(e.values, expected_embedding("alice", "churn", "zero-shot", 3), rtol=1e-6)
    assert (e.dim, e.model_version, e.prompt_version, e.arm, e.feature_version) == (8, "m1", "zero-shot", "default", 3)
    assert e.feature_timestamp.ToNanoseconds() == 1_700_000_000_500_000_000 and not e.fallback
    assert resp.timing.total_ms > 0
    cold = client.get_embedding("nobody", "churn").embedding
    assert cold.fallback and cold.feature_version == 0 and not cold.HasField("feature_timestamp")
    m = gateway.metrics.registry
    assert m.get_sample_value("qanchor_gateway_stage_seconds_count", {"stage": "model"}) == 2
    assert m.get_sample_value("qanchor_gateway_ab_config_generation") == 1


def test_errors_map_to_grpc_codes(running) -> None:  # type: ignore[no-untyped-def]
    _, client, target, _ = running
    with pytest.raises(NotFound, match="ghost"):
        client.get_embedding("alice", "ghost")
    with pytest.raises(InvalidArgument):
        client.get_embedding("", "churn")
    with pytest.raises(InvalidArgument, match="GATEWAY_MAX_BATCH_ITEMS"):
        client.batch_get([("alice", "churn")] * 257)
    with EmbeddingClient(target) as anonymous, pytest.raises(Unauthenticated):
        anonymous.get_embedding("alice", "churn")
    with EmbeddingClient(target, token="wrong") as wrong, pytest.raises(Unauthenticated):
        wrong.get_embedding("alice", "churn")


def test_user_embeddings_and_batch_carry_per_item_errors(running) -> None:  # type: ignore[no-untyped-def]
    gateway, client, *_ = running
    resp = client.get_user_embeddings("alice", ["churn", "ghost", "promo"])
    assert [r.WhichOneof("result") for r in resp.results] == ["embedding", "error", "embedding"]
    assert resp.results[1].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert len(gateway.core.model.requests) == 1  # one model request for the user's two valid scenarios
    batch = client.batch_get([("alice", "churn"), ("bob", "promo"), ("bad id\n", "churn")])
    kinds = [r.WhichOneof("result") for r in batch.results]
    assert kinds == ["embedding", "embedding", "error"]
    assert batch.results[1].embedding.user_id == "bob"
    assert batch.results[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_health_and_reflection(running) -> None:  # type: ignore[no-untyped-def]
    _, _, target, _ = running
    with grpc.insecure_channel(target) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        assert SERVICE_NAME in {s.name for s in reply.list_services_response.service}


def test_ab_config_hot_reload_changes_arms_and_rejects_bad_edits(running) -> None:  # type: ignore[no-untyped-def]
    gateway, client, _, tmp_path = running
    assert client.get_embedding("alice", "promo").embedding.arm == "default"
    everyone_tuned = AB_YAML + "  promo:\n    arms:\n      - {name: all-tuned, weight: 100, prompt_version: v2}\n"
    (tmp_path / "ab.yaml").write_text(everyone_tuned)
    assert gateway.watcher.poll()
    e = client.get_embedding("alice", "promo").embedding
    assert (e.arm, e.prompt_version) == ("all-tuned", "v2")
    # Unknown model version: rejected, the previous config keeps serving.
    (tmp_path / "ab.yaml").write_text(everyone_tuned.replace("prompt_version: v2}", "prompt_version: v2, "
                                                             "model_version: m9}"))
    assert not gateway.watcher.poll()
    assert "unknown model 'm9'" in (gateway.watcher.last_error or "")
    assert client.get_embedding("alice", "promo").embedding.arm == "all-tuned"
    m = gateway.metrics.registry
    assert m.get_sample_value("qanchor_gateway_ab_reloads_total", {"result": "failure"}) == 1
    assert m.get_sample_value("qanchor_gateway_ab_config_generation") == 2


def test_bad_initial_config_refuses_to_start(tmp_path: Path) -> None:
    bad = AB_YAML.replace("prompt_version: 2", "prompt_version: 9")
    with pytest.raises(ConfigError, match=r"concert\.arms\[1\] \(tuned\)\.prompt_version: version 9"):
        start(tmp_path, ab_text=bad)


def test_deadline_exceeded_when_model_overruns(tmp_path: Path) -> None:
    gateway, server, target = start(tmp_path, model=SlowModel())
    try:
        with EmbeddingClient(target, token=TOKEN) as client:
            t0 = time.perf_counter()
            with pytest.raises(DeadlineExceeded):
                client.get_embedding("alice", "churn", timeout_s=0.2)
            assert time.perf_counter() - t0 < 0.5
    finally:
        server.stop(0)
        gateway.close()


def test_triton_down_is_unavailable_within_the_deadline(tmp_path: Path) -> None:
    model = TritonModelClient(f"127.0.0.1:{_free_port()}", SPEC)
    gateway, server, target = start(tmp_path, model=model)
    try:
        with EmbeddingClient(target, token=TOKEN) as client:
            t0 = time.perf_counter()
            with pytest.raises(Unavailable, match="unreachable"):
                client.get_embedding("alice", "churn", timeout_s=1.0)
            assert time.perf_counter() - t0 < 1.0
    finally:
        server.stop(0)
        gateway.close()
        model.close()


def test_triton_inputs_follow_the_contract() -> None:
    info = scenario("concert")
    req = ModelRequest(user=user("alice", n_liked=3), model_version="m1", scenarios=["concert", "churn"],
                       query_texts=["Q1", "Q2"], prompts=[info.versions[2], None])
    inputs = {i.name(): i for i in build_inputs(req, SPEC)}
    assert set(inputs) == {"USER_ID", "FEATURE_VERSION", "MODEL_VERSION", "EVENTS__liked", "MASK__liked",
                           "EVENTS__disliked", "MASK__disliked", "TABULAR", "SCENARIO", "QUERY_TEXT",
                           "PROMPT_VERSION", "PROMPT_ARTIFACT", "PROMPT_SHA256"}
    assert (inputs["EVENTS__liked"].shape(), inputs["EVENTS__liked"].datatype()) == ([4, 384], "FP16")
    assert (inputs["MASK__liked"].shape(), inputs["MASK__liked"].datatype()) == ([4], "BOOL")
    assert inputs["EVENTS__disliked"].shape() == [2, 384] and inputs["TABULAR"].shape() == [3]
    assert inputs["SCENARIO"].shape() == [2] and inputs["FEATURE_VERSION"].datatype() == "INT64"
    # Raw payloads: the mask marks the 3 real events (left-aligned), the prompt versions are "2" and "zero-shot".
    mask = np.frombuffer(inputs["MASK__liked"]._get_content(), dtype=bool)
    assert mask.tolist() == [True, True, True, False]
    vecs = np.frombuffer(inputs["EVENTS__liked"]._get_content(), dtype=np.float16).reshape(4, 384)
    np.testing.assert_array_equal(vecs[:3], user("alice", n_liked=3).sources["liked"].vectors)
    assert not vecs[3].any()
    assert b"zero-shot" in inputs["PROMPT_VERSION"]._get_content()


def test_served_counts_sum_the_statistics_of_every_loaded_version() -> None:
    class Stats:  # the JSON shape of Triton's statistics extension (a pure-logic test: no server involved)
        def get_inference_statistics(self, model_name: str, as_json: bool) -> dict:
            assert (model_name, as_json) == ("qanchor", True)
            return {"model_stats": [
                {"version": "1", "inference_count": "7", "execution_count": "3",
                 "inference_stats": {"success": {"count": "5", "ns": "10"}}},
                {"version": "2", "inference_count": "2", "execution_count": "2", "inference_stats": {}}]}

    assert served_counts(Stats(), "qanchor") == ServedCounts(  # type: ignore[arg-type]
        inferences=9, executions=5, successes=5)


def test_main_refuses_a_bad_ab_config_fast(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    bad = tmp_path / "ab.yaml"
    bad.write_text("salt: x\nscenarios:\n  s:\n    arms:\n      - {name: a, weight: 90, prompt_version: 1}\n")
    env = dict(os.environ, GATEWAY_AB_CONFIG=str(bad), GATEWAY_GRPC_PORT="0", QANCHOR_STATE_DIR=str(tmp_path),
               GATEWAY_TOKEN="t")
    proc = subprocess.run([sys.executable, "-m", "services.gateway"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "scenarios.s: Value error, arm weights must sum to 100" in proc.stderr
    assert "GATEWAY_AB_CONFIG" in proc.stderr


def test_cli_embed_prints_metadata_and_item_errors(  # type: ignore[no-untyped-def]
        running, monkeypatch, capsys) -> None:
    import json

    from services.cli.__main__ import main as cli_main

    _, _, target, _ = running
    monkeypatch.setenv("QANCHOR_GATEWAY_TARGET", target)
    monkeypatch.setenv("QANCHOR_GATEWAY_TOKEN", TOKEN)
    assert cli_main(["embed", "alice", "--scenario", "churn", "--brief", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["embeddings"][0]
    assert (row["user_id"], row["scenario"], row["feature_version"], row["arm"]) == ("alice", "churn", 3, "default")
    assert "values" not in row
    assert cli_main(["embed", "alice", "-s", "churn", "-s", "ghost", "--json"]) == 1  # one scenario failed
    rows = json.loads(capsys.readouterr().out)["embeddings"]
    assert len(rows[0]["values"]) == 8 and rows[1]["error"]["code"] == grpc.StatusCode.NOT_FOUND.value[0]


def test_two_gateways_in_one_process_share_the_default_metrics(tmp_path: Path) -> None:
    ab = tmp_path / "ab.yaml"
    ab.write_text(AB_YAML)
    settings = GatewaySettings(grpc_port=0, ab_config=ab, model_versions=["m1"])
    built = [build_gateway(settings, features=FakeFeatures([]), registry=FakeRegistry("concert"), model=FakeModel())
             for _ in range(2)]
    assert built[0].metrics is built[1].metrics is GatewayMetrics.shared()
    for g in built:
        g.close()


def test_cli_embed_finds_the_local_stack_without_token_handling(  # type: ignore[no-untyped-def]
        running, monkeypatch, capsys) -> None:
    """`qanchor embed USER -s NAME` right after `qanchor stack up`: address and client token come from the state
    dir the stack wrote (run/endpoints.json, run/tokens.json); nothing to export by hand."""
    import json

    from services.cli.__main__ import main as cli_main

    _, _, target, tmp_path = running
    run = tmp_path / "state" / "run"
    run.mkdir(parents=True)
    (run / "endpoints.json").write_text(json.dumps({"gateway": target}))
    (run / "tokens.json").write_text(json.dumps({"client": TOKEN, "admin": "adm"}))
    for name in ("QANCHOR_GATEWAY_TARGET", "QANCHOR_GATEWAY_TOKEN", "QANCHOR_PORT_BASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QANCHOR_STATE_DIR", str(tmp_path / "state"))
    assert cli_main(["embed", "alice", "-s", "churn"]) == 0
    out = capsys.readouterr().out
    assert "churn" in out and "zero-shot" in out
    assert cli_main(["embed", "alice", "-s", "churn", "--token", "wrong"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
