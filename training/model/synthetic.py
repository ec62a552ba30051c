"""Random `UserBatch`es shaped by a config: for tests, benchmarks and smoke checks (never for training data)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from training.config import InputConfig
from training.model.inputs import UserBatch


def random_users(cfg: InputConfig, batch: int, seed: int = 0, fill: float = 0.7,
                 cold: list[int] | tuple[int, ...] = ()) -> UserBatch:
    """Users with unit-norm event vectors; each event present with probability `fill` (short histories are
    left-aligned, as the contract says); rows in `cold` have no events and zero tabular (cold start)."""
    g = torch.Generator().manual_seed(seed)
    vecs, masks = {}, {}
    for s in cfg.sources:
        v = F.normalize(torch.randn(batch, s.k, cfg.d_enc, generator=g), dim=-1)  # [B, K, d_enc]
        n = (torch.rand(batch, generator=g) * (s.k + 1) * fill / 0.7).long().clamp(max=s.k)  # events per user
        m = torch.arange(s.k).unsqueeze(0) < n.unsqueeze(1)  # [B, K] left-aligned
        m[list(cold)] = False
        vecs[s.name] = v * m.unsqueeze(-1)  # padded rows are zeros, as in the contract
        masks[s.name] = m
    tab = torch.randn(batch, cfg.d_tab, generator=g)
    tab[list(cold)] = 0.0
    return UserBatch(vecs, masks, tab)


def activate_lora(model: torch.nn.Module, std: float = 0.05, seed: int = 0) -> None:
    """LoRA B matrices start at zero (a no-op); give them random values so tests exercise the LoRA path."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
