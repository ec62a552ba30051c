"""Tabular user statistics from the history window (never the future), standardised with train-user moments.

The statistics themselves (which event attributes, how aggregated) live in training/data/stats.py, shared with
ingest; this module applies them to a user world (MovieLens or the event log's) and fits the train-user moments.

Demographics are deliberately absent: gender, age and occupation are evaluation labels (scenarios.yaml), and
putting them in the prefix would turn those probes into look-ups.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from training.data.stats import Normalisation, StatsAggregate, StatsSpec, fit_moments

if TYPE_CHECKING:
    from training.data.event_world import EventWorld
    from training.data.world import UserWorld

    World = UserWorld | EventWorld


def stats_spec(world: "World") -> StatsSpec:
    spec = world.feature_spec.statistics
    if spec is None:
        raise ValueError("sources.yaml has no `statistics:` section; the dense user vector needs it (see "
                         "feature_repo/sources.yaml)")
    return spec


def user_aggregates(world: "World", vecs: np.ndarray | None = None) -> dict[int, StatsAggregate]:
    """User index -> aggregates of the user's history window (with the event-text vectors when `vecs` is given):
    the same aggregates ingest builds from the exported events (training.data.stats)."""
    spec = stats_spec(world)
    out = {}
    for u, tl in world.timelines.items():
        rows = tl.history
        ts, ratings, years, cats = world.stats_columns(rows)
        out[u] = StatsAggregate.of_events(spec, ts, ratings, years, cats,
                                          None if vecs is None else vecs[world.text_of_row[rows]])
    return out


def dense_dim(world: "World") -> int:
    """Width of the dense user vector (feature `tabular`): the statistics, then the history mean vector."""
    return len(stats_spec(world).names) + world.sources.encoder_dim


def fit_tabular(world: "World") -> np.ndarray:
    """[n_users, n_stats] float32 standardised statistics; excluded users' rows stay zero (cold start)."""
    spec = stats_spec(world)
    d, want = world.sources.tabular_dim, dense_dim(world)
    if d != want:
        raise ValueError(
            f"sources.yaml asks for tabular_dim={d} but the dense user vector is {len(spec.names)} statistics "
            f"+ the {world.sources.encoder_dim}-d history mean = {want}; change `statistics` and tabular_dim together")
    aggs = user_aggregates(world)
    raw = np.zeros((world.n_users, len(spec.names)), np.float64)
    for u, agg in aggs.items():
        raw[u] = agg.raw_stats(spec)
    mu, sd = fit_moments(raw[train_users(world)])
    out = np.zeros_like(raw, dtype=np.float32)
    kept = list(world.timelines)
    out[kept] = ((raw[kept] - mu) / sd).astype(np.float32)
    return out


def train_users(world: "World") -> list[int]:
    """Whose moments standardise the dense vector; tiny subsets may lack train users, then all kept users."""
    return world.users("train") or list(world.timelines)


def fit_normalisation(world: "World", vecs: np.ndarray,
                      aggs: dict[int, StatsAggregate] | None = None) -> Normalisation:
    """The train users' moments of the raw statistics and history mean vectors: the constants the model ships
    (training.normalisation writes them beside a checkpoint) and ingest standardises with."""
    spec = stats_spec(world)
    aggs = aggs if aggs is not None else user_aggregates(world, vecs)
    train = train_users(world)
    raw = np.stack([aggs[u].raw_stats(spec) for u in train])  # [n_train, n_stats]
    means = np.stack([aggs[u].mean_vector() for u in train])  # [n_train, encoder_dim]
    return Normalisation.fit(spec.names, raw, means)


def dense_user_features(world: "World", vecs: np.ndarray) -> np.ndarray:
    """[n_users, tabular_dim] float32, the dense user vector the prefix's tabular token reads: the standardised
    statistics, then the mean event-text vector of the *whole* history window, each dimension standardised with
    train-user moments (`fit_normalisation`). The prefix holds only the newest K events per source; this mean is what
    carries the rest of the window (a mean MiniLM vector of all history is a strong baseline on its own:
    docs/quality.md). Memoised per (world, vectors); rows of excluded users stay zero (cold start). Ingest computes
    the same vector from raw events with the same functions (`Normalisation.dense`). A world that carries its own
    `normalisation` (a checkpoint's, on a dataset the model was not trained on) is standardised with that."""
    given = getattr(world, "normalisation", None)
    cached = getattr(world, "_dense_cache", None)
    # the same objects (an id() could be reused after GC)
    if cached is not None and cached[0] is vecs and cached[2] is given:
        return cached[1]
    spec = stats_spec(world)
    aggs = user_aggregates(world, vecs)
    norm = given if given is not None else fit_normalisation(world, vecs, aggs)
    out = np.zeros((world.n_users, world.sources.tabular_dim), np.float32)
    for u, agg in aggs.items():
        out[u] = norm.dense(agg, spec)
    world._dense_cache = (vecs, out, given)
    return out
