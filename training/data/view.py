"""A user's window (history or future) as arrays, the common input of pretraining-pair writers."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from training.data.movielens import GENRES
from training.data.world import UserWorld

DAY = 86400


class TimeAxes:
    """Calendar views of a window's `ts` (unix seconds): the day number and whether it falls on a weekend."""

    ts: np.ndarray

    @cached_property
    def day(self) -> np.ndarray:
        return self.ts // DAY

    @cached_property
    def weekend(self) -> np.ndarray:
        return (self.day + 3) % 7 >= 5  # 1970-01-01 was a Thursday


@dataclass
class WindowView(TimeAxes):
    rating: np.ndarray  # [n] int, oldest first
    ts: np.ndarray  # [n] int64 unix seconds
    item: np.ndarray  # [n] int movie index
    titles: list[str]
    genres: list[tuple[str, ...]]
    year: np.ndarray  # [n] release year, 0 unknown

    @property
    def n(self) -> int:
        return len(self.rating)

    def genre_counts(self) -> dict[str, int]:
        c = {g: 0 for g in GENRES}
        for gs in self.genres:
            for g in gs:
                c[g] += 1
        return c

    def has(self, genre: str) -> np.ndarray:
        return np.array([genre in gs for gs in self.genres], bool)

    def genre_means(self, min_count: int = 3) -> dict[str, float]:
        """Mean rating per genre with at least `min_count` rated movies."""
        out = {}
        for g in GENRES:
            m = self.has(g)
            if m.sum() >= min_count:
                out[g] = float(self.rating[m].mean())
        return out


def window_view(world: UserWorld, user: int, window: str = "history") -> WindowView:
    tl = world.timelines[user]
    rows = tl.history if window == "history" else tl.future
    r, movies = world.ml.ratings, world.ml.movies
    items = r.item[rows]
    return WindowView(rating=r.rating[rows].astype(np.int64), ts=r.ts[rows], item=items,
                      titles=[movies[i].title for i in items], genres=[movies[i].genres for i in items],
                      year=np.array([movies[i].year for i in items], np.int64))
