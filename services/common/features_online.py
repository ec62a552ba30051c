"""Feast-backed feature reads and writes (services env only; the model env imports `features` without this).

`FeatureReader.get` is the gateway's hot path: ONE batched `get_online_features` call against the versioned
FeatureService, decoded straight from the response proto (no pandas, no per-value type dispatch). A user the
store does not know comes back `found=False, feature_version=0`: a cold start, never an exception.

`FeatureWriter.write` is the ingest service's write path: one online write per FeatureView for the whole batch
(one in total with the default single-view layout), the same write a PushSource push performs. It writes exactly
what it is given; version bumps and idempotence belong to the ingest service.
"""
from __future__ import annotations

import logging
import sqlite3
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from services.common.errors import Unavailable
from services.common.features import ENTITY_KEY, FeatureSpec, UserFeatures, from_feature_dict, to_push_columns
from training.data.sources import INGEST_FIELDS

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore
    from feast.protos.feast.serving.ServingService_pb2 import GetOnlineFeaturesResponse

log = logging.getLogger(__name__)


def _store_error(exc: Exception) -> bool:
    # Failures that mean "the online store is unreachable", worth a retry by the caller (gRPC UNAVAILABLE).
    try:
        import redis

        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            return True
    except ImportError:  # feast[redis] not installed: SQLite only
        pass
    return isinstance(exc, (sqlite3.OperationalError, ConnectionError, TimeoutError))


def _value(v: Any) -> Any:
    """A feast Value proto -> plain Python (lists for list types, None when unset)."""
    kind = v.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    inner = getattr(v, kind)
    return list(inner.val) if kind.endswith("_list_val") else inner


def response_columns(proto: "GetOnlineFeaturesResponse") -> dict[str, list[Any]]:
    """Column-oriented values of an online response, like `OnlineResponse.to_dict()` but ~direct from proto."""
    return {name: [_value(v) for v in vector.values]
            for name, vector in zip(proto.metadata.feature_names.val, proto.results)}


class FeatureReader:
    """Batched online reads of the FeatureService named in sources.yaml.

    `serving=True` (the gateway, tuning snapshots, the demo) asks only for what the model reads: the service's
    features minus ingest's bookkeeping (`recent_event_ids`, `stats_state`: the sufficient statistics, ~5 KB a user
    that the gateway would fetch and decode on every call for nothing). Ingest reads everything (serving=False).
    """

    def __init__(self, store: "FeatureStore", spec: FeatureSpec, serving: bool = False) -> None:
        self.store = store
        self.spec = spec
        self.serving = serving
        self._service: "FeatureService | None" = None
        self._refs: list[str] | None = None

    def _feature_service(self) -> "FeatureService":
        if self._service is None:
            try:
                self._service = self.store.get_feature_service(self.spec.feature_service)
            except Exception as exc:
                raise Unavailable(f"feature service {self.spec.feature_service!r} is not in the Feast registry "
                                  f"({exc}); run the stack's feast step (feast apply) first") from exc
        return self._service

    def _features(self) -> "FeatureService | list[str]":
        """What one lookup asks for: the whole service, or its features minus ingest's ("view:feature" refs)."""
        service = self._feature_service()
        if not self.serving:
            return service
        if self._refs is None:
            self._refs = [f"{p.name}:{f.name}" for p in service.feature_view_projections for f in p.features
                          if f.name not in INGEST_FIELDS]
        return self._refs

    def get(self, user_ids: Sequence[str]) -> list[UserFeatures]:
        """Features of `user_ids`, same order and length; unknown users are `found=False`."""
        if not user_ids:
            return []
        t0 = time.perf_counter()
        try:
            response = self.store.get_online_features(
                features=self._features(),
                entity_rows=[{ENTITY_KEY: uid} for uid in user_ids],
            )
        except Unavailable:
            raise
        except Exception as exc:
            if _store_error(exc):
                raise Unavailable(f"feature store unreachable ({type(exc).__name__}: {exc}); retry with "
                                  "backoff, and check the online store in feature_store.yaml is up") from exc
            raise
        rows = from_feature_dict(user_ids, response_columns(response.proto), self.spec)
        log.debug("features read", extra={"users": len(rows), "found": sum(r.found for r in rows),
                                          "ms": round((time.perf_counter() - t0) * 1000, 2)})
        return rows


class FeatureWriter:
    """Pushes complete per-user feature rows to the online store."""

    def __init__(self, store: "FeatureStore", spec: FeatureSpec) -> None:
        self.store = store
        self.spec = spec
        self._plan: list[tuple[str, list[str]]] | None = None

    def _views(self) -> list[tuple[str, list[str]]]:
        """(view, feature columns) per view of the service, in write order."""
        if self._plan is None:
            service = FeatureReader(self.store, self.spec)._feature_service()
            plan = []
            for projection in service.feature_view_projections:
                view = self.store.get_feature_view(projection.name)
                if view.stream_source is None:
                    raise Unavailable(f"feature view {view.name!r} has no PushSource; re-apply feature_repo/")
                plan.append((view.name, [f.name for f in view.features]))
            # feature_repo/definitions.py puts everything in one view (one atomic row); should a service ever span
            # several, the view holding feature_version goes last: its new value must never be visible before the
            # data it versions.
            self._plan = sorted(plan, key=lambda p: "feature_version" in p[1])
        return self._plan

    def write(self, rows: Sequence[UserFeatures]) -> None:
        """Write `rows` (validated first: a bad row fails the call before anything is written)."""
        if not rows:
            return
        t0 = time.perf_counter()
        cols = to_push_columns(rows, self.spec)
        # Feast's event time for the row; with skip_dedup (Redis) and upserts (SQLite) the last write wins.
        now = datetime.now(timezone.utc)
        cols["event_timestamp"] = [datetime.fromtimestamp(r.updated_at, timezone.utc) if r.updated_at > 0 else now
                                   for r in rows]
        frame = pd.DataFrame(cols)
        plan = self._views()
        try:
            for view, features in plan:
                # What `store.push(<view>_push, df)` does for PushMode.ONLINE, minus its two registry listings
                # per call (every view, every service; ~1/3 of a 32-user write): we already know the one view.
                self.store.write_to_online_store(view, frame[[ENTITY_KEY, "event_timestamp", *features]])
        except Exception as exc:
            if _store_error(exc):
                raise Unavailable(f"feature store unreachable while writing {len(rows)} users "
                                  f"({type(exc).__name__}: {exc}); retry the batch (writes are idempotent)") from exc
            raise
        log.info("features written", extra={"users": len(rows), "views": len(plan),
                                            "ms": round((time.perf_counter() - t0) * 1000, 1)})
