"""Turn users of a user world (MovieLens `UserWorld` or the event log's `EventWorld`) into the model's `UserBatch`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from training.data.features import dense_user_features
from training.data.sources import window_start
from training.data.world import UserWorld
from training.model.inputs import UserBatch


@dataclass
class UserRecord:
    """One user's prefix inputs in numpy, as the feature store holds them: the newest K events per source."""

    user: int
    event_vecs: dict[str, np.ndarray]  # source -> [n_s <= K_s, 384] float16, oldest first
    tabular: np.ndarray  # [d_tab] float32


def shuffle_ties(ts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation of time-sorted events that keeps time order and shuffles events of the same second: the order
    a producer may send them in (ingest keeps whatever order arrives, docs/data.md)."""
    return np.lexsort((rng.random(len(ts)), ts))


def user_record(world: UserWorld, vecs: np.ndarray, user: int,
                rng: np.random.Generator | None = None) -> UserRecord:
    """Prefix inputs of one user from the history window only (the future never reaches the prefix): per source the
    newest K events within its `window_days` of the user's newest event, and the dense user vector (statistics +
    whole-history mean, training.data.features). The same cut ingest makes (services/ingest/transform.py), so a
    model trains and is measured on what the feature store serves it; before 2026-12-06 training took the newest K
    whatever their age (docs/data.md). `rng`: same-second events in a random order (before the cut, so which of
    them fill the last of K slots moves too), as another producer could send them; None: the timeline's order."""
    rows = world.timelines[user].history  # oldest first; equal seconds in the order a replay sends them
    ts = world.row_ts(rows)
    if rng is not None:
        order = shuffle_ties(ts, rng)
        rows, ts = rows[order], ts[order]
    src = world.source_of_row[rows]
    newest = ts[src >= 0].max() if (src >= 0).any() else 0
    per_source = {}
    for i, spec in enumerate(world.feature_spec.sources):  # SourceSpecs, in source_of_row's order
        of_source = src == i
        mine = rows[of_source][window_start(ts[of_source], newest, spec.window_days * 86400.0, spec.k):]  # oldest first
        per_source[spec.name] = vecs[world.text_of_row[mine]]
    return UserRecord(user, per_source, dense_user_features(world, vecs)[user])


def collate_records(records: list[UserRecord], ks: dict[str, int]) -> UserBatch:
    """Stack records into a padded UserBatch: events left-aligned, zeros + False mask after them."""
    b = len(records)
    event_vecs, event_mask = {}, {}
    for name, k in ks.items():
        d = next((r.event_vecs[name].shape[1] for r in records if len(r.event_vecs.get(name, ()))), 384)
        v = np.zeros((b, k, d), np.float32)  # [B, K_s, d_enc]
        m = np.zeros((b, k), bool)  # [B, K_s]
        for j, r in enumerate(records):
            e = r.event_vecs.get(name)
            if e is None or len(e) == 0:
                continue
            e = e[-k:]
            v[j, :len(e)] = e
            m[j, :len(e)] = True
        event_vecs[name], event_mask[name] = torch.from_numpy(v), torch.from_numpy(m)
    tab = torch.from_numpy(np.stack([r.tabular for r in records]).astype(np.float32))  # [B, d_tab]
    return UserBatch(event_vecs=event_vecs, event_mask=event_mask, tabular=tab)


class UserCollator:
    """`collate_fn` for a DataLoader over user indices (or over dicts with a "user" key)."""

    def __init__(self, world: UserWorld, vecs: np.ndarray, d_tab: int | None = None) -> None:
        """`d_tab`: the model's tabular width (`cfg.input.d_tab`) when it is narrower than the world's: checkpoints
        from before the dense user vector (d_tab 16) read only the statistics, the first columns."""
        self.world, self.vecs, self.d_tab = world, vecs, d_tab
        self.ks = {s.name: s.k for s in world.sources.sources}

    def batch(self, users: list[int], rng: np.random.Generator | None = None) -> UserBatch:
        """`rng`: shuffle each user's same-second events (user_record); training's `data.tie_shuffle`."""
        out = collate_records([user_record(self.world, self.vecs, u, rng) for u in users], self.ks)
        if self.d_tab is not None and out.tabular.shape[1] > self.d_tab:
            out.tabular = out.tabular[:, :self.d_tab].contiguous()
        return out

    def __call__(self, items: list) -> UserBatch:
        users = [int(it["user"]) if isinstance(it, dict) else int(it) for it in items]
        return self.batch(users)
