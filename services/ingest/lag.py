"""Consumer lag as Kafka itself counts it: per partition, the log's end offset minus the group's committed offset.

Ingest commits only after the features are written, so this is the number of records not yet servable. It is
read on a timer by its own client (`GroupLagReader`), not from the worker's fetch position (which runs ahead of
what is written) nor from the high watermark of the last fetch (stale while a long batch runs): a gauge that
read 368 while ~35,000 records were queued was the reason. Each member exports the partitions it owns (0 for one
it gave away), so the sum over members is the group's lag.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Mapping, Protocol

log = logging.getLogger(__name__)


def partition_lag(ends: Mapping[int, int], committed: Mapping[int, int | None],
                  beginnings: Mapping[int, int]) -> dict[int, int]:
    """Records behind per partition; a partition with nothing committed yet is behind by everything it holds."""
    out = {}
    for p, end in ends.items():
        done = committed.get(p)
        out[p] = max(0, end - (done if done is not None else beginnings.get(p, 0)))
    return out


class LagReader(Protocol):
    def read(self) -> dict[int, int]: ...

    def close(self) -> None: ...


class GroupLagReader:
    """Reads the group's committed offsets and the topic's end offsets with a client of its own (no subscribe,
    so it never joins the group)."""

    def __init__(self, bootstrap: str, group_id: str, topic: str, **client_config: Any) -> None:
        from kafka import KafkaConsumer

        self.topic = topic
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False,
                                       client_id=f"{group_id}-lag", **client_config)

    def read(self) -> dict[int, int]:
        from kafka import TopicPartition

        parts = [TopicPartition(self.topic, p) for p in sorted(self._consumer.partitions_for_topic(self.topic) or [])]
        if not parts:
            return {}
        ends = self._consumer.end_offsets(parts)
        beginnings = self._consumer.beginning_offsets(parts)
        committed = {tp.partition: self._consumer.committed(tp) for tp in parts}
        return partition_lag({tp.partition: ends[tp] for tp in parts}, committed,
                             {tp.partition: beginnings[tp] for tp in parts})

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class LagMonitor:
    """Refreshes the lag gauge every `interval_s` for the partitions `owned()` returns (None = all of them)."""

    def __init__(self, reader: LagReader, gauge: Any, owned: Callable[[], frozenset[int] | None],
                 interval_s: float = 5.0) -> None:
        self.reader, self.gauge, self.owned, self.interval_s = reader, gauge, owned, interval_s
        self._shown: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_warning = 0.0

    def poll_once(self) -> dict[int, int]:
        lags = self.reader.read()
        owned = self.owned()
        shown = {p: lag for p, lag in lags.items() if owned is None or p in owned}
        for p in self._shown - set(shown):  # a partition that moved to another member: its lag is theirs now
            self.gauge.labels(partition=str(p)).set(0)
        for p, lag in shown.items():
            self.gauge.labels(partition=str(p)).set(lag)
        self._shown = set(shown)
        return shown

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ingest-lag", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll_once()
            except Exception as exc:  # best effort: a slow coordinator must never take the consumer down
                if time.monotonic() - self._last_warning > 60:
                    self._last_warning = time.monotonic()
                    log.warning("lag refresh failed", extra={"error": type(exc).__name__, "detail": str(exc)[:300]})

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
        self.reader.close()
