"""create_server wiring (health, reflection, limits, bind errors) and serve()'s graceful SIGTERM path."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.errors import Unavailable
from services.common.grpc_server import ReadinessMonitor, Servicer, create_server, mark_serving
from services.common.proto.qanchor.v1 import registry_pb2 as pb
from services.common.proto.qanchor.v1 import registry_pb2_grpc as pb_grpc
from services.common.settings import GrpcServerSettings, repo_root

NAME = "qanchor.v1.ScenarioRegistry"


class _Echo(pb_grpc.ScenarioRegistryServicer):
    def RegisterScenario(self, request: pb.RegisterScenarioRequest, context: grpc.ServicerContext) -> pb.Scenario:
        return pb.Scenario(name=request.name, query_text=request.query_text)


def _server(**kw: object) -> tuple[grpc.Server, int]:
    settings = GrpcServerSettings(grpc_port=0, admin_token="adm", **kw)  # type: ignore[arg-type]
    return create_server(settings, Servicer(pb_grpc.add_ScenarioRegistryServicer_to_server, _Echo(), NAME))


def test_health_reflection_and_message_limit() -> None:
    server, port = _server(max_message_bytes=64 * 1024)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            hstub = health_pb2_grpc.HealthStub(ch)
            req = health_pb2.HealthCheckRequest(service=NAME)
            assert hstub.Check(req, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
            mark_serving(server, [NAME])
            assert hstub.Check(req, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
            assert hstub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING

            rstub = reflection_pb2_grpc.ServerReflectionStub(ch)
            replies = rstub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            names = {s.name for r in replies for s in r.list_services_response.service}
            assert {NAME, "grpc.health.v1.Health"} <= names

            stub = pb_grpc.ScenarioRegistryStub(ch)
            md = [("authorization", "Bearer adm")]
            ok = stub.RegisterScenario(pb.RegisterScenarioRequest(name="ab", query_text="q" * 1000),
                                       metadata=md, timeout=5)
            assert ok.query_text == "q" * 1000
            with pytest.raises(grpc.RpcError) as info:
                stub.RegisterScenario(pb.RegisterScenarioRequest(name="ab", query_text="q" * 100_000),
                                      metadata=md, timeout=5)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        server.stop(0).wait()


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        with pytest.raises(Unavailable, match="cannot bind"):
            create_server(GrpcServerSettings(grpc_port=busy))


_SERVE = textwrap.dedent("""
    import sys
    from services.common.grpc_server import Servicer, serve
    from services.common.logging import setup_logging
    from services.common.proto.qanchor.v1 import registry_pb2_grpc as pb_grpc
    from services.common.settings import GrpcServerSettings
    setup_logging("demo", "INFO")
    serve(GrpcServerSettings(grpc_port=int(sys.argv[1]), grace_seconds=1, token="t"),
          Servicer(pb_grpc.add_ScenarioRegistryServicer_to_server, pb_grpc.ScenarioRegistryServicer(),
                   "qanchor.v1.ScenarioRegistry"),
          service="demo", on_stop=[lambda: print("on_stop ran", flush=True)])
""")


def test_serve_stops_gracefully_on_sigterm() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", _SERVE, str(port)], cwd=repo_root(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            hstub = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 20
            status = None
            while time.monotonic() < deadline:
                try:
                    status = hstub.Check(health_pb2.HealthCheckRequest(service=NAME), timeout=1).status
                    break
                except grpc.RpcError:
                    time.sleep(0.1)
            assert status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "on_stop ran" in out
    assert 'msg=serving' in err and "signal=SIGTERM" in err and "msg=stopped" in err


def test_readiness_monitor_follows_the_dependency_and_leaves_liveness_alone(caplog) -> None:
    server, port = _server()
    server.start()
    mark_serving(server, [NAME])
    up = {"value": True}

    def check() -> bool:
        if up["value"] is None:
            raise ConnectionError("refused")
        return bool(up["value"])

    monitor = ReadinessMonitor(server, [NAME], check, interval_s=3600)  # driven by poll_once, not the thread
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            hstub = health_pb2_grpc.HealthStub(ch)

            def status(name: str) -> int:
                return hstub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status

            assert monitor.poll_once() and status(NAME) == serving
            up["value"] = False
            assert not monitor.poll_once() and status(NAME) == not_serving
            assert status("") == serving  # liveness untouched
            up["value"] = None  # a check that raises is "not ready", not a crash
            assert not monitor.poll_once() and status(NAME) == not_serving
            up["value"] = True
            with caplog.at_level("INFO", logger="services.common.grpc_server"):
                assert monitor.poll_once() and status(NAME) == serving
            assert any(getattr(r, "event", "") == "readiness_changed" and getattr(r, "ready", "") == "true"
                       for r in caplog.records)
    finally:
        monitor.stop()
        server.stop(0)


def test_a_server_without_a_token_refuses_to_start_unless_told_it_is_a_dev_server() -> None:
    from services.common.grpc_server import InsecureServer, require_token
    from services.gateway.settings import GatewaySettings
    from services.registry.settings import RegistrySettings

    for settings, prefix in ((GatewaySettings(), "GATEWAY_"), (RegistrySettings(), "REGISTRY_")):
        with pytest.raises(InsecureServer, match=f"{prefix}TOKEN is not set.*{prefix}ALLOW_NO_TOKEN=true"):
            require_token(settings)
    require_token(GatewaySettings(token="t"))
    require_token(RegistrySettings(allow_no_token=True))


def test_gateway_main_refuses_to_start_open(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    proc = subprocess.run([sys.executable, "-m", "services.gateway"], env=dict(env, QANCHOR_STATE_DIR=str(tmp_path)),
                          capture_output=True, text=True, timeout=120, cwd=repo_root())
    assert proc.returncode == 2 and "GATEWAY_TOKEN is not set" in proc.stderr
