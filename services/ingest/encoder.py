"""Client of the Triton `text_encoder` model, behind two caches of text -> vector.

Behaviour texts repeat a lot (the same merchant, page or movie for many users), so the caches skip most encoder
calls on real streams. L1 is an in-process LRU; L2 (`RedisVectorCache`) is content-addressed in Redis, shared by
every consumer and surviving restarts, so a new or restarted replica does not re-encode the catalogue.
`hits` / `l2_hits` / `misses` are exported as metrics so the hit rate is visible, not assumed.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any, Protocol, Sequence

import numpy as np

log = logging.getLogger(__name__)


class EncoderUnavailable(RuntimeError):
    """Triton could not encode a batch; the consumer retries the batch without committing."""


class TextEncoderBackend(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dim] unit-norm vectors."""


class TritonTextEncoder:
    """Encodes texts with Triton over gRPC in chunks of `max_batch` (the model's max_batch_size)."""

    def __init__(self, url: str, model: str = "text_encoder", max_batch: int = 256, timeout_s: float = 30.0) -> None:
        import tritonclient.grpc as grpcclient  # imported here so pure-logic tests need no Triton client

        self._grpc = grpcclient
        self.client = grpcclient.InferenceServerClient(url=url)
        self.url, self.model, self.max_batch, self.timeout_s = url, model, max_batch, timeout_s

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        import time

        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if self.client.is_model_ready(self.model):
                    return
            except Exception as exc:  # server still starting
                last = exc
            time.sleep(0.5)
        raise EncoderUnavailable(f"Triton model {self.model!r} at {self.url} is not ready after {timeout_s:.0f}s "
                                 f"({last}); export it with `python -m training.export.text_encoder` and check "
                                 "that Triton serves $QANCHOR_STATE_DIR/model_repository")

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        parts = []
        for start in range(0, len(texts), self.max_batch):
            chunk = texts[start:start + self.max_batch]
            arr = np.array([t.encode("utf-8") for t in chunk], dtype=np.object_).reshape(-1, 1)  # [n, 1]
            inp = self._grpc.InferInput("TEXT", list(arr.shape), "BYTES")
            inp.set_data_from_numpy(arr)
            try:
                res = self.client.infer(self.model, [inp], outputs=[self._grpc.InferRequestedOutput("EMBEDDING")],
                                        client_timeout=self.timeout_s)
            except Exception as exc:
                raise EncoderUnavailable(f"text_encoder at {self.url} failed on {len(chunk)} texts: {exc}") from exc
            out = res.as_numpy("EMBEDDING")
            if out is None or out.shape[0] != len(chunk):
                raise EncoderUnavailable(f"text_encoder returned {None if out is None else out.shape} for "
                                         f"{len(chunk)} texts; check the model env has numpy<2")
            parts.append(out)
        return np.concatenate(parts) if parts else np.zeros((0, 384), np.float16)

    def close(self) -> None:
        self.client.close()


class RedisVectorCache:
    """L2 text -> float16 vector cache in Redis, content-addressed: key = hash(encoder id, text).

    The encoder id names the weights and tokenisation (e.g. `all-MiniLM-L6-v2/ml64`): change it when either
    changes, and old vectors are simply never read again (they expire with the TTL). Values are the raw
    little-endian float16 bytes the feature store keeps, so a cached vector and a fresh one give identical rows.
    Redis is an optimisation here: any Redis error is logged and the texts go to the encoder instead.
    """

    KEY_PREFIX = "qanchor:textvec:"

    def __init__(self, client: Any, encoder_id: str, dim: int = 384, ttl_s: int = 30 * 86400) -> None:
        self.client, self.encoder_id, self.dim, self.ttl_s = client, encoder_id, dim, ttl_s
        self.errors = 0
        self._last_error_log = 0.0

    @classmethod
    def from_url(cls, url: str, encoder_id: str, dim: int = 384, ttl_s: int = 30 * 86400) -> "RedisVectorCache":
        import redis  # imported here so pure-logic tests need no Redis client

        # Short timeouts: a slow Redis must cost a batch milliseconds, not stall it (the encoder is the fallback).
        client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        return cls(client, encoder_id, dim, ttl_s)

    def key(self, text: str) -> bytes:
        digest = hashlib.blake2b(f"{self.encoder_id}\0{text}".encode("utf-8"), digest_size=16).hexdigest()
        return (self.KEY_PREFIX + digest).encode()

    def get_many(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among `texts` (one MGET); a value of the wrong size counts as a miss."""
        if not texts:
            return {}
        try:
            values = self.client.mget([self.key(t) for t in texts])
        except Exception as exc:
            self._error("read", exc)
            return {}
        out: dict[str, np.ndarray] = {}
        for t, v in zip(texts, values):
            if v is not None and len(v) == 2 * self.dim:
                out[t] = np.frombuffer(v, dtype="<f2")  # [dim], read-only view
        return out

    def put_many(self, vectors: dict[str, np.ndarray]) -> None:
        if not vectors:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for t, v in vectors.items():
                pipe.set(self.key(t), np.asarray(v, dtype="<f2").tobytes(), ex=self.ttl_s)
            pipe.execute()
        except Exception as exc:
            self._error("write", exc)

    def _error(self, op: str, exc: Exception) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._last_error_log > 30.0:  # one line per 30 s, not one per batch, while Redis is down
            self._last_error_log = now
            log.warning(f"vector cache {op} failed, encoding instead (check INGEST_VECTOR_CACHE_URL and that Redis "
                        "is up)", extra={"errors": self.errors, "error": type(exc).__name__, "detail": str(exc)[:300]})

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing a dead connection is not worth an error at shutdown
            pass


class CachedEncoder:
    """L1 LRU (+ optional L2 Redis) in front of a backend; encodes each distinct missing text once per call."""

    def __init__(self, backend: TextEncoderBackend, capacity: int = 100_000,
                 l2: RedisVectorCache | None = None) -> None:
        self.backend, self.capacity, self.l2 = backend, capacity, l2
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0  # L1
        self.l2_hits = 0
        self.misses = 0  # sent to the backend

    def encode_many(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """text -> [dim] vector for every distinct text."""
        out: dict[str, np.ndarray] = {}
        missing: list[str] = []
        for t in dict.fromkeys(texts):  # distinct, first-seen order
            vec = self._cache.get(t)
            if vec is None:
                missing.append(t)
            else:
                self._cache.move_to_end(t)
                out[t] = vec
        self.hits += len(out)
        if missing and self.l2 is not None:
            found = self.l2.get_many(missing)
            self.l2_hits += len(found)
            for t, v in found.items():
                out[t] = v
                self._remember(t, v)
            missing = [t for t in missing if t not in found]
        self.misses += len(missing)
        if missing:
            vecs = np.asarray(self.backend.encode(missing))  # [m, dim]
            fresh = dict(zip(missing, vecs))
            for t, v in fresh.items():
                out[t] = v
                self._remember(t, v)
            if self.l2 is not None:
                self.l2.put_many(fresh)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return out

    def _remember(self, text: str, vec: np.ndarray) -> None:
        if self.capacity > 0:
            self._cache[text] = vec
