"""UserU-style pretraining pairs (paper §3.1), rule-based: (user, query) -> answer text.

- Future-behaviour pairs: the fixed query FUTURE_QUERY; the answer summarises the user's *future* window,
  aggregated by genre and time, with a frequency- and diversity-aware pick of titles.
- User-QA pairs: questions from training.data.qa_topics answered from the user's *history* window; per user the
  top-k topics by relevance (how unusual the user's statistic is among train users).

    python -m training.data.pairs --dataset ml-100k --users 3        # print some pairs
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from training.data.future_topics import FUTURE_TOPICS, draw_checks
from training.data.movielens import GENRES
from training.data.qa_topics import TOPICS, Population
from training.data.view import DAY, WindowView, window_view
from training.data.world import UserWorld, WorldConfig, build_world

log = logging.getLogger(__name__)

FUTURE_QUERY = "What will this user do next?"


@dataclass
class Pair:
    user: int  # index into world.ml.users
    kind: str  # "future" or "qa"
    topic: str
    query: str
    answer: str
    relevance: float
    facts: dict[str, Any] = field(default_factory=dict)


# ---- future-behaviour summaries ------------------------------------------------------------------------------
def _diverse_titles(v: WindowView, idx: np.ndarray, k: int) -> list[int]:
    """Up to k event indices from `idx` (already in preference order), each adding a genre not yet covered
    when possible: frequency decides the order, diversity the pick."""
    chosen, covered = [], set()
    for i in idx:
        if len(chosen) == k:
            break
        if not covered or not set(v.genres[i]) <= covered:
            chosen.append(int(i))
            covered |= set(v.genres[i])
    for i in idx:  # fill up when every remaining title repeats covered genres
        if len(chosen) == k:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    return chosen


def future_summary(v: WindowView, top_genres: int = 3, n_loved: int = 3, n_disliked: int = 2) -> tuple[str, dict]:
    """Answer text + facts for the future window `v`."""
    days = int((v.ts.max() - v.ts.min()) // DAY) + 1
    counts = v.genre_counts()
    genres = sorted((g for g in GENRES if counts[g] > 0), key=lambda g: (-counts[g], GENRES.index(g)))[:top_genres]
    weekend = int(v.weekend.sum())
    when = "mostly on weekends" if weekend > v.n / 2 else "mostly on weekdays"
    first_day = int((v.day == v.day[0]).sum())
    # prefer strong opinions, then recency: the picks most telling about the user
    loved = np.nonzero(v.rating >= 4)[0]
    loved = loved[np.lexsort((-v.ts[loved], -v.rating[loved]))]
    disliked = np.nonzero(v.rating <= 2)[0]
    disliked = disliked[np.lexsort((-v.ts[disliked], v.rating[disliked]))]
    loved_i, disliked_i = _diverse_titles(v, loved, n_loved), _diverse_titles(v, disliked, n_disliked)
    parts = [f"Next, this user rates {v.n} movies over {days} day{'s' if days > 1 else ''} ({when}; "
             f"{first_day} on the first day)."]
    parts.append("Main genres: " + ", ".join(f"{g} ({counts[g]})" for g in genres) + ".")
    if loved_i:
        parts.append("Loves " + ", ".join(f"'{v.titles[i]}'" for i in loved_i) + ".")
    if disliked_i:
        parts.append("Dislikes " + ", ".join(f"'{v.titles[i]}'" for i in disliked_i) + ".")
    parts.append(f"Average rating {v.rating.mean():.1f}/5.")
    facts = {"count": v.n, "days": days, "genres": {g: counts[g] for g in genres},
             "loved": [v.titles[i] for i in loved_i], "disliked": [v.titles[i] for i in disliked_i],
             "mean": round(float(v.rating.mean()), 1)}
    return " ".join(parts), facts


# ---- assembly ------------------------------------------------------------------------------------------------
def population(world: UserWorld) -> Population:
    """Dataset context from train users' history windows only."""
    r = world.ml.ratings
    rows = np.concatenate([world.timelines[u].history for u in world.users("train")] or [np.zeros(0, np.int64)])
    pop = np.bincount(r.item[rows], minlength=len(world.ml.movies)).astype(np.float64)
    mean = float(r.rating[rows].mean()) if len(rows) else 3.6
    return Population(mean_rating=mean, item_pop=pop)


def relevance_moments(ref: list[int], view_of: Callable[[int], Any], fns: list[Callable[[Any, Any], Any]],
                      pop: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean / std of each topic's statistic over the reference users' history views: the relevance reference (a
    user's relevance for a topic is |statistic - mean| / std). Shared by these pairs and training.data.event_pairs."""
    vals: list[list[float]] = [[] for _ in fns]
    for u in ref:
        v = view_of(u)
        for t, fn in enumerate(fns):
            a = fn(v, pop)
            if a is not None and a.stat is not None:
                vals[t].append(a.stat)
    mu = np.array([np.mean(x) if len(x) > 1 else 0.0 for x in vals])
    sd = np.array([max(np.std(x), 1e-9) if len(x) > 1 else 1.0 for x in vals])
    return mu, sd


def reference_users(world: Any, max_users: int = 1000) -> list[int]:
    """Up to max_users train users (all kept users when a tiny world has none): whose statistics set relevance."""
    return world.users("train")[:max_users] or world.users()[:max_users]


def topic_moments(world: UserWorld, pop: Population, max_users: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Mean / std of each topic's statistic over (up to max_users) train users: the relevance reference."""
    return relevance_moments(reference_users(world, max_users), lambda u: window_view(world, u, "history"),
                             [t.fn for t in TOPICS], pop)


def build_pairs(world: UserWorld, users: list[int] | None = None, top_k: int = 10,
                future_aspects: bool = False, aspect_answers: str = "counts", future_checks: int = 0) -> list[Pair]:
    """Future pair + top-k QA pairs for each user (default: every kept user); with `future_aspects` also one pair
    per future-window aspect (training.data.future_topics; `aspect_answers` is its answer style), and
    `future_checks` yes/no checks of the future window per user."""
    users = world.users() if users is None else users
    pop = population(world)
    mu, sd = topic_moments(world, pop)
    answers: dict[int, list[tuple[int, Any]]] = {}
    for u in users:
        v = window_view(world, u, "history")
        answers[u] = [(t, TOPICS[t].fn(v, pop)) for t in range(len(TOPICS))]
    out: list[Pair] = []
    for u in users:
        ans, facts = future_summary(window_view(world, u, "future"))
        out.append(Pair(u, "future", "future_behaviour", FUTURE_QUERY, ans, 1.0, facts))
        if future_aspects:
            hist, fut = window_view(world, u, "history"), window_view(world, u, "future")
            for ft in FUTURE_TOPICS:
                a = ft.answer(hist, fut, aspect_answers)
                if a is not None:
                    out.append(Pair(u, "future", ft.name, ft.question(u), a.answer, 1.0, a.facts))
        if future_checks:
            for topic, question, a in draw_checks(u, window_view(world, u, "future"), future_checks):
                out.append(Pair(u, "future", topic, question, a.answer, 1.0, a.facts))
        scored = []
        for t, a in answers[u]:
            if a is None:
                continue
            rel = 0.5 if a.stat is None else abs(a.stat - mu[t]) / sd[t]  # 0.5: below-average distinctiveness
            scored.append(Pair(u, "qa", TOPICS[t].name, TOPICS[t].question, a.answer, float(rel), a.facts))
        scored.sort(key=lambda p: (-p.relevance, p.topic))
        out.extend(scored[:top_k])
    log.info("pairs_built users=%d pairs=%d top_k=%d", len(users), len(out), top_k)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Print or export UserU-style pretraining pairs")
    p.add_argument("--dataset", default="ml-100k", choices=["ml-1m", "ml-100k"])
    p.add_argument("--users", type=int, default=3)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--out", default=None, help="JSONL file (default: print)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    world = build_world(WorldConfig(dataset=args.dataset))
    pairs = build_pairs(world, world.users()[:args.users], args.top_k)
    lines = [json.dumps({**asdict(x), "user_id": world.ml.users[x.user].user_id}, ensure_ascii=False) for x in pairs]
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
