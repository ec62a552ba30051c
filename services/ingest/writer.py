"""The ingest service's view of the online store: read users' current features, write new rows.

Thin on purpose: `services.common.features_online` owns the Feast reads and writes (FeatureReader / FeatureWriter);
this module only adapts them to the two calls the consumer needs, so the consumer is testable with an in-memory
store.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

from services.common.features import FeatureSpec, UserFeatures


class FeatureStoreIO(Protocol):
    def get(self, user_ids: Sequence[str]) -> list[UserFeatures]:
        """Current features in `user_ids` order; `found=False` for unknown users."""

    def write(self, rows: Sequence[UserFeatures]) -> None:
        """Write whole rows; each user's row lands atomically (features and feature_version together)."""


class FeastFeatureStore:
    """FeatureStoreIO over Feast via services.common.features' reader and writer."""

    def __init__(self, location: Path, spec: FeatureSpec) -> None:
        from services.common.feast_store import get_store
        from services.common.features_online import FeatureReader, FeatureWriter

        store = get_store(location)
        self._reader = FeatureReader(store, spec)
        self._writer = FeatureWriter(store, spec)

    def get(self, user_ids: Sequence[str]) -> list[UserFeatures]:
        return self._reader.get(list(user_ids))

    def warm_up(self) -> None:
        """One read of an id no producer uses, before taking partitions: Feast loads its registry and opens the
        online store lazily, and that first-call cost (seconds on a busy CPU) would otherwise land on the first
        batch's freshness."""
        self._reader.get(["__qanchor_ingest_warm_up__"])

    def write(self, rows: Sequence[UserFeatures]) -> None:
        self._writer.write(list(rows))
