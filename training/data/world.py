"""The MovieLens user world: events with texts, a per-user history/future split in time, and a user split.

Time split (per user, documented in docs/data.md): a user's ratings are sorted by (timestamp, item); the first
`history_frac` of them form the *history window* (the model prefix and tabular statistics read only these) and
the rest form the *future window* (future-behaviour labels and pretraining answers read only these). The cut is
moved so that no second is split across windows, so every history event is strictly older than every future one.

User split: sha256(salt + user_id) decides train / val / test, independent of the data order, so the same user
always lands in the same split across runs, datasets subsets and machines.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.data.movielens import GENRES, MovieLens, load_movielens
from training.data.sources import FeatureSpec, SourcesConfig, load_sources

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class WorldConfig:
    dataset: str = "ml-1m"
    history_frac: float = 0.8  # share of a user's events that feed the prefix; the rest are the future
    min_history: int = 10  # fewer history events than this: too little to describe the user
    min_future: int = 3  # fewer future events than this: future labels would be noise
    split_salt: str = "qanchor-user-split-v1"  # changing it reshuffles every user: never change casually
    split_fracs: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / val / test
    max_users: int | None = None  # keep the first N users (by file order) for quick runs


def user_split(user_id: str, salt: str, fracs: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """Deterministic split of one user from a salted hash (stable across runs and subsets)."""
    h = int.from_bytes(hashlib.sha256(f"{salt}:{user_id}".encode()).digest()[:8], "big") / 2.0**64
    if h < fracs[0]:
        return "train"
    return "val" if h < fracs[0] + fracs[1] else "test"


def event_text(title: str, genres: tuple[str, ...], rating: int) -> str:
    return f"Rated '{title}' [{', '.join(genres)}] {rating}/5"


@dataclass
class Timeline:
    """One user's rating rows (indices into MovieLens.ratings), oldest first, cut into two windows."""

    history: np.ndarray  # [n_h] int64 rating-row indices
    future: np.ndarray  # [n_f] int64 rating-row indices
    cutoff_ts: int  # first future timestamp: history ts < cutoff_ts <= future ts


@dataclass
class UserWorld:
    cfg: WorldConfig
    sources: SourcesConfig
    ml: MovieLens
    timelines: dict[int, Timeline]  # user index -> timeline, only for users kept
    split: dict[int, str]  # user index -> "train" / "val" / "test"
    excluded: dict[int, str]  # user index -> reason (too few events)
    texts: list[str]  # distinct event texts
    text_of_rating: np.ndarray  # [N] int32 index into texts, per rating row
    source_of_rating: np.ndarray  # [N] int8 index into sources.names, -1 when no source takes the rating
    tabular: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # [n_users, d_tab]
    # the dense user vector's constants when they are not this world's train users' moments: a model read on a
    # dataset it was not trained on standardises with its checkpoint's normalisation.json, as ingest serves it
    # (training.data.stats.Normalisation; training.data.features.dense_user_features)
    normalisation: Any = None

    def users(self, split: str | None = None) -> list[int]:
        """User indices (sorted) of one split, or of all kept users."""
        return sorted(u for u, s in self.split.items() if split is None or s == split)

    # ---- the interface every world offers (training.data.event_world.EventWorld is the generic one) ----------
    @property
    def feature_spec(self) -> FeatureSpec:
        return self.sources.spec

    @property
    def n_users(self) -> int:
        return len(self.ml.users)

    @property
    def text_of_row(self) -> np.ndarray:
        return self.text_of_rating

    @property
    def source_of_row(self) -> np.ndarray:
        return self.source_of_rating

    @property
    def item_of_row(self) -> np.ndarray:
        """[N] index into the items (the movies) of each rating row."""
        return self.ml.ratings.item

    @property
    def n_items(self) -> int:
        return len(self.ml.movies)

    @property
    def category_names(self) -> list[str]:
        """The categories an event's item can have (stats_columns' fourth column): the genres, in GENRES order."""
        return list(GENRES)

    def user_id(self, user: int) -> str:
        return self.ml.users[user].user_id

    def row_ts(self, rows: np.ndarray) -> np.ndarray:
        """Unix seconds of some rating rows (the prefix's window reads only these)."""
        return self.ml.ratings.ts[rows]

    def stats_columns(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[str, ...]]]:
        """(ts, ratings, years, categories) of some rating rows: what training.data.stats aggregates."""
        r, movies = self.ml.ratings, self.ml.movies
        years = getattr(self, "_movie_years", None)
        if years is None:
            years = self._movie_years = np.array([m.year for m in movies], np.float64)
        items = r.item[rows]
        return r.ts[rows], r.rating[rows].astype(np.float64), years[items], [movies[i].genres for i in items]

    def events(self, user: int, window: str = "history") -> list[dict]:
        """Events of one user's window as plain dicts (event contract fields + rating details)."""
        tl = self.timelines[user]
        rows = tl.history if window == "history" else tl.future
        r, names = self.ml.ratings, self.sources.names
        out = []
        for row in rows:
            m = self.ml.movies[r.item[row]]
            src = int(self.source_of_rating[row])
            out.append({
                "row": int(row), "source": names[src] if src >= 0 else None, "ts": int(r.ts[row]),
                "text": self.texts[self.text_of_rating[row]], "item_id": m.item_id, "title": m.title,
                "genres": list(m.genres), "year": m.year, "rating": int(r.rating[row]),
            })
        return out


def _cut(ts_sorted: np.ndarray, frac: float, min_history: int, min_future: int) -> int | None:
    """Index of the first future event, or None when no valid cut exists.

    Valid cuts fall between two different seconds (MovieLens users often rate dozens of movies in one second:
    splitting such a burst would put "simultaneous" events on both sides) and leave both windows big enough;
    among them we take the one nearest to `frac` of the events.
    """
    n = len(ts_sorted)
    idx = np.nonzero(ts_sorted[1:] != ts_sorted[:-1])[0] + 1  # positions where a new second starts
    idx = idx[(idx >= min_history) & (n - idx >= min_future)]
    if len(idx) == 0:
        return None
    return int(idx[np.argmin(np.abs(idx - frac * n))])


def build_world(cfg: WorldConfig | None = None, sources: SourcesConfig | None = None,
                ml: MovieLens | None = None) -> UserWorld:
    cfg = cfg or WorldConfig()
    sources = sources or load_sources()
    ml = ml or load_movielens(cfg.dataset)
    r = ml.ratings
    n_users = len(ml.users) if cfg.max_users is None else min(cfg.max_users, len(ml.users))

    # distinct texts: one per (movie, rating) pair that occurs
    key = r.item.astype(np.int64) * 8 + r.rating
    uniq, inverse = np.unique(key, return_inverse=True)
    texts = [event_text(ml.movies[k // 8].title, ml.movies[k // 8].genres, int(k % 8)) for k in uniq.tolist()]
    src_lut = np.full(8, -1, np.int8)
    for i, s in enumerate(sources.sources):
        src_lut[s.min_rating:s.max_rating + 1] = i

    order = np.lexsort((r.item, r.ts, r.user))  # by user, then time, then item (deterministic ties)
    bounds = np.searchsorted(r.user[order], np.arange(len(ml.users) + 1))
    timelines, split, excluded = {}, {}, {}
    for u in range(n_users):
        rows = order[bounds[u]:bounds[u + 1]]
        if len(rows) < cfg.min_history + cfg.min_future:
            excluded[u] = f"too_few_events n={len(rows)}"
            continue
        c = _cut(r.ts[rows], cfg.history_frac, cfg.min_history, cfg.min_future)
        if c is None:
            excluded[u] = f"no_valid_cut n={len(rows)} distinct_seconds={len(np.unique(r.ts[rows]))}"
            continue
        hist, fut = rows[:c], rows[c:]
        timelines[u] = Timeline(hist.astype(np.int64), fut.astype(np.int64), int(r.ts[fut[0]]))
        split[u] = user_split(ml.users[u].user_id, cfg.split_salt, cfg.split_fracs)
    world = UserWorld(cfg, sources, ml, timelines, split, excluded, texts,
                      inverse.astype(np.int32).reshape(-1), src_lut[r.rating])
    from training.data.features import fit_tabular  # late import: features needs the world type

    world.tabular = fit_tabular(world)
    counts = {s: len(world.users(s)) for s in SPLITS}
    log.info("world_built dataset=%s users=%d excluded=%d texts=%d train=%d val=%d test=%d",
             cfg.dataset, len(timelines), len(excluded), len(texts), counts["train"], counts["val"], counts["test"])
    return world
