"""Rule-based user-QA topics (the stand-in for the paper's LLM-written UserU pairs).

Each topic reads only the user's history window and returns a TopicAnswer: the answer text, the facts it was
rendered from (so a test can recompute them from the raw events) and a statistic. Relevance of a topic for a
user is how unusual that statistic is in the population (|z-score| over train users): the top-k topics per user
are the ones that say most about this user rather than about everyone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from training.data.movielens import GENRES
from training.data.view import DAY, WindowView

NICHE = ("Documentary", "Film-Noir", "Western", "Musical")
HOUR_BUCKETS = (("night", 0, 6), ("morning", 6, 12), ("afternoon", 12, 18), ("evening", 18, 24))


@dataclass
class TopicAnswer:
    answer: str
    facts: dict[str, Any]
    stat: float | None  # drives relevance; None: a fixed mid relevance


@dataclass
class Topic:
    name: str
    question: str
    fn: Callable[[WindowView, "Population"], TopicAnswer | None]


@dataclass
class Population:
    """Dataset-level context computed from train users' history windows only (no test leakage)."""

    mean_rating: float = 3.6
    item_pop: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [n_items] rating counts


def _pct(x: float) -> str:
    return f"{round(100 * x)}%"


def _top_genre(v: WindowView) -> tuple[str, int]:
    c = v.genre_counts()
    g = max(GENRES, key=lambda k: (c[k], -GENRES.index(k)))
    return g, c[g]


def favourite_genre(v, pop):
    g, k = _top_genre(v)
    return TopicAnswer(f"{g}: {k} of the {v.n} movies they rated ({_pct(k / v.n)}).", {"genre": g, "count": k},
                       k / v.n)


def best_rated_genre(v, pop):
    means = v.genre_means()
    if not means:
        return None
    g = max(means, key=lambda k: (means[k], -GENRES.index(k)))
    return TopicAnswer(f"{g}, rated {means[g]:.1f}/5 on average.", {"genre": g, "mean": round(means[g], 1)},
                       means[g] - v.rating.mean())


def worst_rated_genre(v, pop):
    means = v.genre_means()
    if len(means) < 2:
        return None
    g = min(means, key=lambda k: (means[k], GENRES.index(k)))
    return TopicAnswer(f"{g}, rated only {means[g]:.1f}/5 on average.", {"genre": g, "mean": round(means[g], 1)},
                       v.rating.mean() - means[g])


def harshness(v, pop):
    m = float(v.rating.mean())
    word = "harsher than" if m < pop.mean_rating - 0.15 else "more generous than" \
        if m > pop.mean_rating + 0.15 else "about as generous as"
    return TopicAnswer(f"Their average rating is {m:.2f}/5, {word} the typical user ({pop.mean_rating:.2f}).",
                       {"mean": round(m, 2), "verdict": word}, m)


def rating_spread(v, pop):
    s = float(v.rating.std())
    word = "very consistent" if s < 0.8 else "spread out" if s > 1.2 else "moderately varied"
    return TopicAnswer(f"Their ratings are {word} (standard deviation {s:.2f}).", {"std": round(s, 2)}, s)


def five_star_share(v, pop):
    k = int((v.rating == 5).sum())
    return TopicAnswer(f"{k} of {v.n} ratings ({_pct(k / v.n)}) are 5 stars.", {"count": k}, k / v.n)


def low_rating_share(v, pop):
    k = int((v.rating <= 2).sum())
    return TopicAnswer(f"{k} of {v.n} ratings ({_pct(k / v.n)}) are 1 or 2 stars.", {"count": k}, k / v.n)


def most_common_rating(v, pop):
    c = np.bincount(v.rating, minlength=6)
    r = int(c.argmax())
    return TopicAnswer(f"{r} stars, given {int(c[r])} times.", {"rating": r, "count": int(c[r])}, c[r] / v.n)


def taste_diversity(v, pop):
    c = np.array([x for x in v.genre_counts().values() if x > 0], float)
    p = c / c.sum()
    ent = float(-(p * np.log(p)).sum())
    word = "broad" if ent > 2.2 else "narrow" if ent < 1.7 else "moderately broad"
    return TopicAnswer(f"Their taste is {word}: {len(c)} different genres among {v.n} movies.",
                       {"n_genres": len(c)}, ent)


def activity_level(v, pop):
    return TopicAnswer(f"They rated {v.n} movies.", {"count": v.n}, float(np.log(v.n)))


def active_days(v, pop):
    d = len(np.unique(v.day))
    return TopicAnswer(f"They rated movies on {d} different days.", {"days": d}, float(np.log(d)))


def weekend_share(v, pop):
    k = int(v.weekend.sum())
    word = "mostly on weekends" if k / v.n > 0.5 else "mostly on weekdays"
    return TopicAnswer(f"{word.capitalize()}: {k} of {v.n} ratings fall on a Saturday or Sunday.",
                       {"weekend_count": k}, k / v.n)


def binge(v, pop):
    _, counts = np.unique(v.day, return_counts=True)
    return TopicAnswer(f"Their busiest day had {int(counts.max())} ratings.", {"max_per_day": int(counts.max())},
                       float(np.log(counts.max())))


def busiest_hours(ts: np.ndarray) -> tuple[str, int]:
    """The part of the day (UTC, HOUR_BUCKETS) with the most events, and how many fall in it."""
    hours = (ts % DAY) // 3600
    counts = [int(((hours >= a) & (hours < b)).sum()) for _, a, b in HOUR_BUCKETS]
    i = int(np.argmax(counts))
    return HOUR_BUCKETS[i][0], counts[i]


def time_of_day(v, pop):
    bucket, k = busiest_hours(v.ts)
    return TopicAnswer(f"Mostly in the {bucket} (UTC): {k} of {v.n} ratings.", {"bucket": bucket, "count": k}, k / v.n)


def favourite_decade(v, pop):
    y = v.year[v.year > 0]
    if not len(y):
        return None
    dec, cnt = np.unique(y // 10 * 10, return_counts=True)
    d = int(dec[cnt.argmax()])
    return TopicAnswer(f"The {d}s: {int(cnt.max())} of their movies were released then.",
                       {"decade": d, "count": int(cnt.max())}, float(np.mean(y)))


def classics_share(v, pop):
    y = v.year[v.year > 0]
    if not len(y):
        return None
    k = int((y < 1970).sum())
    return TopicAnswer(f"{k} of {len(y)} movies they rated were released before 1970.", {"count": k}, k / len(y))


def new_releases(v, pop):
    rated_year = 1970 + v.ts // (365.25 * DAY)
    ok = v.year > 0
    k = int(((rated_year - v.year >= 0) & (rated_year - v.year <= 1) & ok).sum())
    return TopicAnswer(f"{k} of {v.n} movies were new releases (at most a year old) when they rated them.",
                       {"count": k}, k / v.n)


def favourite_movie(v, pop):
    i = int(np.lexsort((v.ts, v.rating))[-1])  # highest rating, most recent among ties
    return TopicAnswer(f"'{v.titles[i]}', which they rated {int(v.rating[i])}/5.",
                       {"title": v.titles[i], "rating": int(v.rating[i])}, None)


def least_favourite_movie(v, pop):
    i = int(np.lexsort((v.ts, -v.rating))[-1])  # lowest rating, most recent among ties
    return TopicAnswer(f"'{v.titles[i]}', which they rated {int(v.rating[i])}/5.",
                       {"title": v.titles[i], "rating": int(v.rating[i])}, float(-v.rating[i]))


def comedy_vs_drama(v, pop):
    c, d = int(v.has("Comedy").sum()), int(v.has("Drama").sum())
    word = "comedies" if c > d else "dramas" if d > c else "both equally"
    return TopicAnswer(f"They watch more {word}: {c} comedies and {d} dramas.", {"comedy": c, "drama": d},
                       (c - d) / v.n)


def _genre_share_topic(genres: tuple[str, ...], label: str):
    def fn(v, pop):
        m = np.zeros(v.n, bool)
        for g in genres:
            m |= v.has(g)
        k = int(m.sum())
        liked = int((v.rating[m] >= 4).sum())
        return TopicAnswer(f"{k} of their {v.n} movies are {label} ({_pct(k / v.n)}); they liked {liked} of them.",
                           {"count": k, "liked": liked}, k / v.n)
    return fn


def mainstream(v, pop):
    if not len(pop.item_pop):
        return None
    p = pop.item_pop[v.item]
    med = float(np.median(p))
    word = ("mostly popular titles" if med > np.median(pop.item_pop[pop.item_pop > 0]) * 3
            else "many lesser-known titles")
    return TopicAnswer(f"They watch {word}: the median movie they rated has {int(med)} ratings from other users.",
                       {"median_pop": int(med)}, float(np.log1p(med)))


def obscure_pick(v, pop):
    if not len(pop.item_pop):
        return None
    i = int(np.argmin(pop.item_pop[v.item]))
    return TopicAnswer(f"'{v.titles[i]}', which only {int(pop.item_pop[v.item[i]])} other ratings mention.",
                       {"title": v.titles[i]}, float(-np.log1p(pop.item_pop[v.item[i]])))


def history_span(v, pop):
    days = int((v.ts.max() - v.ts.min()) // DAY)
    return TopicAnswer(f"Their ratings span {days} days.", {"days": days}, float(np.log1p(days)))


def longest_gap(v, pop):
    gap = int(np.diff(v.ts).max() // DAY) if v.n > 1 else 0
    return TopicAnswer(f"Their longest break between two ratings was {gap} days.", {"days": gap},
                       float(np.log1p(gap)))


def genres_per_movie(v, pop):
    m = float(np.mean([len(g) for g in v.genres]))
    return TopicAnswer(f"Their movies have {m:.1f} genres each on average.", {"mean": round(m, 1)}, m)


def first_movie(v, pop):
    return TopicAnswer(f"'{v.titles[0]}', rated {int(v.rating[0])}/5.", {"title": v.titles[0]}, None)


def latest_movie(v, pop):
    return TopicAnswer(f"'{v.titles[-1]}', rated {int(v.rating[-1])}/5.", {"title": v.titles[-1]}, None)


def favourite_genre_bias(v, pop):
    g, _ = _top_genre(v)
    m = v.has(g)
    if m.all() or not m.any():
        return None
    a, b = float(v.rating[m].mean()), float(v.rating[~m].mean())
    word = "higher" if a > b else "lower" if a < b else "the same"
    return TopicAnswer(f"They rate {g} {word} than other movies ({a:.1f} vs {b:.1f}).",
                       {"genre": g, "in": round(a, 1), "out": round(b, 1)}, a - b)


TOPICS: list[Topic] = [
    Topic("favourite_genre", "Which movie genre does this user watch most?", favourite_genre),
    Topic("best_rated_genre", "Which genre does this user rate highest?", best_rated_genre),
    Topic("worst_rated_genre", "Which genre does this user rate lowest?", worst_rated_genre),
    Topic("harshness", "How harsh or generous is this user when rating movies?", harshness),
    Topic("rating_spread", "How consistent are this user's ratings?", rating_spread),
    Topic("five_star_share", "How often does this user give 5 stars?", five_star_share),
    Topic("low_rating_share", "How often does this user give a movie 1 or 2 stars?", low_rating_share),
    Topic("most_common_rating", "Which rating does this user give most often?", most_common_rating),
    Topic("taste_diversity", "How diverse is this user's taste in movies?", taste_diversity),
    Topic("activity_level", "How many movies has this user rated?", activity_level),
    Topic("active_days", "On how many days has this user been active?", active_days),
    Topic("weekend_share", "Does this user watch movies on weekdays or weekends?", weekend_share),
    Topic("binge", "Does this user binge, rating many movies in one day?", binge),
    Topic("time_of_day", "At what time of day does this user usually rate movies?", time_of_day),
    Topic("favourite_decade", "Movies from which decade does this user watch most?", favourite_decade),
    Topic("classics_share", "Does this user watch old classics?", classics_share),
    Topic("new_releases", "Does this user watch new releases?", new_releases),
    Topic("favourite_movie", "Which movie did this user like best recently?", favourite_movie),
    Topic("least_favourite_movie", "Which movie did this user like least recently?", least_favourite_movie),
    Topic("comedy_vs_drama", "Does this user prefer comedies or dramas?", comedy_vs_drama),
    Topic("action_share", "How much does this user like action movies?", _genre_share_topic(("Action",), "action")),
    Topic("horror_share", "Does this user watch horror movies?", _genre_share_topic(("Horror",), "horror")),
    Topic("family_share", "Does this user watch animated or children's movies?",
          _genre_share_topic(("Animation", "Children's"), "animated or children's")),
    Topic("scifi_fantasy_share", "Is this user into science fiction and fantasy?",
          _genre_share_topic(("Sci-Fi", "Fantasy"), "science fiction or fantasy")),
    Topic("romance_share", "Does this user watch romantic movies?", _genre_share_topic(("Romance",), "romance")),
    Topic("crime_thriller_share", "Does this user like crime and thrillers?",
          _genre_share_topic(("Crime", "Thriller", "Mystery"), "crime, thriller or mystery")),
    Topic("niche_genre_share", "Does this user watch niche genres like documentaries, film noir or westerns?",
          _genre_share_topic(NICHE, "documentaries, film noir, westerns or musicals")),
    Topic("war_share", "Does this user watch war movies?", _genre_share_topic(("War",), "war")),
    Topic("mainstream", "Does this user watch mainstream or lesser-known movies?", mainstream),
    Topic("obscure_pick", "What is the least-known movie this user rated?", obscure_pick),
    Topic("history_span", "For how long has this user been rating movies?", history_span),
    Topic("longest_gap", "What was this user's longest break from rating movies?", longest_gap),
    Topic("genres_per_movie", "Does this user pick movies that mix many genres?", genres_per_movie),
    Topic("first_movie", "What was the first movie this user rated?", first_movie),
    Topic("latest_movie", "What was the most recent movie this user rated?", latest_movie),
    Topic("favourite_genre_bias", "Does this user rate their favourite genre more kindly than other movies?",
          favourite_genre_bias),
]
