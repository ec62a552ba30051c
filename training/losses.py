"""Pretraining losses: InfoNCE with the margin false-negative filter, NTP, and GradCache for large batches.

    loss = contrastive_loss(anchor, answer, cfg.loss)           # anchor/answer [B, D], L2-normalised
    total = cfg.loss.contrastive_weight * loss + cfg.loss.ntp_weight * out.ntp_sum / max(out.ntp_tokens, 1)
    stats = grad_cache_step(model.pretrain_forward, users, queries, answers, cfg.loss, chunk_size=16)

Negative terms (u = anchor, d = answer; i the row, j != i): "ud" s(u_i, d_j), "uu" s(u_i, u_j),
"du" s(d_i, u_j), "dd" s(d_i, d_j). The positive s(u_i, d_i) is in the denominator once. A negative whose
cosine exceeds s(u_i, d_i) + margin is treated as a false negative and dropped (mask 0).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from training.config import LossConfig
from training.model.inputs import UserBatch


def _neg_logits(x: torch.Tensor, y: torch.Tensor, pos: torch.Tensor, tau: float, margin: float) -> torch.Tensor:
    """cos(x_i, y_j)/tau for j != i, -inf where j == i or the pair is a suspected false negative. -> [B, B]."""
    sim = x @ y.T  # [B, B] cosine (inputs are unit vectors)
    keep = sim <= pos.unsqueeze(1) + margin  # compare to row i's own positive, as the public code does
    keep.fill_diagonal_(False)
    return torch.where(keep.detach(), sim / tau, torch.full_like(sim, float("-inf")))


def contrastive_loss(anchor: torch.Tensor, answer: torch.Tensor, cfg: LossConfig,
                     reduction: str = "mean") -> torch.Tensor:
    """InfoNCE with masked negatives. anchor, answer: [B, D] unit vectors. -> scalar ("mean") or [B] ("none")."""
    if anchor.shape != answer.shape or anchor.ndim != 2:
        raise ValueError(f"anchor {tuple(anchor.shape)} and answer {tuple(answer.shape)} must both be [B, D]")
    pos = (anchor * answer).sum(dim=-1)  # [B]
    pairs = {"ud": (anchor, answer), "uu": (anchor, anchor), "du": (answer, anchor), "dd": (answer, answer)}
    logits = [(pos / cfg.tau).unsqueeze(1)]  # [B, 1]
    for term in cfg.negative_terms:
        x, y = pairs[term]
        logits.append(_neg_logits(x, y, pos, cfg.tau, cfg.margin))  # [B, B]
    all_logits = torch.cat(logits, dim=1)  # [B, 1 + n_terms * B]
    per_row = torch.logsumexp(all_logits, dim=1) - pos / cfg.tau  # [B]
    return per_row.mean() if reduction == "mean" else per_row


def ntp_loss(ntp_sum: torch.Tensor, ntp_tokens: int) -> torch.Tensor:
    """Mean cross-entropy per answer token."""
    return ntp_sum / max(ntp_tokens, 1)


def identity_loss(view: torch.Tensor, summary: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE: row i of `view` (what the LLM state says about user i) must pick user i's own input
    summary among the batch's users, and vice versa. view, summary: [B, k] unit vectors. -> scalar."""
    logits = view @ summary.T / tau  # [B, B]
    target = torch.arange(len(view), device=view.device)
    return 0.5 * (torch.nn.functional.cross_entropy(logits, target) +
                  torch.nn.functional.cross_entropy(logits.T, target))


def batch_objective(emb: dict[str, torch.Tensor], cfg: LossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The batch-coupled part of the loss from whole-batch embeddings (anchor, answer; identity, summary when the
    user-identity term is on): weighted InfoNCE + weighted identity InfoNCE. -> (loss, float stats)."""
    con = contrastive_loss(emb["anchor"], emb["answer"], cfg)
    loss, stats = cfg.contrastive_weight * con, {"contrastive": float(con.detach())}
    if cfg.identity_weight > 0 and emb.get("identity") is not None:
        ident = identity_loss(emb["identity"], emb["summary"], cfg.tau)
        loss = loss + cfg.identity_weight * ident
        stats["identity"] = float(ident.detach())
    return loss, stats


def total_loss(out, cfg: LossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Whole-batch objective from a `PretrainOutput`: weighted InfoNCE (+ identity) + NTP. -> (loss, float stats)."""
    coupled, stats = batch_objective(out.embeddings(), cfg)
    ntp = ntp_loss(out.ntp_sum, out.ntp_tokens)
    loss = coupled + cfg.ntp_weight * ntp
    return loss, {"loss": loss.item(), **stats, "ntp": ntp.item()}


@dataclass
class _Chunk:
    users: UserBatch
    queries: list[str]
    answers: list[str]
    rng: tuple[torch.Tensor, list[torch.Tensor]]


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    torch.set_rng_state(state[0])
    if state[1]:
        torch.cuda.set_rng_state_all(state[1])


def grad_cache_step(forward: Callable, users: UserBatch, queries: list[str], answers: list[str],
                    cfg: LossConfig, chunk_size: int, autocast: torch.autocast | None = None,
                    gather: Callable[[torch.Tensor], tuple[torch.Tensor, int]] | None = None,
                    all_sum: Callable[[float], float] | None = None) -> dict[str, float]:
    """Accumulate into .grad the gradient of the *whole-batch* loss while holding one chunk's activations at a time.

    GradCache (Gao et al., 2021): (1) embed every chunk without a graph, (2) compute the batch-coupled losses
    (InfoNCE, and the identity term when on) over the full batch and their gradient w.r.t. the embeddings only,
    (3) re-run each chunk with a graph (same RNG state, so dropout repeats) and backpropagate the cached embedding
    gradients plus that chunk's share of NTP. Gradients equal those of one big-batch step; negatives per anchor
    stay at batch_size - 1 at any chunk size. A batch that fits one chunk on one rank skips the replay.
    `forward` is `QAnchorModel.pretrain_forward`. The caller zeroes grads before and steps the optimiser after.
    Data parallel (training.pretrain): `gather(x)` returns every rank's rows with this rank's rows being `x` itself
    (so gradient flows to them) and the offset of those rows; `all_sum` sums a float over ranks (NTP is a mean over
    the global batch's answer tokens). The caller then sums parameter gradients over ranks.
    """
    ctx = autocast or torch.autocast("cpu", enabled=False)
    b = len(queries)
    if gather is None and b <= chunk_size:  # one chunk, one rank: plain autograd, no replay (same gradients)
        with ctx:
            out = forward(users, queries, answers)
        coupled, stats = batch_objective({k: v.float() for k, v in out.embeddings().items()}, cfg)
        ntp = ntp_loss(out.ntp_sum.float(), out.ntp_tokens)
        (coupled + cfg.ntp_weight * ntp).backward()
        ntp_value = float(ntp.detach())
        return {"loss": float(coupled.detach()) + cfg.ntp_weight * ntp_value, **stats, "ntp": ntp_value,
                "chunks": 1.0, "negatives": float(b - 1)}
    chunks = []
    for start in range(0, b, chunk_size):
        sl = slice(start, min(start + chunk_size, b))
        chunks.append(_Chunk(users[sl], queries[sl], answers[sl], _rng_state()))  # refreshed below
    parts: dict[str, list[torch.Tensor]] = {}
    ntp_tokens = 0
    with torch.no_grad():
        for c in chunks:
            c.rng = _rng_state()  # each chunk draws fresh dropout masks; pass 2 replays exactly these
            with ctx:
                out = forward(c.users, c.queries, c.answers)
            for k, v in out.embeddings().items():
                parts.setdefault(k, []).append(v.float())
            ntp_tokens += out.ntp_tokens
    leaves = {k: torch.cat(v).requires_grad_(True) for k, v in parts.items()}  # [B, D] leaves: .grad is the cache
    full = {k: gather(v)[0] if gather else v for k, v in leaves.items()}  # [R*B, D]
    coupled, stats = batch_objective(full, cfg)  # identical on every rank
    coupled.backward()  # -> leaf .grad: this rank's share
    tokens_all = all_sum(float(ntp_tokens)) if all_sum else float(ntp_tokens)
    ntp_total = 0.0
    offset = 0
    for c in chunks:
        n = len(c.queries)
        _set_rng_state(c.rng)
        with ctx:
            out = forward(c.users, c.queries, c.answers)
        ntp_part = out.ntp_sum.float() / max(tokens_all, 1.0)  # this chunk's share of the global token mean
        surrogate = sum((v.float() * leaves[k].grad[offset: offset + n]).sum() for k, v in out.embeddings().items())
        (surrogate + cfg.ntp_weight * ntp_part).backward()
        ntp_total += float(ntp_part.detach())
        offset += n
    ntp_mean = all_sum(ntp_total) if all_sum else ntp_total
    return {"loss": float(coupled.detach()) + cfg.ntp_weight * ntp_mean, **stats, "ntp": ntp_mean,
            "chunks": float(len(chunks)), "negatives": float(full["anchor"].shape[0] - 1)}
