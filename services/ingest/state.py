"""Per-partition memory of the rows this consumer wrote, so a batch can skip the online-store read for them.

Why it is safe: a user's events all live in one partition (record key = user_id), and while this consumer owns
that partition it is the only writer of the user's row (docs/ingest.md, "One writer per user"). So the row it
wrote last *is* the stored row, byte for byte, until the partition leaves it. The cache therefore holds only
rows this process wrote, keyed by the partition they came from, and forgets them whenever that could stop being
true:
  - the partition is revoked or (re)assigned: another member may have written in between;
  - a batch fails anywhere (store, encoder, too slow, commit after a rebalance): a failed write may have landed
    for some users and not others, so what we remember could be older than the store;
  - the process restarts: memory is gone, and the first batch reads the store (the effectively-once mark lives
    in the stored row, never here).
A read is skipped only on a hit; anything else reads the store as before.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Iterable

from services.common.features import UserFeatures

log = logging.getLogger(__name__)


class PartitionUserState:
    """LRU of user -> last written row, per partition; `capacity` bounds the users held in all partitions."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._rows: dict[int, OrderedDict[str, UserFeatures]] = {}
        self._size = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return self._size

    def get(self, partition: int, user_id: str) -> UserFeatures | None:
        rows = self._rows.get(partition)
        row = rows.get(user_id) if rows is not None else None
        if row is None:
            self.misses += 1
            return None
        rows.move_to_end(user_id)
        self.hits += 1
        return row

    def put(self, partition: int, row: UserFeatures) -> None:
        """Remember a row after it was written (never before: an unwritten row must not stand in for the store)."""
        if self.capacity <= 0:
            return
        rows = self._rows.setdefault(partition, OrderedDict())
        if row.user_id not in rows:
            self._size += 1
        rows[row.user_id] = row
        rows.move_to_end(row.user_id)
        while self._size > self.capacity:
            self._evict_one()

    def _evict_one(self) -> None:
        # Evict from the largest partition: keeps the bound simple without a global LRU across partitions.
        part = max(self._rows, key=lambda p: len(self._rows[p]))
        self._rows[part].popitem(last=False)
        self._size -= 1
        if not self._rows[part]:
            del self._rows[part]

    def forget_partitions(self, partitions: Iterable[int], reason: str) -> None:
        dropped = 0
        for p in set(partitions):
            rows = self._rows.pop(p, None)
            if rows:
                dropped += len(rows)
        self._size -= dropped
        if dropped:
            log.info("user state forgotten", extra={"reason": reason, "users": dropped})

    def clear(self, reason: str) -> None:
        self.forget_partitions(list(self._rows), reason)
