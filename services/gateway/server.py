"""Wiring: settings -> clients -> A/B watcher -> core -> gRPC server. `python -m services.gateway` runs `main`."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import grpc

from services.common.errors import QAnchorError
from services.common.grpc_server import Servicer, create_server
from services.common.lifecycle import Closer, close_in_order
from services.common.proto.qanchor.v1 import embedding_pb2_grpc
from services.gateway.core import CoreLimits, FeatureSource, GatewayCore, ModelClient
from services.gateway.metrics import GatewayMetrics
from services.gateway.ab_config import (
    ABConfig, ConfigError, ScenarioLookup, ValidationUnavailable, load_config, validate_against,
)
from services.gateway.ab_watcher import ConfigWatcher
from services.gateway.servicer import SERVICE_NAME, EmbeddingServicer
from services.gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from services.gateway.clients.registry import ModelCatalog

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    core: GatewayCore
    watcher: ConfigWatcher
    metrics: GatewayMetrics
    closers: list[Closer] = field(default_factory=list)

    def servicer(self) -> Servicer:
        return Servicer(embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server, EmbeddingServicer(self.core),
                        SERVICE_NAME)

    def ready(self) -> bool:
        """Readiness: the model server answers and has the model loaded."""
        return bool(self.core.model.ready())

    def close(self) -> None:
        close_in_order("gateway", [("ab_watcher", self.watcher.stop), *self.closers])


def known_models(settings: GatewaySettings, model: ModelClient,
                 catalog: "ModelCatalog | None" = None) -> Callable[[], frozenset[str]]:
    """What A/B arms may name: GATEWAY_MODEL_VERSIONS if set, else the versions the model server lists in its
    config plus those published through the registry (the model server loads a published one on first use)."""
    def get() -> frozenset[str]:
        if settings.model_versions:
            return frozenset(settings.model_versions)
        try:
            served = frozenset(model.known_model_versions())
            return served | catalog.refresh() if catalog is not None else served
        except Exception as exc:  # fail closed: a config naming models cannot be checked without the model server
            raise ValidationUnavailable(f"cannot read the model versions from the model server or the registry "
                                        f"({exc!r}); the A/B config is checked again when they answer") from exc
    return get


def make_validator(registry: ScenarioLookup, models: Callable[[], frozenset[str]]) -> Callable[[ABConfig], None]:
    def validate(cfg: ABConfig) -> None:
        try:
            validate_against(cfg, registry, models())
        except ConfigError:
            raise
        except QAnchorError as exc:  # registry unreachable: cannot prove the config safe, so do not swap it in
            raise ValidationUnavailable(f"cannot validate against the registry: {exc.message}") from exc
    return validate


def build_gateway(settings: GatewaySettings, *, features: FeatureSource | None = None,
                  registry: ScenarioLookup | None = None, model: ModelClient | None = None,
                  metrics: GatewayMetrics | None = None) -> Gateway:
    """Real clients unless given (tests pass their own); the first A/B load must succeed."""
    # Structure first: a typo in the file should fail in milliseconds, before Feast's slow import.
    try:
        load_config(settings.ab_config.read_text(encoding="utf-8"), str(settings.ab_config))
    except OSError as exc:
        raise ConfigError(f"cannot read {settings.ab_config}: {exc}; set GATEWAY_AB_CONFIG") from exc
    closers: list[Closer] = []
    catalog: "ModelCatalog | None" = None
    if features is None:
        from services.gateway.clients.features import open_feature_source

        features = open_feature_source(settings)
    if registry is None:
        from services.gateway.clients.registry import ModelCatalog, RegistryLookup
        from services.registry.client import RegistryClient

        token = settings.registry_token.get_secret_value() if settings.registry_token else None
        lookup = RegistryLookup(RegistryClient(settings.resolved_registry_target(), token=token,
                                               timeout_s=settings.registry_timeout_s,
                                               cache_ttl_s=settings.registry_cache_ttl_s,
                                               negative_ttl_s=settings.registry_negative_ttl_s,
                                               tls=settings.registry_tls()))
        closers.append(("registry", lookup.close))
        registry = lookup
        catalog = ModelCatalog(lookup.client, ttl_s=settings.models_refresh_s)
    if model is None:
        from services.gateway.clients.triton_pool import pool_from_settings

        triton = pool_from_settings(settings, features.spec)  # one or more replicas, user affinity, failover
        closers.append(("triton", triton.close))
        model = triton
    metrics = metrics or GatewayMetrics.shared()
    models = known_models(settings, model, catalog)
    watcher = ConfigWatcher(settings.ab_config, make_validator(registry, models), listener=metrics,
                            interval_s=settings.ab_poll_s, models=models)
    watcher.load_initial()
    limits = CoreLimits(max_batch_items=settings.max_batch_items, max_scenarios=settings.max_scenarios,
                        default_timeout_s=settings.default_timeout_s, deadline_margin_s=settings.deadline_margin_s)
    core = GatewayCore(features, registry, model, watcher, limits, metrics,
                       default_model=catalog.promoted if catalog is not None else None)
    return Gateway(core, watcher, metrics, closers)


def create_gateway_server(settings: GatewaySettings, gateway: Gateway) -> tuple[grpc.Server, int]:
    """A bound, not started server (tests start it on port 0); health NOT_SERVING until marked."""
    return create_server(settings, gateway.servicer(), service="gateway")
