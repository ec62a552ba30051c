"""A hung registry (SIGSTOP) stalls neither health nor the scenarios the gateway already knows.

The registry runs as the stack's own process (`qanchor stack up registry`), so the test can freeze it for real;
Triton serves the small contract model and Feast holds the user's features, as in test_gateway_stack.py.
"""
from __future__ import annotations

import os
import signal
import time

import grpc
import pytest
import tritonclient.grpc as tgrpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.errors import AlreadyExists, DeadlineExceeded, Unavailable
from services.common.feast_store import get_store
from services.common.features import load_feature_spec
from services.common.features_online import FeatureWriter
from services.gateway import contract_model
from services.gateway.servicer import SERVICE_NAME
from services.gateway.settings import GatewaySettings
from services.registry.client import RegistryClient
from services.stack.apps import read_tokens
from test_gateway_stack import features, serve_gateway

pytestmark = pytest.mark.integration
TOKEN = "hung-token"


def test_a_frozen_registry_stalls_neither_health_nor_known_scenarios(  # type: ignore[no-untyped-def]
        stack, stack_manager, tmp_path) -> None:
    stack_manager.up(["registry"])
    tokens = read_tokens(stack_manager.settings)
    registry_target = f"127.0.0.1:{stack_manager.settings.port('registry_grpc')}"
    with RegistryClient(registry_target, token=tokens.admin) as admin:
        for name, query in (("hung_known", "Will this user watch a film tonight?"),
                            ("hung_unseen", "Will this user buy popcorn?")):
            try:
                admin.register_scenario(name, query)
            except AlreadyExists:  # registered by an earlier test of this session's stack
                pass
    contract_model.install(stack.model_repository)
    triton = tgrpc.InferenceServerClient(stack.triton_grpc)
    triton.load_model(contract_model.NAME)
    FeatureWriter(get_store(stack.feast_config), load_feature_spec()).write([features("hung-user", 2, 3, time.time())])
    ab = tmp_path / "ab.yaml"
    ab.write_text("salt: hung\n")
    settings = GatewaySettings(grpc_port=0, token=TOKEN, ab_config=ab, triton_url=stack.triton_grpc,
                               triton_model=contract_model.NAME, registry_target=registry_target,
                               registry_token=tokens.client, registry_cache_ttl_s=0.2, registry_timeout_s=0.5,
                               feast_location=stack.feast_config)
    gateway, server, client = serve_gateway(settings, TOKEN, timeout_s=30.0)
    port = client.target.rsplit(":", 1)[1]
    pid = stack_manager.record("registry").pid
    try:
        assert client.get_embedding("hung-user", "hung_known").embedding.dim > 0  # now cached
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.3)  # past the cache TTL: the next lookup must go to the (frozen) registry
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:  # health answers, whatever the registry does
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                                                          timeout=10)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        # A known scenario: the lookup times out after registry_timeout_s and the last answer is served.
        e = client.get_embedding("hung-user", "hung_known").embedding
        assert e.scenario == "hung_known" and not e.fallback
        # One the gateway never saw: an error for that call, within its deadline, not a hang.
        with pytest.raises((Unavailable, DeadlineExceeded)):
            client.get_embedding("hung-user", "hung_unseen", timeout_s=5.0)
        # And the first one still serves after that.
        assert client.get_embedding("hung-user", "hung_known").embedding.scenario == "hung_known"
    finally:
        os.kill(pid, signal.SIGCONT)
        client.close()
        server.stop(0)
        gateway.close()
        triton.unload_model(contract_model.NAME)
        triton.close()
