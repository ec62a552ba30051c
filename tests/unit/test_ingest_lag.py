"""The lag gauge counts what Kafka counts (end offset - committed offset) for the owned partitions; latency and
event-time lag are two histograms (a replay of history must not read as slow ingest)."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("prometheus_client", reason="services env only (the worker's metrics)")

from prometheus_client import CollectorRegistry, Gauge

from services.common.features import FeatureSpec, SourceSpec, UserFeatures
from services.ingest.consumer import IngestLimits, IngestWorker
from services.ingest.dlq import DeadLetterQueue
from services.ingest.encoder import CachedEncoder
from services.ingest.lag import LagMonitor, partition_lag
from services.ingest.metrics import IngestMetrics
from services.ingest.transform import IngestSpec
from test_ingest_worker import Rec


def test_partition_lag_counts_from_the_commit_or_the_log_start() -> None:
    assert partition_lag({0: 100, 1: 50, 2: 7}, {0: 60, 1: None, 2: 7}, {0: 0, 1: 20, 2: 0}) == {0: 40, 1: 30, 2: 0}


class FakeReader:
    def __init__(self) -> None:
        self.lags = {0: 35_000, 1: 12, 2: 0}
        self.closed = False

    def read(self) -> dict[int, int]:
        return dict(self.lags)

    def close(self) -> None:
        self.closed = True


def test_monitor_exports_owned_partitions_and_drops_moved_ones() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("lag", "lag", ["partition"], registry=registry)
    owned = {"now": frozenset({0, 1})}
    monitor = LagMonitor(FakeReader(), gauge, owned=lambda: owned["now"])
    assert monitor.poll_once() == {0: 35_000, 1: 12}
    assert registry.get_sample_value("lag", {"partition": "0"}) == 35_000
    owned["now"] = frozenset({1})  # partition 0 moved to another member
    monitor.poll_once()
    assert registry.get_sample_value("lag", {"partition": "0"}) == 0  # reported by its new owner now
    assert registry.get_sample_value("lag", {"partition": "1"}) == 12
    monitor.stop()
    assert monitor.reader.closed


class Store:
    def __init__(self) -> None:
        self.rows: dict[str, UserFeatures] = {}

    def get(self, user_ids):  # type: ignore[no-untyped-def]
        return [self.rows.get(u) or UserFeatures.missing(u) for u in user_ids]

    def write(self, rows):  # type: ignore[no-untyped-def]
        self.rows.update({r.user_id: r for r in rows})


class Encoder:
    def encode(self, texts):  # type: ignore[no-untyped-def]
        return np.zeros((len(texts), 384), np.float16)


def test_a_replay_of_history_has_a_large_event_lag_and_a_small_latency() -> None:
    now = 1_800_000_000.0
    spec = IngestSpec(features=FeatureSpec(sources=(SourceSpec("a", 4),), tabular_dim=2), window_s={"a": 1e12})
    metrics = IngestMetrics.create()
    worker = IngestWorker(None, DeadLetterQueue(None, "dlq", "g", time.time), Store(),
                          CachedEncoder(Encoder(), 10), spec, metrics, IngestLimits(), clock=lambda: now)
    old = now - 26 * 365 * 86400  # a 1999-style event time
    value = json.dumps({"schema_version": 1, "event_id": "e1", "user_id": "u1", "source": "a", "ts": old,
                        "text": "Rated 'Heat (1995)' 5/5"}).encode()
    record = Rec(0, 0, b"u1", value)
    record.timestamp = int((now - 1.5) * 1000)  # Kafka record time, ms
    worker.process([record])
    r = metrics.registry
    assert r.get_sample_value("qanchor_ingest_latency_seconds_sum") == pytest.approx(1.5)
    assert r.get_sample_value("qanchor_ingest_event_lag_seconds_sum") == pytest.approx(26 * 365 * 86400)
    assert r.get_sample_value("qanchor_ingest_latency_seconds_bucket", {"le": "2.0"}) == 1
