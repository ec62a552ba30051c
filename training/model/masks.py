"""Attention masks and position ids shared by the full and the cached forward passes.

Both paths hand the decoder an explicit additive 4-D mask and explicit position ids, built by the same
functions, so a cached embedding equals the full one up to float summation order (the cache itself:
training.model.prefix_cache).
"""
from __future__ import annotations

import torch


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool [N, Tq, Tk] -> additive float [N, 1, Tq, Tk]; eager and SDPA attention both accept this form."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    neg = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, neg).unsqueeze(1)


def causal_allowed(key_valid: torch.Tensor, q_start: int = 0,
                   q_seg: torch.Tensor | None = None, k_seg: torch.Tensor | None = None) -> torch.Tensor:
    """Which keys each query may read: valid, not in the future, and (if segments are given) shared (segment 0)
    or in the query's own segment. key_valid [N, Tk]; queries are keys q_start..Tk-1. -> bool [N, Tq, Tk]."""
    n, tk = key_valid.shape
    k_idx = torch.arange(tk, device=key_valid.device)
    q_idx = k_idx[q_start:]
    allowed = key_valid[:, None, :] & (k_idx[None, None, :] <= q_idx[None, :, None])  # [N, Tq, Tk]
    if q_seg is not None and k_seg is not None:
        allowed = allowed & ((k_seg[:, None, :] == 0) | (k_seg[:, None, :] == q_seg[:, :, None]))
    return allowed


def positions(valid: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    """RoPE positions that skip invalid slots: valid [N, T] -> [N, T] (invalid slots reuse their neighbour's)."""
    pos = valid.long().cumsum(dim=1) - 1  # [N, T]
    if start is not None:
        pos = pos + start.unsqueeze(1)
    return pos.clamp(min=0)
