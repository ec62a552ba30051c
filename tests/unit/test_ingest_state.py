"""Skipping the online-store read for rows this consumer wrote itself (services/ingest/state.py), pure logic.

The same worker / in-memory store stand-ins as test_ingest_worker.py; the real Kafka + Feast version of the
crash property is tests/integration/test_ingest_crash.py (the service runs with the state cache on).
"""
from __future__ import annotations

import random
import time

import numpy as np
import pytest

pytest.importorskip("prometheus_client", reason="services env only (the worker's metrics)")

from services.common.features import SourceEvents, UserFeatures
from services.ingest.consumer import IngestLimits, IngestWorker
from services.ingest.dlq import DeadLetterQueue
from services.ingest.encoder import CachedEncoder
from services.ingest.metrics import IngestMetrics
from services.ingest.state import PartitionUserState
from test_ingest_worker import SPEC, Crash, HashEncoder, MemProducer, MemStore, clean_replay, make_log, snapshot


class CountingStore(MemStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def get(self, user_ids):
        self.reads.extend(user_ids)
        return super().get(user_ids)


def stateful_worker(store, capacity: int = 1000) -> IngestWorker:
    return IngestWorker(None, DeadLetterQueue(MemProducer(), "dlq", "g", time.time), store,
                        CachedEncoder(HashEncoder(), 1000), SPEC, IngestMetrics.create(),
                        IngestLimits(max_poll_interval_s=300), state=PartitionUserState(capacity))


def row(uid: str, version: int = 1) -> UserFeatures:
    return UserFeatures(user_id=uid, sources={"a": SourceEvents(texts=["t"], vectors=np.zeros((1, 384), np.float16),
                                                                  timestamps=np.array([1]))},
                        feature_version=version)


def test_state_lru_bound_and_forget():
    st = PartitionUserState(capacity=3)
    for i in range(4):
        st.put(i % 2, row(f"u{i}"))
    assert len(st) == 3 and st.get(0, "u0") is None  # the oldest of the largest partition went first
    assert st.get(1, "u1").user_id == "u1" and st.get(0, "u1") is None  # keyed by partition too
    st.forget_partitions([1], "revoked")
    assert len(st) == 1 and st.get(1, "u3") is None and st.get(0, "u2") is not None
    st.clear("test")
    assert len(st) == 0
    off = PartitionUserState(capacity=0)
    off.put(0, row("x"))
    assert off.get(0, "x") is None and len(off) == 0


def test_second_batch_reads_only_new_users_and_rows_equal_reading_path():
    log = make_log(400, seed=3)
    expected = clean_replay(log, batch=40)  # state off: reads the store every batch
    store = CountingStore()
    w = stateful_worker(store)
    for i in range(0, len(log), 40):
        w.process(log[i:i + 40])
    assert snapshot(store) == expected  # a remembered row is exactly what the read would have returned
    users = {r.key.decode() for r in log}
    assert len(store.reads) <= len(users) + 1  # each user read about once, then served from memory
    assert w.state.hits > 5 * w.state.misses


@pytest.mark.parametrize("seed", range(4))
def test_in_process_retries_after_mid_write_failures_equal_clean_replay(seed):
    """The worker survives its failures (run_batch's replay): the failed batch must forget remembered rows."""
    rng = random.Random(seed)
    log = make_log(400, seed=seed)
    expected = clean_replay(log)
    store = CountingStore()
    w = stateful_worker(store)
    pos = failures = 0
    while pos < len(log):
        batch = log[pos:pos + rng.randint(1, 40)]
        store.fail_after = rng.randint(0, 3) if rng.random() < 0.3 else None
        try:
            w.process(batch)
        except Crash:
            failures += 1
            assert len(w.state) == 0  # forgotten: some rows of the batch may have landed
            continue  # replay the same batch
        finally:
            store.fail_after = None
        pos += len(batch)
    assert failures > 3
    assert snapshot(store) == expected


def _partition0(log):
    return [r for r in log if r.partition == 0]


def test_partition_moving_away_and_back_is_reread():
    """A writes p0's users, p0 moves to B (B writes), then back to A: A must read B's rows, not its memory."""
    from services.ingest.group import RebalanceListener
    from kafka.structs import TopicPartition

    log = _partition0(make_log(600, seed=5))
    # A's last batch is short, so B's events are still inside every user's last K afterwards (visible if lost).
    thirds = [log[:len(log) // 2], log[len(log) // 2:-3], log[-3:]]
    expected = clean_replay(log)

    def run(forget: bool) -> dict:
        store = MemStore()
        a, b = stateful_worker(store), stateful_worker(store)
        listener_a = RebalanceListener(a.state)
        a.process(thirds[0])
        if forget:
            listener_a.on_partitions_revoked({TopicPartition("events", 0)})
        b.process(thirds[1])
        if forget:
            listener_a.on_partitions_assigned({TopicPartition("events", 0)})
        a.process(thirds[2])
        return snapshot(store)

    assert run(forget=True) == expected
    assert run(forget=False) != expected  # the stale memory would drop B's events: the listener is what saves it


def test_batch_too_slow_forgets_state():
    store = MemStore()
    w = stateful_worker(store)
    log = make_log(100, seed=1)
    w.process(log[:50])
    assert len(w.state) > 0
    w.batch_budget_s = -1.0  # every batch is "too slow" now
    from services.ingest.consumer import BatchTooSlow

    with pytest.raises(BatchTooSlow):
        w.process(log[50:])
    assert len(w.state) == 0


