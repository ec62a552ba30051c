"""The batch worker's ordering and crash safety, driven with tiny in-memory stand-ins (pure logic).

The real Kafka/Feast/Triton versions of these properties are in tests/integration/test_ingest_*.py.
"""
from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

pytest.importorskip("prometheus_client", reason="services env only (the worker's metrics)")

from services.common.features import FeatureSpec, SourceSpec, UserFeatures
from services.ingest.consumer import IngestLimits, IngestWorker
from services.ingest.dlq import DeadLetterQueue
from services.ingest.encoder import CachedEncoder
from services.ingest.metrics import IngestMetrics
from services.ingest.transform import IngestSpec

DIM = 384


@dataclass
class Rec:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    topic: str = "events"
    headers: list = field(default_factory=list)


class Crash(Exception):
    pass


class MemStore:
    def __init__(self) -> None:
        self.rows: dict[str, UserFeatures] = {}
        self.fail_after: int | None = None  # write this many rows, then "crash"

    def get(self, user_ids):
        return [copy.deepcopy(self.rows[u]) if u in self.rows else UserFeatures.missing(u) for u in user_ids]

    def write(self, rows):
        for i, r in enumerate(rows):
            if self.fail_after is not None and i >= self.fail_after:
                raise Crash("store write interrupted")
            self.rows[r.user_id] = copy.deepcopy(r)


class HashEncoder:
    calls = 0

    def encode(self, texts):
        self.calls += 1
        out = np.zeros((len(texts), DIM), np.float16)
        for i, t in enumerate(texts):
            out[i] = np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(DIM) / 20
        return out


class Future:
    def get(self, timeout=None):
        return None


class MemProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, list]] = []

    def send(self, topic, key=None, value=None, headers=None):
        self.sent.append((topic, key, value, headers))
        return Future()

    def flush(self, timeout=None):
        pass


SPEC = IngestSpec(features=FeatureSpec(sources=(SourceSpec("a", 4), SourceSpec("b", 3)), tabular_dim=2),
                  window_s={"a": 50_000.0, "b": 80_000.0})


def worker(store, producer=None, encoder=None):
    return IngestWorker(None, DeadLetterQueue(producer or MemProducer(), "dlq", "g", time.time), store,
                        encoder or CachedEncoder(HashEncoder(), 1000), SPEC, IngestMetrics.create(),
                        IngestLimits(max_poll_interval_s=300))


def make_log(n: int, users: int = 12, partitions: int = 3, seed: int = 0) -> list[Rec]:
    rng = random.Random(seed)
    offsets = [0] * partitions
    out = []
    for i in range(n):
        uid = f"user{rng.randrange(users)}"
        p = int(uid[4:]) % partitions
        if rng.random() < 0.05:
            value = b'{"broken'
        elif rng.random() < 0.08:
            value = json.dumps({"schema_version": 1, "event_id": f"t{i}", "user_id": uid, "kind": "tabular",
                                "ts": 1000 + i * 37, "vector": [rng.random(), i]}).encode()
        else:
            value = json.dumps({"schema_version": 1, "event_id": f"e{i}", "user_id": uid, "kind": "event",
                                "source": rng.choice("ab"), "ts": 1000 + i * 37 - rng.randrange(3000),
                                "text": f"item {rng.randrange(40)}"}).encode()
        out.append(Rec(p, offsets[p], uid.encode(), value))
        offsets[p] += 1
    return out


def snapshot(store: MemStore) -> dict:
    out = {}
    for uid, r in store.rows.items():
        out[uid] = (r.feature_version, r.tabular.tolist(),
                    {s: (v.texts, v.timestamps.tolist(), v.vectors.tobytes()) for s, v in sorted(r.sources.items())})
    return out


def clean_replay(log: list[Rec], batch: int = 25) -> dict:
    store = MemStore()
    w = worker(store)
    for i in range(0, len(log), batch):
        w.process(log[i:i + batch])
    return snapshot(store)


def test_malformed_goes_to_dlq_with_origin_and_stream_goes_on():
    store, prod = MemStore(), MemProducer()
    good = json.dumps({"schema_version": 1, "event_id": "e", "user_id": "u", "source": "a", "ts": 5,
                       "text": "x"}).encode()
    bad = json.dumps({"schema_version": 1, "event_id": "e", "user_id": "u", "source": "nope", "ts": 5,
                      "text": "x"}).encode()
    res = worker(store, prod).process([Rec(0, 7, b"u", bad), Rec(0, 8, b"u", good), Rec(0, 9, b"v", b"junk")])
    assert (res.dlq, res.applied, res.users_written) == (2, 1, 1)
    topic, key, value, headers = prod.sent[0]
    h = dict(headers)
    assert topic == "dlq" and value == bad and key == b"u"
    assert h["qanchor.reason"] == b"unknown_source" and h["qanchor.offset"] == b"7"
    assert h["qanchor.partition"] == b"0" and h["qanchor.topic"] == b"events"
    assert dict(prod.sent[1][3])["qanchor.reason"] == b"invalid_json"
    assert store.rows["u"].sources["a"].texts == ["x"]


def test_encoder_cache_encodes_each_distinct_text_once():
    enc = HashEncoder()
    cache = CachedEncoder(enc, capacity=2)
    a = cache.encode_many(["x", "y", "x"])
    assert set(a) == {"x", "y"} and (cache.hits, cache.misses) == (0, 2)
    b = cache.encode_many(["x", "z"])
    np.testing.assert_array_equal(a["x"], b["x"])
    assert (cache.hits, cache.misses) == (1, 3) and len(cache._cache) == 2  # LRU bound holds


def test_replay_of_processed_batch_is_a_no_op():
    log = make_log(200)
    store = MemStore()
    w = worker(store)
    w.process(log[:100])
    before = snapshot(store)
    res = w.process(log[:100])
    assert res.applied == 0 and res.users_written == 0 and res.duplicates > 0
    assert snapshot(store) == before


@pytest.mark.parametrize("seed", range(6))
def test_random_crashes_equal_clean_replay(seed):
    """Crash before the write, mid-write (some users landed) or after the write but before the commit;
    restart from the last commit each time: the final store equals a clean single pass."""
    rng = random.Random(seed)
    log = make_log(400, seed=seed)
    expected = clean_replay(log)
    store = MemStore()
    committed = 0  # one consumer reading the merged log in order; commit = index of the next record
    crashes = 0
    while committed < len(log):
        w = worker(store)  # a restarted process: empty encoder cache, nothing in memory
        pos = committed
        while pos < len(log):
            batch = log[pos:pos + rng.randint(1, 40)]
            crash = rng.choice(["none", "none", "before_write", "mid_write", "before_commit"])
            store.fail_after = rng.randint(0, 3) if crash == "mid_write" else None
            if crash == "before_write":
                crashes += 1
                break
            try:
                w.process(batch)
            except Crash:
                crashes += 1
                break
            finally:
                store.fail_after = None
            if crash == "before_commit":
                crashes += 1
                break
            pos += len(batch)
            committed = pos
    assert crashes > 5
    assert snapshot(store) == expected
