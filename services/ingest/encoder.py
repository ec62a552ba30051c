"""Client of the Triton `text_encoder` model, with an LRU cache of text -> vector.

Behaviour texts repeat a lot (the same merchant, page or movie for many users), so the cache skips most encoder
calls on real streams; `hits`/`misses` are exported as metrics so the hit rate is visible, not assumed.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Protocol, Sequence

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


class CachedEncoder:
    """LRU text -> vector cache in front of a backend; encodes each distinct missing text once per call."""

    def __init__(self, backend: TextEncoderBackend, capacity: int = 100_000) -> None:
        self.backend, self.capacity = backend, capacity
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

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
        self.misses += len(missing)
        if missing:
            vecs = np.asarray(self.backend.encode(missing))  # [m, dim]
            for t, v in zip(missing, vecs):
                out[t] = v
                if self.capacity > 0:
                    self._cache[t] = v
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return out
