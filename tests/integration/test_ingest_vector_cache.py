"""The shared L2 text-vector cache on a real Redis and Triton: one consumer's vectors serve the next one.

A restarted (or second) consumer starts with an empty in-process cache; the texts it needs were encoded by the
first, so it must get every one of them from Redis, byte-identical, and call Triton for none.
"""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from ingest_harness import (  # noqa: F401  (ctx is a fixture)
    VOCAB, ctx, event, new_topic, produce, read_users, running_consumer, wait_caught_up,
)
from services.ingest.encoder import CachedEncoder, RedisVectorCache, TritonTextEncoder

pytestmark = pytest.mark.integration


class CountingTriton(TritonTextEncoder):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.texts = 0

    def encode(self, texts):
        self.texts += len(texts)
        return super().encode(texts)


def test_second_encoder_reads_every_vector_from_redis(ctx):
    enc_id = f"test/{uuid.uuid4().hex[:8]}"
    texts = VOCAB[:40]
    first_backend = CountingTriton(ctx.triton)
    l2 = RedisVectorCache.from_url(ctx.redis_url, enc_id, ttl_s=600)
    first = CachedEncoder(first_backend, 1000, l2).encode_many(texts)
    assert first_backend.texts == 40

    second_backend = CountingTriton(ctx.triton)
    second = CachedEncoder(second_backend, 1000, RedisVectorCache.from_url(ctx.redis_url, enc_id))
    got = second.encode_many(texts)
    assert second_backend.texts == 0 and second.l2_hits == 40
    for t in texts:
        assert got[t].dtype == np.float16 and got[t].tobytes() == np.asarray(first[t], np.float16).tobytes()
    ttl = l2.client.ttl(l2.key(texts[0]))
    assert 0 < ttl <= 600  # bounded: entries expire
    other = CachedEncoder(CountingTriton(ctx.triton), 10, RedisVectorCache.from_url(ctx.redis_url, enc_id + "b"))
    other.encode_many(texts[:3])
    assert other.l2_hits == 0 and other.misses == 3  # another encoder id never reads these vectors
    for enc in (first_backend, second_backend):
        enc.close()


def test_restarted_consumer_encodes_nothing_already_in_redis(ctx, monkeypatch):
    monkeypatch.setenv("INGEST_ENCODER_ID", f"test/{uuid.uuid4().hex[:8]}")
    run = uuid.uuid4().hex[:6]
    texts = VOCAB[40:70]

    def one_consumer(name: str) -> dict[str, float]:
        topic, group = new_topic(ctx), f"g-{uuid.uuid4().hex[:6]}"
        users = [f"{run}-{name}-u{i}" for i in range(6)]
        produce(ctx, topic, [(u.encode(), event(u, i, 1_700_000_000 + i, text=texts[i % len(texts)]))
                             for i in range(60) for u in users[i % 6:i % 6 + 1]])
        with running_consumer(ctx, topic, group, name) as c:
            wait_caught_up(ctx, group, topic, [c.proc])
            m = c.metrics()
        rows = read_users(ctx.feast_config, users)
        assert all(r.found for r in rows.values())
        return m

    m1 = one_consumer("a")
    assert m1['qanchor_ingest_encoder_cache_total{result="miss"}'] == len(texts)
    m2 = one_consumer("b")  # a new process: empty L1, same texts
    assert m2['qanchor_ingest_encoder_cache_total{result="miss"}'] == 0
    assert m2['qanchor_ingest_encoder_cache_total{result="l2_hit"}'] == len(texts)
