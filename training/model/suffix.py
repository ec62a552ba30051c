"""Scenario suffixes: [query tokens][soft prompt slots][<USER_EMB>] (+ [answer tokens][eos] when training NTP).

Soft prompts sit after the query and right before <USER_EMB>: they can read the user prefix and the query, and
the pooling token reads them; the prefix KV cache stays valid because nothing before the query changes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

IGNORE = -100  # label value ignored by cross-entropy


@dataclass
class ScenarioSpec:
    query: str  # natural-language scenario, e.g. "Will this user rate a new comedy highly?"
    soft_prompt: torch.Tensor | None = None  # [n_tokens, hidden] tuned vectors (training.tune), or None: zero-shot


@dataclass
class SuffixBatch:
    ids: torch.Tensor  # [N, L] token ids; placeholder id where soft-prompt vectors go
    valid: torch.Tensor  # [N, L] bool, False on padding
    emb_pos: torch.Tensor  # [N] index of <USER_EMB> in each row
    labels: torch.Tensor  # [N, L] answer token ids, IGNORE elsewhere (pre-shift: labels[t] is token t)
    prompt_start: torch.Tensor  # [N] index of the first soft-prompt slot (== emb_pos when no prompt)
    prompts: list[torch.Tensor | None]  # per row


def build_suffix(tokenizer: PreTrainedTokenizerBase, queries: list[str], prompts: list[torch.Tensor | None],
                 answers: list[str] | None, *, user_emb_id: int, placeholder_id: int, max_query: int,
                 max_answer: int, padding_side: str) -> SuffixBatch:
    if answers is not None and len(answers) != len(queries):
        raise ValueError(f"{len(queries)} queries but {len(answers)} answers")
    q_ids = tokenizer(queries, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(answers, add_special_tokens=False)["input_ids"] if answers is not None else None
    eos = tokenizer.eos_token_id
    rows, labels, emb_pos, p_start = [], [], [], []
    for i, q in enumerate(q_ids):
        q = q[:max_query]
        n_prompt = 0 if prompts[i] is None else int(prompts[i].shape[0])
        row = [*q, *([placeholder_id] * n_prompt), user_emb_id]
        lab = [IGNORE] * len(row)
        if a_ids is not None:
            ans = [*a_ids[i][: max_answer - 1], eos]  # eos teaches the anchor tower where an answer ends
            row += ans
            lab += ans
        rows.append(row)
        labels.append(lab)
        emb_pos.append(len(q) + n_prompt)
        p_start.append(len(q))
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    n = len(rows)
    ids = torch.full((n, width), pad, dtype=torch.long)
    lab_t = torch.full((n, width), IGNORE, dtype=torch.long)
    valid = torch.zeros((n, width), dtype=torch.bool)
    shift = torch.zeros(n, dtype=torch.long)
    for i, (r, lab) in enumerate(zip(rows, labels)):
        off = width - len(r) if padding_side == "left" else 0
        ids[i, off: off + len(r)] = torch.tensor(r)
        lab_t[i, off: off + len(r)] = torch.tensor(lab)
        valid[i, off: off + len(r)] = True
        shift[i] = off
    return SuffixBatch(ids=ids, valid=valid, emb_pos=torch.tensor(emb_pos) + shift, labels=lab_t,
                       prompt_start=torch.tensor(p_start) + shift, prompts=list(prompts))


def tokenize_texts(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_tokens: int,
                   padding_side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Answer texts for the semantic tower: ids [N, L] (each ends with eos) and validity [N, L]."""
    eos = tokenizer.eos_token_id
    seqs = [[*s[: max_tokens - 1], eos] for s in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    valid = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        off = width - len(s) if padding_side == "left" else 0
        ids[i, off: off + len(s)] = torch.tensor(s)
        valid[i, off: off + len(s)] = True
    return ids, valid


@dataclass
class PackedSuffixes:
    """Where each scenario's real tokens go when one user's scenarios share one row (QAnchorModel.embed_per_user).

    Row i holds user i's scenarios back to back, padding dropped; `gather_row`/`gather_col` index each scenario's
    `<USER_EMB>` in the packed [B, T] layout (scenario order: user 0's, then user 1's, ...)."""
    seg: torch.Tensor  # [B, T] long: 1 + the scenario's index within its user's list, 0 on padding
    within: torch.Tensor  # [B, T] long: the token's position inside its own scenario
    valid: torch.Tensor  # [B, T] bool
    gather_row: torch.Tensor  # [N] long
    gather_col: torch.Tensor  # [N] long


def pack_suffixes(suf: SuffixBatch, counts: list[int]) -> PackedSuffixes:
    """The packed layout of `suf`'s N scenarios as len(counts) rows of counts[i] scenarios each (sum == N)."""
    if sum(counts) != suf.valid.shape[0]:
        raise ValueError(f"{sum(counts)} scenarios in the layout for {suf.valid.shape[0]} suffixes")
    lengths = suf.valid.sum(dim=1).tolist()  # real tokens per scenario
    # <USER_EMB>'s index among its scenario's real tokens
    emb_at = (suf.valid.long().cumsum(dim=1).gather(1, suf.emb_pos.unsqueeze(1)).squeeze(1) - 1).tolist()
    rows, seg_l, within_l, gather_row, gather_col = [], [], [], [], []
    j = 0
    for i, n_scen in enumerate(counts):
        seg_i, within_i = [], []
        for k in range(n_scen):
            gather_row.append(i)
            gather_col.append(len(seg_i) + emb_at[j])
            seg_i += [k + 1] * lengths[j]
            within_i += range(lengths[j])
            j += 1
        rows.append(len(seg_i))
        seg_l.append(seg_i)
        within_l.append(within_i)
    b, t = len(counts), max(rows)
    seg = torch.zeros(b, t, dtype=torch.long)
    within = torch.zeros(b, t, dtype=torch.long)
    valid = torch.zeros(b, t, dtype=torch.bool)
    for i, n in enumerate(rows):
        seg[i, :n] = torch.tensor(seg_l[i], dtype=torch.long)
        within[i, :n] = torch.tensor(within_l[i], dtype=torch.long)
        valid[i, :n] = True
    return PackedSuffixes(seg=seg, within=within, valid=valid,
                          gather_row=torch.tensor(gather_row), gather_col=torch.tensor(gather_col))
