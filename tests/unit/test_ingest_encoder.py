"""The two-level text-vector cache (services/ingest/encoder.py): in-process L1 + content-addressed Redis L2.

Pure logic with a dict standing in for Redis; tests/integration/test_ingest_vector_cache.py runs it on a real
Redis and Triton.
"""
from __future__ import annotations

import numpy as np

from services.ingest.encoder import CachedEncoder, RedisVectorCache

DIM = 384


class DictRedis:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.ttl: dict[bytes, int] = {}
        self.down = False
        self.mgets = 0

    def mget(self, keys):
        if self.down:
            raise ConnectionError("redis down")
        self.mgets += 1
        return [self.data.get(k) for k in keys]

    def pipeline(self, transaction=True):
        return _Pipe(self)


class _Pipe:
    def __init__(self, r: DictRedis) -> None:
        self.r, self.ops = r, []

    def set(self, key, value, ex=None):
        self.ops.append((key, value, ex))

    def execute(self):
        if self.r.down:
            raise ConnectionError("redis down")
        for k, v, ex in self.ops:
            self.r.data[k], self.r.ttl[k] = v, ex


class Backend:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def encode(self, texts):
        self.seen.extend(texts)
        out = np.zeros((len(texts), DIM), np.float16)
        for i, t in enumerate(texts):
            out[i] = np.random.default_rng(sum(t.encode())).standard_normal(DIM).astype(np.float16)
        return out


def test_l2_is_shared_across_encoders_and_exact():
    redis = DictRedis()
    first = CachedEncoder(Backend(), 100, RedisVectorCache(redis, "enc/v1", DIM, ttl_s=60))
    a = first.encode_many(["x", "y", "x"])
    assert (first.hits, first.l2_hits, first.misses) == (0, 0, 2)
    assert len(redis.data) == 2 and set(redis.ttl.values()) == {60}
    backend = Backend()
    second = CachedEncoder(backend, 100, RedisVectorCache(redis, "enc/v1", DIM))  # a restarted / other replica
    b = second.encode_many(["y", "x", "z"])
    assert backend.seen == ["z"] and (second.l2_hits, second.misses) == (2, 1)
    for t in ("x", "y"):
        assert b[t].dtype == np.float16 and b[t].tobytes() == a[t].tobytes()  # same bytes as a fresh encode
    second.encode_many(["x"])
    assert second.hits == 1 and redis.mgets == 2  # L1 answers before Redis is asked


def test_key_is_content_addressed_per_encoder_id():
    r = DictRedis()
    v1, v2 = RedisVectorCache(r, "enc/v1", DIM), RedisVectorCache(r, "enc/v2", DIM)
    assert v1.key("movie") == v1.key("movie") != v1.key("movie ")
    assert v1.key("movie") != v2.key("movie")  # new weights or tokenisation never read old vectors
    v1.put_many({"movie": np.ones(DIM, np.float16)})
    assert v2.get_many(["movie"]) == {} and set(v1.get_many(["movie"])) == {"movie"}


def test_wrong_sized_value_is_a_miss():
    r = DictRedis()
    cache = RedisVectorCache(r, "enc/v1", DIM)
    r.data[cache.key("t")] = b"\x00" * 10
    backend = Backend()
    enc = CachedEncoder(backend, 10, cache)
    out = enc.encode_many(["t"])
    assert backend.seen == ["t"] and out["t"].shape == (DIM,)
    assert len(r.data[cache.key("t")]) == 2 * DIM  # repaired by the fresh encode


def test_redis_down_falls_back_to_the_encoder():
    r = DictRedis()
    r.down = True
    cache = RedisVectorCache(r, "enc/v1", DIM)
    backend = Backend()
    enc = CachedEncoder(backend, 10, cache)
    out = enc.encode_many(["a", "b"])
    assert set(out) == {"a", "b"} and backend.seen == ["a", "b"] and cache.errors == 2  # read and write failed
    r.down = False
    enc2 = CachedEncoder(Backend(), 10, cache)
    assert enc2.encode_many(["a"]) and enc2.misses == 1  # nothing was stored while it was down


def test_l1_bound_holds_with_l2_hits():
    r = DictRedis()
    CachedEncoder(Backend(), 10, RedisVectorCache(r, "e", DIM)).encode_many([f"t{i}" for i in range(20)])
    enc = CachedEncoder(Backend(), 5, RedisVectorCache(r, "e", DIM))
    enc.encode_many([f"t{i}" for i in range(20)])
    assert enc.l2_hits == 20 and len(enc._cache) == 5
