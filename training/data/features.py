"""Tabular user statistics from the history window (never the future), standardised with train-user moments.

Demographics are deliberately absent: gender, age and occupation are evaluation labels (scenarios.yaml), and
putting them in the prefix would turn those probes into look-ups.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from training.data.movielens import GENRES

if TYPE_CHECKING:
    from training.data.world import UserWorld

DAY = 86400
# Genres with their own share column: the five most frequent in both ML-1M and ML-100K.
SHARE_GENRES = ("Drama", "Comedy", "Action", "Thriller", "Sci-Fi")
TABULAR_FEATURES = (
    "log_n_events", "mean_rating", "rating_std", "share_liked", "share_disliked", "log_span_days",
    "log_active_days", "share_last_7d", "weekend_share", "mean_release_year", "genre_entropy",
) + tuple(f"share_{g.lower()}" for g in SHARE_GENRES)


def genre_counts(genre_lists: list[tuple[str, ...]]) -> np.ndarray:
    """[len(GENRES)] counts of each genre over a list of movies' genre tuples."""
    idx = {g: i for i, g in enumerate(GENRES)}
    c = np.zeros(len(GENRES), np.float64)
    for gs in genre_lists:
        for g in gs:
            c[idx[g]] += 1
    return c


def entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / max(counts.sum(), 1e-9)
    return float(-(p * np.log(p)).sum())


def raw_stats(ratings: np.ndarray, ts: np.ndarray, years: np.ndarray, genre_lists: list[tuple[str, ...]]) -> np.ndarray:
    """The unstandardised statistics vector of one user's window (order: TABULAR_FEATURES)."""
    days = ts // DAY
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday: +3 makes Monday 0
    gc = genre_counts(genre_lists)
    known_years = years[years > 0]
    return np.array([
        np.log1p(len(ratings)),
        ratings.mean(),
        ratings.std(),
        (ratings >= 4).mean(),
        (ratings <= 2).mean(),
        np.log1p((ts.max() - ts.min()) / DAY),
        np.log1p(len(np.unique(days))),
        (ts >= ts.max() - 7 * DAY).mean(),  # recency: how much of the history is in its last week
        (weekday >= 5).mean(),
        known_years.mean() if len(known_years) else 0.0,
        entropy(gc),
    ] + [gc[GENRES.index(g)] / max(len(genre_lists), 1) for g in SHARE_GENRES], np.float64)


def dense_dim(encoder_dim: int) -> int:
    """Width of the dense user vector (feature `tabular`): the statistics, then the history mean vector."""
    return len(TABULAR_FEATURES) + encoder_dim


def fit_tabular(world: "UserWorld") -> np.ndarray:
    """[n_users, len(TABULAR_FEATURES)] float32 standardised statistics; excluded users' rows stay zero (cold start)."""
    d, want = world.sources.tabular_dim, dense_dim(world.sources.encoder_dim)
    if d != want:
        raise ValueError(
            f"sources.yaml asks for tabular_dim={d} but the dense user vector is {len(TABULAR_FEATURES)} statistics "
            f"+ the {world.sources.encoder_dim}-d history mean = {want}; change TABULAR_FEATURES and tabular_dim "
            "together")
    d = len(TABULAR_FEATURES)
    r, movies = world.ml.ratings, world.ml.movies
    years_all = np.array([m.year for m in movies], np.float64)
    raw = np.zeros((len(world.ml.users), d), np.float64)
    for u, tl in world.timelines.items():
        rows = tl.history
        items = r.item[rows]
        raw[u] = raw_stats(r.rating[rows].astype(np.float64), r.ts[rows], years_all[items],
                           [movies[i].genres for i in items])
    train = world.users("train") or list(world.timelines)  # tiny subsets may lack train users
    mu, sd = raw[train].mean(0), raw[train].std(0)
    sd[sd < 1e-9] = 1.0
    out = np.zeros_like(raw, dtype=np.float32)
    kept = list(world.timelines)
    out[kept] = ((raw[kept] - mu) / sd).astype(np.float32)
    return out


def dense_user_features(world: "UserWorld", vecs: np.ndarray) -> np.ndarray:
    """[n_users, tabular_dim] float32, the dense user vector the prefix's tabular token reads: the standardised
    statistics (fit_tabular), then the mean event-text vector of the *whole* history window, each dimension
    standardised with train-user moments. The prefix holds only the newest K events per source; this mean is what
    carries the rest of the window (a mean MiniLM vector of all history is a strong baseline on its own:
    docs/quality.md). Memoised per (world, vectors); rows of excluded users stay zero (cold start)."""
    cached = getattr(world, "_dense_cache", None)
    if cached is not None and cached[0] is vecs:  # the same array object (an id() could be reused after GC)
        return cached[1]
    means = np.zeros((len(world.ml.users), vecs.shape[1]), np.float64)
    for u, tl in world.timelines.items():
        means[u] = vecs[world.text_of_rating[tl.history]].astype(np.float64).mean(0)
    train = world.users("train") or list(world.timelines)
    mu, sd = means[train].mean(0), means[train].std(0)
    sd[sd < 1e-9] = 1.0
    kept = list(world.timelines)
    std_means = np.zeros_like(means, dtype=np.float32)
    std_means[kept] = ((means[kept] - mu) / sd).astype(np.float32)
    out = np.concatenate([world.tabular, std_means], axis=1)
    world._dense_cache = (vecs, out)
    return out
