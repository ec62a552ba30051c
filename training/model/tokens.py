"""Special tokens and the fixed prefix layout.

Layout of every user prefix (one length P for all users, so no padding ever lands inside a prefix):

    [preamble text] <USER> [u] [s_1 .. s_M] <src1_start> [e x K_1] <src1_end> ... <tabular_start> [t x T] <tabular_end>

`[..]` are soft-token slots filled with adapter outputs (the tokenizer sees `<PH>` there). Slot vectors come in
one canonical order: user, M source tokens, the events of each source in config order, T tabular tokens.
With `input.summary_tokens: false` (the paper's "w/o user+source tokens" ablation) `[u] [s_1 .. s_M]` are left
out of the template; the canonical order is unchanged, those slots are simply never placed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from training.config import InputConfig

USER_EMB = "<USER_EMB>"
USER = "<USER>"
PLACEHOLDER = "<PH>"
TABULAR = "tabular"


class LayoutError(ValueError):
    """The tokenised prefix does not match the configured sources; the tokenizer must keep special tokens atomic."""


def source_markers(name: str) -> tuple[str, str]:
    return f"<{name}_start>", f"<{name}_end>"


@dataclass
class SpecialTokens:
    first_id: int  # tokens first_id .. first_id + count - 1 were added by us: their embeddings are trainable
    count: int
    ids: dict[str, int]  # token text -> id

    @property
    def user_emb(self) -> int:
        return self.ids[USER_EMB]

    @property
    def placeholder(self) -> int:
        return self.ids[PLACEHOLDER]


def add_special_tokens(tokenizer: PreTrainedTokenizerBase, source_names: list[str]) -> SpecialTokens:
    """Add our tokens to the tokenizer (idempotent per tokenizer instance); they receive contiguous new ids."""
    texts = [USER_EMB, USER, PLACEHOLDER]
    for name in [*source_names, TABULAR]:
        texts.extend(source_markers(name))
    first = len(tokenizer)
    existing = [t for t in texts if t in tokenizer.get_vocab()]
    if existing:
        raise LayoutError(f"tokenizer already has {existing}; build the model from a fresh tokenizer")
    tokenizer.add_special_tokens({"additional_special_tokens": texts}, replace_extra_special_tokens=False)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in texts}
    if sorted(ids.values()) != list(range(first, first + len(texts))):
        raise LayoutError(f"added tokens got non-contiguous ids {ids}; expected {first}..{first + len(texts) - 1}")
    return SpecialTokens(first_id=first, count=len(texts), ids=ids)


@dataclass
class PrefixLayout:
    ids: torch.Tensor  # [P] token ids of the template (placeholders where soft tokens go)
    slot: torch.Tensor  # [P] index into the canonical soft-token list, -1 on text tokens
    event_slot: torch.Tensor  # [P] index into the concatenated event list (sum K), -1 elsewhere
    n_soft: int  # 1 + M + sum(K) + T

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


def build_layout(tokenizer: PreTrainedTokenizerBase, cfg: InputConfig, special: SpecialTokens) -> PrefixLayout:
    """Tokenise the prefix template and map every placeholder to its soft-token slot, checking counts."""
    m, t = len(cfg.sources), cfg.tabular_tokens
    n_hdr = header_slots(cfg)
    parts = [cfg.preamble, USER, PLACEHOLDER * n_hdr]
    for s in cfg.sources:
        start, end = source_markers(s.name)
        parts += [start, PLACEHOLDER * s.k, end]
    tab_start, tab_end = source_markers(TABULAR)
    parts += [tab_start, PLACEHOLDER * t, tab_end]
    ids = torch.tensor(tokenizer("".join(parts), add_special_tokens=False)["input_ids"], dtype=torch.long)
    check_placeholders(ids, cfg, special)
    is_ph = ids == special.placeholder
    slot = torch.full_like(ids, -1)
    # placeholders appear in canonical order by construction; without the header they start at the first event
    slot[is_ph] = torch.arange(int(is_ph.sum())) + (1 + m - n_hdr)
    event_slot = torch.full_like(ids, -1)
    n_events = sum(s.k for s in cfg.sources)
    ev = (slot >= 1 + m) & (slot < 1 + m + n_events)
    event_slot[ev] = slot[ev] - (1 + m)
    return PrefixLayout(ids=ids, slot=slot, event_slot=event_slot, n_soft=1 + m + n_events + t)


def header_slots(cfg: InputConfig) -> int:
    """Soft tokens right after <USER>: the user token and one per source, or none in the ablation."""
    return 1 + len(cfg.sources) if cfg.summary_tokens else 0


def check_placeholders(ids: torch.Tensor, cfg: InputConfig, special: SpecialTokens) -> None:
    """Raise LayoutError unless each source span holds exactly K placeholders (and the header 1 + M, tabular T)."""
    ph = special.placeholder
    pos = {tok: (ids == special.ids[tok]).nonzero().flatten().tolist() for tok in special.ids}
    spans = [(s.name, s.k) for s in cfg.sources] + [(TABULAR, cfg.tabular_tokens)]
    for name, k in spans:
        start, end = source_markers(name)
        if len(pos[start]) != 1 or len(pos[end]) != 1 or pos[start][0] > pos[end][0]:
            raise LayoutError(f"source {name}: expected one {start} before one {end} in the prefix")
        got = int((ids[pos[start][0] + 1: pos[end][0]] == ph).sum())
        if got != k:
            raise LayoutError(f"source {name}: {got} placeholders between markers, config says k={k}")
    if len(pos[USER]) != 1:
        raise LayoutError(f"expected exactly one {USER} token in the prefix")
    first_start = pos[source_markers(cfg.sources[0].name)[0]][0]
    header = int((ids[pos[USER][0] + 1: first_start] == ph).sum())
    if header != header_slots(cfg):
        raise LayoutError(f"expected {header_slots(cfg)} user + source placeholders after {USER}, got {header}")
    total = int((ids == ph).sum())
    expected = header_slots(cfg) + sum(k for _, k in spans)
    if total != expected:
        raise LayoutError(f"prefix holds {total} placeholders, expected {expected} (stray {PLACEHOLDER} in preamble?)")
