"""Future-behaviour questions: one aspect of the user's *future* window per question, a multi-fact answer each.

The paper's future-behaviour pairs summarise the next window "aggregated by category and time". One summary
question ("What will this user do next?", training.data.pairs.future_summary) mixes every aspect, titles
included; here each aspect gets its own question, so that in a batch of users answering the *same* question
(optim.question_group) the answers differ only in what the user goes on to do: the anchor can match its own
answer only by reading the user's history. Answers lead with a word for the level ("Mostly", "Rarely") and then
give the numbers, so the semantic tower can tell answers apart before it learns to read digits.

Each aspect has a few wordings; a user's wording is fixed by a hash of (user, topic), so runs are reproducible
and the model meets every wording without memorising one string per aspect.

Two answer styles (`data.aspect_answers`):
- "counts" (the default artifact's): every aspect quotes counts out of the future window ("Comedy 25 of 80",
  "62 of 80 liked"), and the taste answer names genres. So every answer repeats the user's future volume and
  their main genres: the semantic tower places one user's five aspect answers almost identically (linear CKA
  0.93-0.99 between the aspects' answer embeddings of 120 val users, ratings the exception at 0.45), and an
  anchor that ignores the question (one "volume + main genre" factor) wins every question group.
- "own": each answer states only its own aspect's facts: shares instead of counts (the volume is the activity
  answer's alone), the taste answer without genres (they are the genres answer's). Same facts dicts, same
  questions; only the answer texts differ.

Yes/no checks (`data.future_checks: k`, `draw_checks`): k more questions per user, each asking whether one genre
(any of the 18) or one release decade (1930s-1990s) appears in the user's future window. The answer leads with
"Yes" or "No", and the `<USER_EMB>` position predicts an answer's first token (NTP), so for every check the state
under *that* question must carry its yes/no along one shared direction of the vocabulary; the rest of the answer
(how many of the next n, or what they watch instead) keeps the answers of one question different between users.
The catalogue is every genre and decade, worded by two fixed templates, not any evaluation scenario's wording.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from training.config import ASPECT_ANSWER_STYLES as ANSWER_STYLES
from training.data.movielens import GENRES
from training.data.qa_topics import TopicAnswer
from training.data.view import DAY, WindowView


@dataclass
class FutureTopic:
    name: str
    questions: tuple[str, ...]  # wordings of one question
    fn: Callable[..., TopicAnswer | None]  # (history, future, style) -> answer

    def answer(self, h: WindowView, f: WindowView, style: str = "counts") -> TopicAnswer | None:
        if style not in ANSWER_STYLES:
            raise ValueError(f"unknown aspect answer style {style!r}; known: {ANSWER_STYLES}")
        return self.fn(h, f, style)

    def question(self, user: int) -> str:
        return self.questions[_hash(f"{self.name}:{user}", 4) % len(self.questions)]


def _hash(key: str, nbytes: int = 8) -> int:
    """A stable integer of `key` (sha256, first `nbytes`): reproducible draws across runs and machines."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:nbytes], "big")


def level_word(share: float) -> str:
    return "Mostly" if share >= 0.5 else "Often" if share >= 0.25 else "Sometimes" if share >= 0.1 else "Rarely"


def _pct(k: int, n: int) -> str:
    return f"{round(100 * k / n)}%"


def future_genres(h: WindowView, f: WindowView, style: str = "counts") -> TopicAnswer:
    c = f.genre_counts()
    top = sorted((g for g in GENRES if c[g] > 0), key=lambda g: (-c[g], GENRES.index(g)))[:3]
    before = h.genre_counts()
    new = [g for g in top if before[g] == 0]
    part = (lambda g: f"{g} {_pct(c[g], f.n)}") if style == "own" else (lambda g: f"{g} {c[g]} of {f.n}")
    text = f"{level_word(c[top[0]] / f.n)} {top[0]}: " + ", ".join(part(g) for g in top) + "."
    if new:
        text += " New for them: " + ", ".join(new) + "."
    return TopicAnswer(text, {"genres": {g: c[g] for g in top}, "new": new}, c[top[0]] / f.n)


def future_activity(h: WindowView, f: WindowView, style: str = "counts") -> TopicAnswer:  # counts are its facts
    span = int((f.ts.max() - f.ts.min()) // DAY)
    first = int((f.day == f.day[0]).sum())
    pace = "A burst" if span <= 2 else "Steady" if f.n / max(span, 1) >= 0.5 else "Occasional"
    return TopicAnswer(f"{pace}: {f.n} more ratings over {span + 1} day{'s' if span else ''}, "
                       f"{first} on the first day.",
                       {"count": f.n, "days": span + 1, "first_day": first}, float(np.log(f.n)))


def future_ratings(h: WindowView, f: WindowView, style: str = "counts") -> TopicAnswer:
    m, before = float(f.rating.mean()), float(h.rating.mean())
    word = "Lower than before" if m < before - 0.2 else "Higher than before" if m > before + 0.2 else "As before"
    five, low = int((f.rating == 5).sum()), int((f.rating <= 2).sum())
    tail = f"{_pct(five, f.n)} five-star, {_pct(low, f.n)} low" if style == "own" else f"{five} five-star and {low} low"
    return TopicAnswer(f"{word}: {m:.1f}/5 on average (was {before:.1f}); {tail} ratings.",
                       {"mean": round(m, 1), "before": round(before, 1), "five": five, "low": low}, m - before)


def future_era(h: WindowView, f: WindowView, style: str = "counts") -> TopicAnswer | None:
    y = f.year[f.year > 0]
    if not len(y):
        return None
    dec, cnt = np.unique(y // 10 * 10, return_counts=True)
    d = int(dec[cnt.argmax()])
    old = int((y < 1980).sum())
    share, before = ((_pct(int(cnt.max()), len(y)), _pct(old, len(y))) if style == "own"
                     else (f"{int(cnt.max())} of {len(y)}", str(old)))
    return TopicAnswer(f"{level_word(cnt.max() / len(y))} from the {d}s ({share}); {before} released "
                       f"before 1980, median year {int(np.median(y))}.",
                       {"decade": d, "old": old, "median": int(np.median(y))}, float(np.median(y)))


def future_taste(h: WindowView, f: WindowView, style: str = "counts") -> TopicAnswer | None:
    loved = np.nonzero(f.rating >= 4)[0]
    if not len(loved):
        return TopicAnswer("Nothing: they will not rate any upcoming movie 4 or 5 stars.", {"loved": []}, 0.0)
    c = {g: 0 for g in GENRES}
    for i in loved:
        for g in f.genres[i]:
            c[g] += 1
    top = sorted((g for g in GENRES if c[g] > 0), key=lambda g: (-c[g], GENRES.index(g)))[:2]
    best = int(loved[np.lexsort((-f.ts[loved], -f.rating[loved]))[0]])
    if style == "own":  # how much they like, and one title: genres are the genres answer's
        return TopicAnswer(f"{level_word(len(loved) / f.n)} liked: {_pct(len(loved), f.n)} rated 4 or 5 stars, "
                           f"such as '{f.titles[best]}'.",
                           {"loved": len(loved), "genres": top, "title": f.titles[best]}, len(loved) / f.n)
    return TopicAnswer(f"{level_word(len(loved) / f.n)} liked: {len(loved)} of {f.n}, mostly "
                       f"{' and '.join(top)}, such as '{f.titles[best]}'.",
                       {"loved": len(loved), "genres": top, "title": f.titles[best]}, len(loved) / f.n)


FUTURE_TOPICS: list[FutureTopic] = [
    FutureTopic("future_genres", ("Which genres will this user watch next?",
                                  "What kinds of movies is this user going to watch next?",
                                  "Which genres will dominate this user's upcoming ratings?"), future_genres),
    FutureTopic("future_activity", ("How active will this user be from now on?",
                                    "How many more movies will this user rate, and how quickly?",
                                    "What will this user's upcoming rating activity look like?"), future_activity),
    FutureTopic("future_ratings", ("How will this user rate the movies they watch next?",
                                   "Will this user's upcoming ratings be generous or strict?",
                                   "What scores will this user give from now on?"), future_ratings),
    FutureTopic("future_era", ("How old will the movies this user watches next be?",
                               "From which decades will this user's next movies come?",
                               "Will this user's upcoming movies be recent or old?"), future_era),
    FutureTopic("future_taste", ("Which upcoming movies will this user enjoy?",
                                 "What will this user like among the movies they watch next?",
                                 "Which of their next movies will this user rate highly?"), future_taste),
]


CHECK_DECADES = tuple(range(1930, 2000, 10))
CHECK_WORDINGS = {
    "genre": ("Does {x} appear among the next movies this user rates?", "Are any of this user's upcoming movies {x}?"),
    "decade": ("Does a film from the {x}s appear among the next movies this user rates?",
               "Are any of this user's upcoming movies from the {x}s?"),
}
CHECKS: tuple[tuple[str, str | int], ...] = (tuple(("genre", g) for g in GENRES)
                                             + tuple(("decade", d) for d in CHECK_DECADES))




def check_answer(kind: str, x: str | int, f: WindowView) -> TopicAnswer | None:
    """Whether genre / decade `x` appears in the future window `f`: "Yes: k of their next n, p%." or "No: none of
    their next n; mostly <what they watch instead>."; None where the window cannot say (no known years)."""
    if kind == "genre":
        c = f.genre_counts()
        n, k = f.n, c[x]
        other = max(GENRES, key=lambda g: (c[g], -GENRES.index(g)))
    else:
        y = f.year[f.year > 0]
        if not len(y):
            return None
        dec, cnt = np.unique(y // 10 * 10, return_counts=True)
        n, k = len(y), int(cnt[dec == x].sum())
        other = f"the {int(dec[cnt.argmax()])}s"
    if k:
        return TopicAnswer(f"Yes: {k} of their next {n}, {_pct(k, n)}.", {"yes": True, "count": k, "of": n}, k / n)
    return TopicAnswer(f"No: none of their next {n}; mostly {other}.", {"yes": False, "of": n, "instead": other}, 0.0)


def draw_checks(user: int, f: WindowView, k: int) -> list[tuple[str, str, TopicAnswer]]:
    """`k` yes/no checks for `user` (a fixed draw from CHECKS by a hash of the user, so runs are reproducible):
    (topic name, question, answer) each; checks the window cannot answer are skipped."""
    if k < 0:
        raise ValueError(f"future_checks must be >= 0, got {k}")
    order = np.random.default_rng(_hash(f"checks:{user}")).permutation(len(CHECKS))[:k]
    out = []
    for i in order:
        kind, x = CHECKS[int(i)]
        a = check_answer(kind, x, f)
        if a is None:
            continue
        topic = f"check_{kind}_{x}"
        wordings = CHECK_WORDINGS[kind]
        out.append((topic, wordings[_hash(f"{topic}:{user}") % len(wordings)].format(x=x), a))
    return out
