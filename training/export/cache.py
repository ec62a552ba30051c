"""The serving caches: a byte-bounded LRU of per-user prefix KV caches and a soft-prompt store keyed by sha256.

Cache key rules (docs/serving_model.md, docs/gateway.md):
  - key = (model version, user id, feature version); a feature write bumps the version, so a stale prefix is
    never reused, and two model versions never share an entry;
  - feature version 0 means cold start: every cold user has the same empty prefix, so they share one entry
    keyed (model version, "", 0).
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import torch

from training.model.prefix_cache import PrefixCache

log = logging.getLogger(__name__)

CacheKey = tuple[str, str, int]

# gRPC status codes used per scenario (the gateway maps them with grpc.StatusCode)
INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, INTERNAL, DATA_LOSS = 3, 5, 9, 13, 15


def cache_key(model_version: str, user_id: str, feature_version: int) -> CacheKey:
    if feature_version < 0:
        raise ValueError(f"feature version must be >= 0 (0 = cold start), got {feature_version}")
    return (model_version, user_id if feature_version else "", int(feature_version))


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    rejected: int = 0  # entries larger than the whole budget: served, never stored


class PrefixLRU:
    """LRU of one-user `PrefixCache`s, bounded by the bytes their tensors hold (PrefixCache.nbytes)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.stats = CacheStats()
        self._entries: "OrderedDict[CacheKey, PrefixCache]" = OrderedDict()
        self._lock = threading.Lock()  # Triton calls execute from one thread; benchmarks and tests may not

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: CacheKey) -> bool:
        return key in self._entries

    def get(self, key: CacheKey) -> PrefixCache | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.stats.misses += 1
                return None
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return entry

    def put(self, key: CacheKey, entry: PrefixCache) -> bool:
        """Store a one-user cache; evicts least-recently-used entries until it fits. False if it never fits."""
        if entry.batch_size != 1:
            raise ValueError(f"store one user per entry, got a batch of {entry.batch_size}")
        size = entry.nbytes
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            if size > self.max_bytes:
                self.stats.rejected += 1
                return False
            while self._entries and self.nbytes + size > self.max_bytes:
                _, gone = self._entries.popitem(last=False)
                self.nbytes -= gone.nbytes
                self.stats.evictions += 1
            self._entries[key] = entry
            self.nbytes += size
            return True

    def drop_model_version(self, model_version: str) -> int:
        """Forget every entry of an unloaded model version; -> entries dropped."""
        with self._lock:
            gone = [k for k in self._entries if k[0] == model_version]
            for k in gone:
                self.nbytes -= self._entries.pop(k).nbytes
            return len(gone)


def own(cache: PrefixCache) -> PrefixCache:
    """Copy a one-user slice out of a batched cache: a view would pin the whole batch's tensors in the LRU."""
    return PrefixCache([k.clone() for k in cache.keys], [v.clone() for v in cache.values], cache.valid.clone(),
                       cache.next_pos.clone())


class PromptError(Exception):
    """A soft prompt could not be served; `status` is the per-scenario gRPC code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def artifact_path(uri: str) -> Path:
    """`file:///a/b`, `/a/b` or a relative path -> Path; the artifact is a folder (training.artifacts) or the
    `prompt.safetensors` file itself."""
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    if "://" in uri:
        raise PromptError(INVALID_ARGUMENT, f"prompt artifact {uri!r}: only local paths and file:// URIs are "
                                            "served; copy the artifact to the shared artifact volume")
    return Path(uri)


class PromptStore:
    """Soft prompts loaded on demand by (path, sha256) and cached by sha256, so a new prompt version serves
    without a restart and a re-used one costs a dict look-up. sha256 is that of `prompt.safetensors`."""

    def __init__(self, hidden: int, expect_model_id: str = "", max_entries: int = 1024) -> None:
        self.hidden = hidden
        self.expect_model_id = expect_model_id  # checkpoint id prompts must be tuned for ("" = not checked)
        self.max_entries = max_entries
        self.loads = 0
        self._by_sha: "OrderedDict[str, torch.Tensor]" = OrderedDict()

    def get(self, uri: str, sha256: str) -> torch.Tensor:
        """-> prompt [n_tokens, hidden] float32; n_tokens may be 0: a tuning job that kept the query alone
        (training.tune, kept_zero_shot) serves exactly the zero-shot embedding. Raises PromptError with the status."""
        sha = sha256.strip().lower()
        if not uri or len(sha) != 64:
            raise PromptError(INVALID_ARGUMENT, "a tuned prompt needs PROMPT_ARTIFACT and a 64-hex PROMPT_SHA256; "
                                                "send PROMPT_VERSION 'zero-shot' to serve the query alone")
        hit = self._by_sha.get(sha)
        if hit is not None:
            self._by_sha.move_to_end(sha)
            return hit
        prompt = self._load(artifact_path(uri), sha)
        self._by_sha[sha] = prompt
        if len(self._by_sha) > self.max_entries:
            self._by_sha.popitem(last=False)
        self.loads += 1
        log.info("event=prompt_loaded uri=%s sha256=%s tokens=%d", uri, sha[:12], prompt.shape[0])
        return prompt

    def _load(self, path: Path, sha: str) -> torch.Tensor:
        from safetensors import SafetensorError
        from safetensors.torch import load

        folder = path if path.is_dir() else path.parent
        file = path / "prompt.safetensors" if path.is_dir() else path
        if not file.is_file():
            raise PromptError(NOT_FOUND, f"prompt artifact {file} not found; check the registry's artifact_uri and "
                                         "that the artifact volume is mounted on the model server")
        data = file.read_bytes()
        got = hashlib.sha256(data).hexdigest()
        if got != sha:
            raise PromptError(DATA_LOSS, f"prompt artifact {file} has sha256 {got[:12]}, the registry says "
                                         f"{sha[:12]}; the file was replaced or corrupted: re-register it")
        try:
            tensors = load(data)
        except SafetensorError as exc:
            raise PromptError(DATA_LOSS, f"prompt artifact {file} is not a safetensors file: {exc}") from None
        if "prompt" not in tensors:
            raise PromptError(DATA_LOSS, f"prompt artifact {file} has no 'prompt' tensor")
        prompt = tensors["prompt"].float()
        if prompt.ndim != 2 or prompt.shape[1] != self.hidden:
            raise PromptError(FAILED_PRECONDITION, f"prompt {file} has shape {list(prompt.shape)}; this model "
                                                   f"needs [n_tokens, {self.hidden}]: it was tuned for another model")
        manifest = folder / "manifest.json"
        if self.expect_model_id and manifest.is_file():
            model_id = json.loads(manifest.read_text()).get("model_id", "")
            if model_id and model_id != self.expect_model_id:
                raise PromptError(FAILED_PRECONDITION, f"prompt {folder} was tuned for model {model_id[:12]}, "
                                                       f"this is {self.expect_model_id[:12]}: re-tune it")
        return prompt
