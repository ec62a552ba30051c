"""Interceptors against a real in-process gRPC server on a free port (no network beyond localhost)."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from services.common.errors import NotFound
from services.common.grpc_server import Servicer, create_server
from services.common.interceptors import Access, default_interceptors
from services.common.logging import request_id_var
from services.common.proto.qanchor.v1 import registry_pb2 as pb
from services.common.proto.qanchor.v1 import registry_pb2_grpc as pb_grpc
from services.common.settings import GrpcServerSettings

SVC = "/qanchor.v1.ScenarioRegistry/"


class _Impl(pb_grpc.ScenarioRegistryServicer):
    def GetScenario(self, request: pb.GetScenarioRequest, context: grpc.ServicerContext) -> pb.Scenario:
        if request.name == "missing":
            raise NotFound("scenario 'missing' is not registered; register it first")
        if request.name == "crash":
            raise ValueError("secret internal detail")
        if request.name == "abort":
            context.abort(grpc.StatusCode.OUT_OF_RANGE, "servicer aborted itself")
        # The request id is visible to handler code (and its logs) while the RPC runs.
        return pb.Scenario(name=request.name, description=request_id_var.get() or "")

    def RegisterScenario(self, request: pb.RegisterScenarioRequest, context: grpc.ServicerContext) -> pb.Scenario:
        return pb.Scenario(name=request.name)

    def ListScenarios(self, request: pb.ListScenariosRequest, context: grpc.ServicerContext) -> Any:
        return pb.ListScenariosResponse()


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[grpc.Channel, CollectorRegistry]]:
    registry = CollectorRegistry()
    policy = {SVC + "RegisterScenario": Access.ADMIN, SVC + "ListScenarios": Access.PUBLIC}
    settings = GrpcServerSettings(grpc_port=0)
    srv, port = create_server(
        settings,
        Servicer(pb_grpc.add_ScenarioRegistryServicer_to_server, _Impl(), "qanchor.v1.ScenarioRegistry"),
        interceptors=default_interceptors("demo", "tok", "adm", policy, registry=registry),
    )
    srv.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield channel, registry
    channel.close()
    srv.stop(0).wait()


def _stub(server: tuple[grpc.Channel, CollectorRegistry]) -> pb_grpc.ScenarioRegistryStub:
    return pb_grpc.ScenarioRegistryStub(server[0])


def _call(stub_method: Any, request: Any, token: str | None = "tok", request_id: str | None = None) -> Any:
    md = []
    if token:
        md.append(("authorization", f"Bearer {token}"))
    if request_id:
        md.append(("x-request-id", request_id))
    return stub_method.with_call(request, metadata=md, timeout=5)


def _code(fn: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value  # type: ignore[return-value]


def test_request_id_is_propagated_and_returned(server: Any) -> None:
    stub = _stub(server)
    resp, call = _call(stub.GetScenario, pb.GetScenarioRequest(name="promo"), request_id="abc-123")
    assert resp.description == "abc-123"
    assert ("x-request-id", "abc-123") in tuple(call.trailing_metadata())
    resp, call = _call(stub.GetScenario, pb.GetScenarioRequest(name="promo"))
    generated = dict(call.trailing_metadata())["x-request-id"]
    assert len(generated) == 32 and resp.description == generated


def test_auth_policy(server: Any) -> None:
    stub = _stub(server)
    get = pb.GetScenarioRequest(name="promo")
    assert _code(lambda: _call(stub.GetScenario, get, token=None)).code() == grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: _call(stub.GetScenario, get, token="wrong")).code() == grpc.StatusCode.UNAUTHENTICATED
    assert _call(stub.GetScenario, get, token="tok")[0].name == "promo"
    assert _call(stub.GetScenario, get, token="adm")[0].name == "promo"  # admin token also reads
    reg = pb.RegisterScenarioRequest(name="x")
    err = _code(lambda: _call(stub.RegisterScenario, reg, token="tok"))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "admin token" in err.details()
    assert _code(lambda: _call(stub.RegisterScenario, reg, token=None)).code() == grpc.StatusCode.UNAUTHENTICATED
    assert _call(stub.RegisterScenario, reg, token="adm")[0].name == "x"
    assert _call(stub.ListScenarios, pb.ListScenariosRequest(), token=None)[1].code() == grpc.StatusCode.OK


def test_error_mapping(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    stub = _stub(server)
    err = _code(lambda: _call(stub.GetScenario, pb.GetScenarioRequest(name="missing")))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "register it first" in err.details()
    with caplog.at_level(logging.ERROR):
        err = _code(lambda: _call(stub.GetScenario, pb.GetScenarioRequest(name="crash"), request_id="rid-9"))
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == "internal error (request id rid-9)"  # no internal detail leaks to the caller
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None  # logged once, with traceback
    err = _code(lambda: _call(stub.GetScenario, pb.GetScenarioRequest(name="abort")))
    assert err.code() == grpc.StatusCode.OUT_OF_RANGE and err.details() == "servicer aborted itself"


def test_metrics_count_by_code(server: Any) -> None:
    stub, registry = _stub(server), server[1]

    def count(code: str) -> float:
        v = registry.get_sample_value(
            "qanchor_grpc_requests_total", {"service": "demo", "method": "GetScenario", "code": code})
        return v or 0.0

    before_ok, before_nf, before_auth = count("OK"), count("NOT_FOUND"), count("UNAUTHENTICATED")
    before_hist = registry.get_sample_value(
        "qanchor_grpc_request_seconds_count", {"service": "demo", "method": "GetScenario"}) or 0.0
    _call(stub.GetScenario, pb.GetScenarioRequest(name="promo"))
    _call(stub.GetScenario, pb.GetScenarioRequest(name="promo"))
    _code(lambda: _call(stub.GetScenario, pb.GetScenarioRequest(name="missing")))
    _code(lambda: _call(stub.GetScenario, pb.GetScenarioRequest(name="promo"), token=None))
    assert count("OK") - before_ok == 2
    assert count("NOT_FOUND") - before_nf == 1
    assert count("UNAUTHENTICATED") - before_auth == 1
    after_hist = registry.get_sample_value(
        "qanchor_grpc_request_seconds_count", {"service": "demo", "method": "GetScenario"})
    assert after_hist - before_hist == 4
