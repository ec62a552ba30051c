"""The gateway learns model versions published through the registry: they become valid A/B targets (the known
model set is Triton's list plus the registry's published versions) and the promoted one serves arms that name no
model version, all without a restart. Registry: real, in-process (SQLite file); model and features: the unit fakes."""
from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from services.common.errors import Unavailable
from services.gateway.ab_config import ConfigError, ValidationUnavailable, load_config, validate_against
from services.gateway.clients.registry import ModelCatalog
from services.gateway.core import GatewayCore
from services.gateway.metrics import GatewayMetrics
from services.gateway.server import known_models
from services.gateway.settings import GatewaySettings
from services.registry.client import RegistryClient
from test_gateway_fakes import FakeFeatures, FakeModel, FakeRegistry, StaticRouting, user

from tests.unit.test_registry_servicer import stack  # noqa: F401  (the registry on a free port, SQLite file)

SHA = "ef" * 32
AB = """
salt: unit
scenarios:
  concert:
    arms:
      - {name: old, weight: 50, prompt_version: zero-shot, model_version: m1}
      - {name: new, weight: 50, prompt_version: zero-shot, model_version: m2}
"""


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class ServedModel(FakeModel):
    def known_model_versions(self) -> set[str]:
        return {"m1"}  # what config.pbtxt listed when Triton loaded the model


def test_published_version_becomes_an_ab_target_and_promoted_the_default(stack) -> None:  # noqa: F811
    app, port = stack
    models = app.servicer.models
    clock = Clock()
    with RegistryClient(f"127.0.0.1:{port}", token="tok") as client:
        catalog = ModelCatalog(client, ttl_s=5.0, clock=clock)
        known = known_models(GatewaySettings(), ServedModel(), catalog)
        cfg = load_config(AB)
        assert known() == {"m1"}
        with pytest.raises(ConfigError, match="unknown model 'm2'"):
            validate_against(cfg, FakeRegistry("concert"), known())

        models.register("m2", artifact_uri="/exports/m2", sha256=SHA)
        models.publish("m2", "/srv/model_repository")
        assert known() == {"m1"}  # cached for ttl_s
        clock.t = 5.0
        assert known() == {"m1", "m2"}
        validate_against(cfg, FakeRegistry("concert"), known())  # the arm may route to m2 now

        model = FakeModel()
        core = GatewayCore(FakeFeatures([user("alice")]), FakeRegistry("churn"), model,
                           StaticRouting("salt: unit\n"), metrics=GatewayMetrics(CollectorRegistry()),
                           default_model=catalog.promoted)
        assert core.get_embedding("alice", "churn")[0].model_version == "m-default"  # the model server's default
        models.promote("m2")
        clock.t = 10.0
        known()  # the A/B watcher's poll refreshes the catalog; requests only read it
        item, _ = core.get_embedding("alice", "churn")
        assert item.model_version == "m2" and model.requests[-1].model_version == "m2"


def test_registry_down_keeps_the_last_answer_and_fails_closed_before_any(stack) -> None:  # noqa: F811
    app, port = stack
    app.servicer.models.register("m2", artifact_uri="/exports/m2", sha256=SHA)
    app.servicer.models.publish("m2", "/srv")
    clock = Clock()
    with RegistryClient(f"127.0.0.1:{port}", token="tok") as client:
        catalog = ModelCatalog(client, ttl_s=1.0, clock=clock)
        assert catalog.refresh() == {"m2"}

        def down(*_a, **_k):
            raise Unavailable("registry down")

        client.list_models = down  # type: ignore[method-assign]
        clock.t = 2.0
        assert catalog.refresh() == {"m2"}
        fresh = ModelCatalog(client, ttl_s=1.0, clock=clock)
        with pytest.raises(ValidationUnavailable):
            known_models(GatewaySettings(), ServedModel(), fresh)()


def test_a_registry_without_model_versions_means_none_published() -> None:
    """Rolling upgrade: a gateway that knows ListModels in front of a registry that does not yet."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    old = grpc.server(ThreadPoolExecutor(1))  # serves no method at all: UNIMPLEMENTED "Method not found!"
    port = old.add_insecure_port("127.0.0.1:0")
    old.start()
    try:
        with RegistryClient(f"127.0.0.1:{port}") as client:
            catalog = ModelCatalog(client, ttl_s=0.0)
            assert catalog.refresh() == frozenset() and catalog.promoted() == ""
            assert known_models(GatewaySettings(), ServedModel(), catalog)() == {"m1"}
    finally:
        old.stop(0)
