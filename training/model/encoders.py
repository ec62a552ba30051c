"""Hierarchical user tokens: event adapters, the shared source adapter, the user adapter and the tabular adapter.

Input: a `UserBatch` of frozen sentence-encoder vectors (d_enc). Output: the soft tokens of the prefix in the
canonical slot order of `training.model.tokens` plus a validity mask (False = padded event slot).
"""
from __future__ import annotations

import torch
from torch import nn

from training.config import InputConfig
from training.model.inputs import UserBatch


class Adapter(nn.Module):
    """LayerNorm -> Linear(d, d) -> GELU -> Linear(d, out): the paper's per-source event adapter shape."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_in, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(d_in, d_in), nn.GELU(), nn.Linear(d_in, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, K, d], mask [B, K] -> (mean over present rows [B, d], count [B]); zero mean where count is 0."""
    w = mask.to(x.dtype).unsqueeze(-1)  # [B, K, 1]
    count = w.sum(dim=1)  # [B, 1]
    return (x * w).sum(dim=1) / count.clamp(min=1.0), count.squeeze(-1)


class UserTokenEncoder(nn.Module):
    def __init__(self, cfg: InputConfig, hidden: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.names = [s.name for s in cfg.sources]
        self.event_adapters = nn.ModuleDict({n: Adapter(cfg.d_enc, hidden) for n in self.names})
        self.source_adapter = Adapter(cfg.d_enc, hidden)  # shared by all sources, as in the paper
        self.user_adapter = Adapter(cfg.d_enc, hidden)
        self.tabular_adapter = Adapter(cfg.d_tab, hidden * cfg.tabular_tokens)
        # Learned stand-ins: a source with no events, and a user with no events at all (cold start), still get a
        # meaningful token instead of an adapter applied to an all-zero mean.
        self.missing_source = nn.Parameter(torch.randn(len(self.names), hidden) * 0.02)
        self.cold_user = nn.Parameter(torch.randn(hidden) * 0.02)

    def check(self, users: UserBatch) -> None:
        for s in self.cfg.sources:
            if s.name not in users.event_vecs or s.name not in users.event_mask:
                raise ValueError(f"UserBatch lacks source {s.name!r}; configured sources: {self.names}")
            v, m = users.event_vecs[s.name], users.event_mask[s.name]
            b = users.batch_size
            if tuple(v.shape) != (b, s.k, self.cfg.d_enc) or tuple(m.shape) != (b, s.k):
                raise ValueError(f"source {s.name}: event_vecs {tuple(v.shape)} / mask {tuple(m.shape)}, expected "
                                 f"({b}, {s.k}, {self.cfg.d_enc}) / ({b}, {s.k}); pad or cut to k events")
        if tuple(users.tabular.shape) != (users.batch_size, self.cfg.d_tab):
            raise ValueError(f"tabular {tuple(users.tabular.shape)}, expected ({users.batch_size}, {self.cfg.d_tab})")

    def forward(self, users: UserBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """-> soft tokens [B, n_soft, hidden] and validity [B, n_soft] (bool) in canonical slot order."""
        self.check(users)
        b = users.batch_size
        dtype = self.cold_user.dtype
        means, counts, events, event_valid = [], [], [], []
        for j, name in enumerate(self.names):
            vecs = users.event_vecs[name].to(dtype)  # [B, K, d_enc]
            mask = users.event_mask[name].bool()  # [B, K]
            events.append(self.event_adapters[name](vecs))  # [B, K, hidden]
            event_valid.append(mask)
            mean, count = masked_mean(vecs, mask)
            means.append(mean)
            counts.append(count)
        means_t = torch.stack(means, dim=1)  # [B, M, d_enc]
        present = torch.stack(counts, dim=1) > 0  # [B, M]
        src_tok = self.source_adapter(means_t)  # [B, M, hidden]
        src_tok = torch.where(present.unsqueeze(-1), src_tok, self.missing_source.unsqueeze(0))
        user_mean, n_present = masked_mean(means_t, present)  # mean over present sources only
        user_tok = self.user_adapter(user_mean)  # [B, hidden]
        user_tok = torch.where((n_present > 0).unsqueeze(-1), user_tok, self.cold_user.unsqueeze(0))
        tab = self.tabular_adapter(users.tabular.to(dtype))  # [B, T * hidden]
        tab = tab.view(b, self.cfg.tabular_tokens, -1)  # [B, T, hidden]
        soft = torch.cat([user_tok.unsqueeze(1), src_tok, *events, tab], dim=1)  # [B, n_soft, hidden]
        ones = torch.ones(b, 1 + len(self.names), dtype=torch.bool, device=soft.device)
        tab_valid = torch.ones(b, self.cfg.tabular_tokens, dtype=torch.bool, device=soft.device)
        valid = torch.cat([ones, *event_valid, tab_valid], dim=1)  # [B, n_soft]
        return soft, valid


def user_summary(users: UserBatch) -> torch.Tensor:
    """What the prefix holds, as one plain vector: per-source masked mean of the event vectors, then the tabular
    vector. -> [B, M * d_enc + d_tab]. The user-identity term asks the LLM's reading of the prefix to recover it."""
    means = [masked_mean(users.event_vecs[k].float(), users.event_mask[k].bool())[0] for k in users.event_vecs]
    return torch.cat([*means, users.tabular.float()], dim=1)


class IdentityViews(nn.Module):
    """Two small projections compared by the user-identity term: the anchor side (LLM state or embedding) and
    the input summary side. Used in pretraining only; serving never calls them."""

    def __init__(self, d_anchor: int, d_summary: int, dim: int) -> None:
        super().__init__()
        self.anchor = nn.Linear(d_anchor, dim)
        self.summary = nn.Sequential(nn.LayerNorm(d_summary, eps=1e-6), nn.Linear(d_summary, dim))

    def forward(self, anchor: torch.Tensor, summary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(anchor.device.type, enabled=False):  # fp32, like the head (see QAnchorModel.project)
            return (torch.nn.functional.normalize(self.anchor(anchor.float()), dim=-1),
                    torch.nn.functional.normalize(self.summary(summary.float()), dim=-1))
