"""Prometheus metrics of the gateway (the per-RPC count/latency come from services.common.interceptors).

Cache hit ratio in PromQL:
    sum(rate(qanchor_gateway_prefix_cache_total{result="hit"}[5m])) / sum(rate(qanchor_gateway_prefix_cache_total[5m]))
"""
from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# Sub-millisecond buckets: routing and a SQLite feature read take ~0.1 ms; the model takes 1 ms - seconds.
_STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class GatewayMetrics:
    _shared: "GatewayMetrics | None" = None

    @classmethod
    def shared(cls) -> "GatewayMetrics":
        """The process-wide instance on the default registry (a registry refuses the same metric twice, and a
        process may build more than one gateway: tests, benchmarks)."""
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else REGISTRY
        self.registry = r
        self.stage_seconds = Histogram(
            "qanchor_gateway_stage_seconds",
            "Time per pipeline stage of one call (route, features, model, total; overhead = total - model).",
            ["stage"], buckets=_STAGE_BUCKETS, registry=r)
        self.prefix_cache = Counter(
            "qanchor_gateway_prefix_cache", "Model requests by prefix-KV cache outcome (hit, miss).",
            ["result"], registry=r)
        self.arm_requests = Counter(
            "qanchor_gateway_arm_requests", "Embeddings requested per scenario and A/B arm.",
            ["scenario", "arm"], registry=r)
        self.arm_fallbacks = Counter(
            "qanchor_gateway_arm_fallbacks", "Items whose arm's prompt was no longer servable (served active).",
            ["scenario", "arm"], registry=r)
        self.fallbacks = Counter(
            "qanchor_gateway_cold_start", "Embeddings served cold-start (user unknown to the feature store).",
            registry=r)
        self.item_errors = Counter(
            "qanchor_gateway_item_errors", "Items answered with an error, by gRPC code.", ["code"], registry=r)
        self.ab_reloads = Counter(
            "qanchor_gateway_ab_reloads", "A/B config reload attempts (success, failure).", ["result"], registry=r)
        self.ab_generation = Gauge(
            "qanchor_gateway_ab_config_generation", "Generation of the A/B config in use (1 = initial load).",
            registry=r)

    # ReloadListener (services.gateway.ab_watcher)
    def reload_succeeded(self, generation: int) -> None:
        self.ab_reloads.labels("success").inc()
        self.ab_generation.set(generation)

    def reload_failed(self) -> None:
        self.ab_reloads.labels("failure").inc()
