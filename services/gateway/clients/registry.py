"""The registry as the gateway's `ScenarioLookup` (the registry client's cached serving view, None for unknown
names) and `ModelCatalog` (published model versions and the promoted one).

The registry client caches answers for its TTL and serves a stale entry while the registry is unreachable, so
the registry is a control plane, not a reason to stop serving embeddings.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from services.common.errors import NotFound, QAnchorError
from services.common.proto.qanchor.v1 import registry_pb2 as pb
from services.registry.client import RegistryClient
from services.registry.serving_view import ScenarioInfo

log = logging.getLogger(__name__)


class RegistryLookup:
    """Implements `services.gateway.ab_config.ScenarioLookup`; unknown scenarios are None, not errors."""

    def __init__(self, client: RegistryClient) -> None:
        self.client = client

    def get_scenario(self, name: str, timeout_s: float | None = None) -> ScenarioInfo | None:
        try:
            return self.client.serving_info(name, timeout_s=timeout_s)
        except NotFound:
            return None

    def close(self) -> None:
        self.client.close()


class ModelCatalog:
    """Model versions published through the registry (`qanchor model publish`) and the promoted one.

    `refresh()` asks the registry at most every `ttl_s` and is called off the hot path (the A/B watcher's poll asks
    for the known model set); `promoted()` only reads the last answer, so a request never waits for the registry.
    While the registry is unreachable the last answer stays.
    """

    def __init__(self, client: RegistryClient, ttl_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._fetched_at: float | None = None
        self._servable: frozenset[str] | None = None
        self._promoted = ""

    def refresh(self) -> frozenset[str]:
        """Published + promoted versions; raises the registry's error only when there is no earlier answer."""
        now = self._clock()
        with self._lock:
            if self._servable is not None and self._fetched_at is not None and now - self._fetched_at < self.ttl_s:
                return self._servable
        try:
            models = self.client.list_models([pb.MODEL_STATE_PUBLISHED, pb.MODEL_STATE_PROMOTED])
        except QAnchorError as exc:
            if "Method not found" in exc.message:  # a registry older than model versions (rolling upgrade)
                log.warning("the registry has no ListModels yet: only the model server's versions are known; "
                            "upgrade the registry", extra={"event": "model_catalog_unsupported"})
                models = []
            else:
                return self._keep_last(now, exc)
        servable = frozenset(m.model_version for m in models)
        promoted = next((m.model_version for m in models if m.state == pb.MODEL_STATE_PROMOTED), "")
        with self._lock:
            changed = (servable, promoted) != (self._servable, self._promoted)
            self._servable, self._promoted, self._fetched_at = servable, promoted, now
        if changed:
            log.info("published model versions changed", extra={"event": "model_catalog_changed",
                                                                 "published": sorted(servable), "promoted": promoted})
        return servable

    def _keep_last(self, now: float, exc: QAnchorError) -> frozenset[str]:
        with self._lock:
            self._fetched_at = now  # retry after ttl_s, not on every call
            last = self._servable
        if last is None:
            raise exc
        log.warning("registry unreachable: keeping the last published model versions",
                    extra={"event": "model_catalog_stale", "error": exc.message})
        return last

    def promoted(self) -> str:
        """The promoted model version as last seen ("" = none promoted, or not fetched yet)."""
        return self._promoted
