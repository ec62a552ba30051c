"""`qanchor_contract`: a tiny Triton Python-backend model that speaks the gateway's tensor contract.

It is NOT the Q-Anchor model. It exists so the gateway can be exercised end to end on a real Triton server
before (and independently of) the real `qanchor` model: integration tests compare its embeddings with
`reference_embedding` computed from the features written to Feast, and the serving benchmark uses it to measure
the gateway's own overhead (its compute is ~0). It keeps a prefix cache keyed exactly as the real model must
(model version, user, feature version) and reports CACHE_HIT.

The embedding: user vector u = [masked mean of each source's event vectors ..., tabular];
e = normalise(W_model @ u + b(query text, prompt version, prompt sha256)), W and b from seeded Gaussians.
numpy only (the Triton env has numpy<2; this file also imports under numpy 2 for the reference). Tensors are decoded
and encoded by the one contract module, training.export.contract (torch-free), exactly as the real model does.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import OrderedDict

import numpy as np

# The Python-backend stub does not apply PYTHONPATH to its interpreter; put the checkout first by hand (the same
# shim as the real qanchor model; a no-op where the package is installed).
for _entry in reversed([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]):
    if _entry not in sys.path:
        sys.path.insert(0, _entry)

from training.export.contract import Contract, model_versions, parameter  # noqa: E402

try:  # only inside Triton's Python backend
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported by tests / benchmarks for `reference_embedding`
    pb_utils = None

DIM = 128
DEFAULT_MODEL_VERSION = "contract-v1"
_CACHE_ENTRIES = 10_000


def _gaussian(key: str, shape: tuple[int, ...]) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def user_vector(events: list[np.ndarray], masks: list[np.ndarray], tabular: np.ndarray) -> np.ndarray:
    """[sum over sources of d_enc + d_tab]: per source the masked mean of its event vectors, then tabular."""
    parts = []
    for vecs, mask in zip(events, masks):
        vecs = np.asarray(vecs, dtype=np.float32)  # [K, d]
        mask = np.asarray(mask, dtype=bool)  # [K]
        parts.append(vecs[mask].mean(axis=0) if mask.any() else np.zeros(vecs.shape[1], dtype=np.float32))
    parts.append(np.asarray(tabular, dtype=np.float32).reshape(-1))
    return np.concatenate(parts).astype(np.float32)


class _Weights:
    def __init__(self) -> None:
        self._w: dict[tuple[str, int], np.ndarray] = {}

    def w(self, model_version: str, width: int) -> np.ndarray:
        key = (model_version, width)
        if key not in self._w:
            self._w[key] = _gaussian(f"W|{model_version}|{width}", (DIM, width)) / np.sqrt(width)  # [DIM, width]
        return self._w[key]


_WEIGHTS = _Weights()


def reference_embedding(u: np.ndarray, query_text: str, prompt_version: str, prompt_sha256: str,
                        model_version: str = DEFAULT_MODEL_VERSION) -> np.ndarray:
    """[DIM] L2-normalised embedding of user vector `u` for one scenario."""
    e = _WEIGHTS.w(model_version, u.shape[0]) @ u + _gaussian(f"b|{query_text}|{prompt_version}|{prompt_sha256}",
                                                              (DIM,))
    return (e / np.linalg.norm(e)).astype(np.float32)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.contract = Contract.from_model_config(config)
        self.sources = [name for name, _ in self.contract.sources]
        self.model_versions = model_versions(config) or [DEFAULT_MODEL_VERSION]
        self.cache_entries = int(parameter(config, "cache_entries", str(_CACHE_ENTRIES)))  # users the LRU holds
        self.cache: "OrderedDict[tuple[str, str, int], np.ndarray]" = OrderedDict()

    def execute(self, requests: list) -> list:
        return [self._one(r) for r in requests]

    def _one(self, request: object) -> object:
        def get(name: str) -> np.ndarray | None:
            t = pb_utils.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy()

        try:
            req = self.contract.decode(self.contract.inputs, get)
            model_version = req["model_version"] or self.model_versions[0]
            if model_version not in self.model_versions:
                return pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"model version {model_version!r} is not served here (serving {self.model_versions})"))
            fv = req["feature_version"]
            key = (model_version, req["user_id"] if fv else "", fv)  # every cold-start user shares one prefix
            u = self.cache.get(key)
            hit = u is not None
            if u is None:
                u = user_vector([req["event_vecs"][s] for s in self.sources],
                                [req["event_mask"][s] for s in self.sources], req["tabular"])
                self.cache[key] = u
                if len(self.cache) > self.cache_entries:
                    self.cache.popitem(last=False)
            else:
                self.cache.move_to_end(key)
            emb = np.stack([reference_embedding(u, q, p, s, model_version) for q, p, s in
                            zip(req["queries"], req["prompt_versions"], req["prompt_shas"])])  # [S, DIM]
            n = emb.shape[0]
            out = {"embedding": emb, "cache_hit": hit, "status": [0] * n, "errors": [""] * n,
                   "model_version": model_version}
            return pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(t.name, a) for t, a in self.contract.encode(self.contract.outputs, out)])
        except Exception as exc:  # one bad request gets its own error; the others in the batch still answer
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"contract model: {exc!r}"))
