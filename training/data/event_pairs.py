"""UserU-style pretraining pairs from any event log (paper §3.1): generic event facts, no dataset vocabulary.

The MovieLens pairs (training.data.pairs) know genres, titles and release years by name; these read only what the
event contract carries and sources.yaml declares: the source of each event (with its description), its time, its
text, its item (`item_id`, shown by `title` when sent) and the attributes `statistics:` names (a rating, a year, a
list of categories). The recipe is the one docs/model.md measured (issue "Embeddings that carry the user"):

- **future aspects**: one question per aspect of the user's *future* window (how active, which sources, which
  categories, how they rate, which items), each with a multi-fact answer that leads with a level word; in a batch of
  users answering the same question only the user's history can tell the answers apart;
- **a future summary** under FUTURE_QUERY (training.data.pairs);
- **history QA**: facts of the history window (activity, source mix, ratings, categories, items, timing, how
  mainstream), per user the `top_k` most unusual ones (|z| of the fact's statistic over train users).

Questions with several wordings pick one per (user, topic) by hash, as in training.data.future_topics.

    python -m training.data.event_pairs --users 3       # print some pairs (--log-root DIR: another log)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np

from training.data.event_log import default_log_root
from training.data.event_world import EventWorld, build_event_world
from training.data.future_topics import level_word
from training.data.pairs import FUTURE_QUERY, Pair, reference_users, relevance_moments
from training.data.qa_topics import TopicAnswer, busiest_hours
from training.data.view import DAY, TimeAxes

log = logging.getLogger(__name__)


@dataclass
class EventWindow(TimeAxes):
    """One user's window (history or future) as arrays, oldest first."""

    ts: np.ndarray  # [n] int64
    source: np.ndarray  # [n] int source index
    rating: np.ndarray  # [n] float64, nan where absent
    year: np.ndarray  # [n] float64, 0 unknown
    cats: list[tuple[str, ...]]
    item: np.ndarray  # [n] int
    labels: list[str]  # item label per event
    source_names: list[str]
    source_descriptions: list[str]

    @property
    def n(self) -> int:
        return len(self.ts)

    @cached_property
    def rated(self) -> np.ndarray:
        return ~np.isnan(self.rating)

    def cat_counts(self) -> Counter:
        return Counter(c for cs in self.cats for c in cs)

    def source_counts(self) -> list[int]:
        return np.bincount(self.source, minlength=len(self.source_names)).tolist()

    def source_phrase(self, i: int) -> str:
        d = self.source_descriptions[i]
        return f"{self.source_names[i]} ({d})" if d else self.source_names[i]


def event_window(world: EventWorld, user: int, window: str = "history") -> EventWindow:
    tl = world.timelines[user]
    rows = tl.history if window == "history" else tl.future
    return EventWindow(ts=world.ts[rows], source=world.source_of_row[rows].astype(np.int64),
                       rating=world.rating[rows], year=world.year[rows], cats=[world.categories[i] for i in rows],
                       item=world.item[rows], labels=[world.item_labels[i] for i in world.item[rows]],
                       source_names=world.sources.names,
                       source_descriptions=[s.description for s in world.sources.sources])


@dataclass
class EventPopulation:
    """Context from train users' history windows only: item popularity and the mean rating."""

    item_pop: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mean_rating: float = float("nan")


def population(world: EventWorld) -> EventPopulation:
    rows = np.concatenate([world.timelines[u].history for u in world.users("train")] or [np.zeros(0, np.int64)])
    pop = np.bincount(world.item[rows], minlength=len(world.items)).astype(np.float64)
    r = world.rating[rows]
    r = r[~np.isnan(r)]
    return EventPopulation(pop, float(r.mean()) if len(r) else float("nan"))


def _pct(x: float) -> str:
    return f"{round(100 * x)}%"


def _top(counter: Counter, k: int) -> list[tuple[str, int]]:
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def _quote(label: str) -> str:
    return f"'{label}'"


def _picks(w: EventWindow, order: np.ndarray, k: int) -> list[int]:
    """Up to k distinct items from event indices `order` (preference order), each adding a category not yet
    covered when possible: preference decides the order, diversity the pick."""
    chosen, seen_items, covered = [], set(), set()
    for i in order:
        if len(chosen) == k:
            break
        if w.item[i] in seen_items:
            continue
        if not covered or not set(w.cats[i]) <= covered:
            chosen.append(int(i))
            seen_items.add(w.item[i])
            covered |= set(w.cats[i])
    for i in order:
        if len(chosen) == k:
            break
        if int(i) not in chosen and w.item[i] not in seen_items:
            chosen.append(int(i))
            seen_items.add(w.item[i])
    return chosen


# ---- history facts (QA) --------------------------------------------------------------------------------------
Fact = Callable[[EventWindow, EventPopulation], "TopicAnswer | None"]


def activity(w, pop):
    d = len(np.unique(w.day))
    span = int((w.ts.max() - w.ts.min()) // DAY) + 1
    return TopicAnswer(f"{w.n} events on {d} different days over {span} days ({w.n / d:.1f} per active day).",
                       {"count": w.n, "active_days": d, "span_days": span}, float(np.log(w.n)))


def source_mix(w, pop):
    c = w.source_counts()
    order = sorted(range(len(c)), key=lambda i: (-c[i], i))
    top = order[0]
    text = f"{level_word(c[top] / w.n)} {w.source_phrase(top)}: " + \
        ", ".join(f"{w.source_names[i]} {c[i]} of {w.n}" for i in order if c[i]) + "."
    return TopicAnswer(text, {w.source_names[i]: c[i] for i in order}, c[top] / w.n)


def _source_share(i: int) -> Fact:
    def fn(w, pop):
        k = w.source_counts()[i]
        return TopicAnswer(f"{level_word(k / w.n)}: {k} of their {w.n} events ({_pct(k / w.n)}) are "
                           f"{w.source_phrase(i)}.", {"count": k}, k / w.n)
    return fn


def rating_level(w, pop):
    r = w.rating[w.rated]
    if not len(r):
        return None
    m = float(r.mean())
    ref = pop.mean_rating
    word = ("about as high as" if np.isnan(ref) or abs(m - ref) <= 0.15 else
            "lower than" if m < ref else "higher than")
    return TopicAnswer(f"{m:.2f} on average over {len(r)} rated events, {word} the typical user"
                       + (f" ({ref:.2f})." if not np.isnan(ref) else "."), {"mean": round(m, 2), "verdict": word}, m)


def rating_spread(w, pop):
    r = w.rating[w.rated]
    if len(r) < 2:
        return None
    s = float(r.std())
    word = "very consistent" if s < 0.8 else "spread out" if s > 1.2 else "moderately varied"
    return TopicAnswer(f"Their ratings are {word} (standard deviation {s:.2f}).", {"std": round(s, 2)}, s)


def top_categories(w, pop):
    c = w.cat_counts()
    if not c:
        return None
    top = _top(c, 3)
    return TopicAnswer(f"{level_word(top[0][1] / w.n)} {top[0][0]}: " + ", ".join(f"{k} {v} of {w.n}" for k, v in top)
                       + ".", {"categories": dict(top)}, top[0][1] / w.n)


def category_breadth(w, pop):
    c = w.cat_counts()
    if not c:
        return None
    p = np.array(list(c.values()), float)
    p /= p.sum()
    ent = float(-(p * np.log(p)).sum())
    word = "broad" if ent > 2.2 else "narrow" if ent < 1.7 else "moderately broad"
    return TopicAnswer(f"Their taste is {word}: {len(c)} different categories over {w.n} events.",
                       {"n_categories": len(c)}, ent)


def _category_means(w: EventWindow, min_count: int = 3) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for i in np.nonzero(w.rated)[0]:
        for cat in w.cats[i]:
            sums.setdefault(cat, []).append(float(w.rating[i]))
    return {k: float(np.mean(v)) for k, v in sums.items() if len(v) >= min_count}


def _rated_category(w: EventWindow, best: bool) -> TopicAnswer | None:
    """The category rated highest (best) or lowest, with its distance from the user's mean as the statistic."""
    means = _category_means(w)
    if len(means) < 2:
        return None
    k = (max if best else min)(sorted(means), key=lambda x: means[x])
    gap = means[k] - float(w.rating[w.rated].mean())
    return TopicAnswer(f"{k}, rated {'' if best else 'only '}{means[k]:.1f} on average.",
                       {"category": k, "mean": round(means[k], 1)}, gap if best else -gap)


def best_category(w, pop):
    return _rated_category(w, best=True)


def worst_category(w, pop):
    return _rated_category(w, best=False)


def era(w, pop):
    y = w.year[w.year > 0]
    if not len(y):
        return None
    dec, cnt = np.unique(y.astype(np.int64) // 10 * 10, return_counts=True)
    d = int(dec[cnt.argmax()])
    return TopicAnswer(f"{level_word(cnt.max() / len(y))} from the {d}s ({int(cnt.max())} of {len(y)}); median year "
                       f"{int(np.median(y))}.", {"decade": d, "median": int(np.median(y))}, float(np.median(y)))


def favourite_item(w, pop):
    if not w.rated.any():
        return None
    idx = np.nonzero(w.rated)[0]
    i = int(idx[np.lexsort((w.ts[idx], w.rating[idx]))[-1]])  # highest rating, most recent among ties
    return TopicAnswer(f"{_quote(w.labels[i])}, rated {w.rating[i]:g}.", {"item": w.labels[i]}, None)


def least_favourite_item(w, pop):
    if not w.rated.any():
        return None
    idx = np.nonzero(w.rated)[0]
    i = int(idx[np.lexsort((w.ts[idx], -w.rating[idx]))[-1]])  # lowest rating, most recent among ties
    return TopicAnswer(f"{_quote(w.labels[i])}, rated {w.rating[i]:g}.", {"item": w.labels[i]},
                       float(-w.rating[i]))


def recent_items(w, pop):
    last = _picks(w, np.arange(w.n)[::-1], 3)
    return TopicAnswer("Most recently: " + ", ".join(_quote(w.labels[i]) for i in last) + ".",
                       {"items": [w.labels[i] for i in last]}, None)


def first_item(w, pop):
    return TopicAnswer(f"{_quote(w.labels[0])}.", {"item": w.labels[0]}, None)


def repeat_items(w, pop):
    c = Counter(w.item.tolist())
    distinct = len(c)
    if distinct == w.n:
        return TopicAnswer(f"No: each of their {w.n} events is about a different item.", {"repeats": 0}, 0.0)
    item, k = _top(Counter({w.labels[int(np.nonzero(w.item == i)[0][0])]: v for i, v in c.items()}), 1)[0]
    return TopicAnswer(f"Yes: {w.n - distinct} of {w.n} events return to an item seen before; most often "
                       f"{_quote(item)} ({k} times).", {"repeats": w.n - distinct, "item": item},
                       (w.n - distinct) / w.n)


def mainstream(w, pop):
    if not len(pop.item_pop) or not (pop.item_pop > 0).any():
        return None
    p = pop.item_pop[w.item]
    med = float(np.median(p))
    ref = float(np.median(pop.item_pop[pop.item_pop > 0]))
    word = "mostly popular items" if med > ref * 3 else "many lesser-known items"
    return TopicAnswer(f"They pick {word}: the median item they touch has {int(med)} events from other users.",
                       {"median_pop": int(med)}, float(np.log1p(med)))


def obscure_pick(w, pop):
    if not len(pop.item_pop):
        return None
    i = int(np.argmin(pop.item_pop[w.item]))
    k = int(pop.item_pop[w.item[i]])
    return TopicAnswer(f"{_quote(w.labels[i])}, which " + (f"only {k} other events mention." if k else
                                                             "no other user's history mentions."),
                       {"item": w.labels[i]}, float(-np.log1p(pop.item_pop[w.item[i]])))


def weekend(w, pop):
    k = int(w.weekend.sum())
    word = "Mostly on weekends" if k / w.n > 0.5 else "Mostly on weekdays"
    return TopicAnswer(f"{word}: {k} of {w.n} events fall on a Saturday or Sunday.", {"weekend": k}, k / w.n)


def time_of_day(w, pop):
    bucket, k = busiest_hours(w.ts)
    return TopicAnswer(f"Mostly in the {bucket} (UTC): {k} of {w.n} events.", {"bucket": bucket, "count": k}, k / w.n)


def busiest_day(w, pop):
    _, counts = np.unique(w.day, return_counts=True)
    return TopicAnswer(f"Their busiest day had {int(counts.max())} events.", {"max_per_day": int(counts.max())},
                       float(np.log(counts.max())))


def longest_gap(w, pop):
    gap = int(np.diff(w.ts).max() // DAY) if w.n > 1 else 0
    return TopicAnswer(f"Their longest break between two events was {gap} days.", {"days": gap},
                       float(np.log1p(gap)))


@dataclass
class EventTopic:
    name: str
    question: str
    fn: Fact


def history_topics(world: EventWorld) -> list[EventTopic]:
    """The QA topics of this world: the generic ones plus one share question per declared source."""
    topics = [
        EventTopic("activity", "How active is this user?", activity),
        EventTopic("source_mix", "What kinds of events make up this user's history?", source_mix),
        EventTopic("rating_level", "How does this user rate things?", rating_level),
        EventTopic("rating_spread", "How consistent are this user's ratings?", rating_spread),
        EventTopic("top_categories", "Which categories does this user engage with most?", top_categories),
        EventTopic("category_breadth", "How broad is this user's taste?", category_breadth),
        EventTopic("best_category", "Which category does this user rate highest?", best_category),
        EventTopic("worst_category", "Which category does this user rate lowest?", worst_category),
        EventTopic("era", "How old are the items this user picks?", era),
        EventTopic("favourite_item", "Which item did this user like best recently?", favourite_item),
        EventTopic("least_favourite_item", "Which item did this user like least recently?", least_favourite_item),
        EventTopic("recent_items", "What has this user engaged with most recently?", recent_items),
        EventTopic("first_item", "What was the first item in this user's history?", first_item),
        EventTopic("repeat_items", "Does this user return to the same items?", repeat_items),
        EventTopic("mainstream", "Does this user pick mainstream or lesser-known items?", mainstream),
        EventTopic("obscure_pick", "What is the least-known item this user engaged with?", obscure_pick),
        EventTopic("weekend", "Is this user active on weekdays or weekends?", weekend),
        EventTopic("time_of_day", "At what time of day is this user usually active?", time_of_day),
        EventTopic("busiest_day", "Does this user have bursts of many events in one day?", busiest_day),
        EventTopic("longest_gap", "What was this user's longest break?", longest_gap),
    ]
    for i, s in enumerate(world.sources.sources):
        what = f"'{s.name}' events ({s.description})" if s.description else f"'{s.name}' events"
        topics.append(EventTopic(f"share_{s.name}", f"How much of this user's activity is {what}?", _source_share(i)))
    return topics


# ---- future aspects ------------------------------------------------------------------------------------------
FutureFact = Callable[[EventWindow, EventWindow], "TopicAnswer | None"]


def future_activity(h, f):
    span = int((f.ts.max() - f.ts.min()) // DAY)
    first = int((f.day == f.day[0]).sum())
    pace = "A burst" if span <= 2 else "Steady" if f.n / max(span, 1) >= 0.5 else "Occasional"
    return TopicAnswer(f"{pace}: {f.n} more events over {span + 1} day{'s' if span else ''}, {first} on the first day.",
                       {"count": f.n, "days": span + 1, "first_day": first}, float(np.log(f.n)))


def future_sources(h, f):
    c, before = f.source_counts(), h.source_counts()
    order = sorted(range(len(c)), key=lambda i: (-c[i], i))
    top = order[0]
    text = f"{level_word(c[top] / f.n)} {f.source_phrase(top)}: " + \
        ", ".join(f"{f.source_names[i]} {c[i]} of {f.n} (was {_pct(before[i] / max(h.n, 1))})"
                  for i in order if c[i]) + "."
    return TopicAnswer(text, {f.source_names[i]: c[i] for i in order}, c[top] / f.n)


def future_categories(h, f):
    c = f.cat_counts()
    if not c:
        return None
    top = _top(c, 3)
    before = h.cat_counts()
    new = [k for k, _ in top if before.get(k, 0) == 0]
    text = f"{level_word(top[0][1] / f.n)} {top[0][0]}: " + ", ".join(f"{k} {v} of {f.n}" for k, v in top) + "."
    if new:
        text += " New for them: " + ", ".join(new) + "."
    return TopicAnswer(text, {"categories": dict(top), "new": new}, top[0][1] / f.n)


def future_ratings(h, f):
    r, rb = f.rating[f.rated], h.rating[h.rated]
    if not len(r) or not len(rb):
        return None
    m, before = float(r.mean()), float(rb.mean())
    word = "Lower than before" if m < before - 0.2 else "Higher than before" if m > before + 0.2 else "As before"
    hi, lo = int((r >= r.max()).sum()), int((r <= r.min()).sum())
    return TopicAnswer(f"{word}: {m:.1f} on average (was {before:.1f}); top score {r.max():g} ({hi}x), lowest "
                       f"{r.min():g} ({lo}x).", {"mean": round(m, 1), "before": round(before, 1)}, m - before)


def future_items(h, f):
    order = np.lexsort((-f.ts, -np.nan_to_num(f.rating, nan=-np.inf))) if f.rated.any() else np.arange(f.n)[::-1]
    picks = _picks(f, order, 3)
    seen = set(h.item.tolist())
    again = [i for i in picks if f.item[i] in seen]
    text = "Such as " + ", ".join(_quote(f.labels[i]) for i in picks) + "."
    if again:
        text += " Back to: " + ", ".join(_quote(f.labels[i]) for i in again) + "."
    return TopicAnswer(text, {"items": [f.labels[i] for i in picks]}, None)


def future_era(h, f):
    return era(f, None)


@dataclass
class EventFutureTopic:
    name: str
    questions: tuple[str, ...]
    fn: FutureFact

    def question(self, user_id: str) -> str:
        h = int.from_bytes(hashlib.sha256(f"{self.name}:{user_id}".encode()).digest()[:4], "big")
        return self.questions[h % len(self.questions)]


FUTURE_EVENT_TOPICS: list[EventFutureTopic] = [
    EventFutureTopic("future_activity", ("How active will this user be from now on?",
                                         "How many more events will this user have, and how quickly?"),
                     future_activity),
    EventFutureTopic("future_sources", ("What kinds of events will this user have next?",
                                        "How will this user's next events split between kinds?"), future_sources),
    EventFutureTopic("future_categories", ("Which categories will this user engage with next?",
                                           "What kinds of items is this user going to pick next?"), future_categories),
    EventFutureTopic("future_ratings", ("How will this user rate what comes next?",
                                        "Will this user's upcoming ratings be generous or strict?"), future_ratings),
    EventFutureTopic("future_items", ("Which items will this user engage with next?",
                                      "What will this user pick next?"), future_items),
    EventFutureTopic("future_era", ("How old will the items this user picks next be?",
                                    "Will this user's next items be recent or old?"), future_era),
]


def future_summary(h: EventWindow, f: EventWindow) -> tuple[str, dict]:
    parts = [future_activity(h, f).answer]
    for fn in (future_sources, future_categories, future_items, future_ratings):
        a = fn(h, f)
        if a is not None:
            parts.append(a.answer)
    return " ".join(parts), {"count": f.n}


# ---- assembly ------------------------------------------------------------------------------------------------
def build_event_pairs(world: EventWorld, users: list[int] | None = None, top_k: int = 10,
                      future_aspects: bool = True, aspect_answers: str = "counts",
                      future_checks: int = 0) -> list[Pair]:
    """Future summary + (with `future_aspects`) one pair per future aspect + the top-k history QA pairs, per user
    (default: every kept user). Same signature and Pair type as training.data.pairs.build_pairs."""
    if aspect_answers != "counts":
        raise ValueError(f"data.aspect_answers={aspect_answers!r} is built for the MovieLens pairs only; the event "
                         "log's generic pairs have the 'counts' answers (set data.aspect_answers=counts)")
    if future_checks:
        raise ValueError(f"data.future_checks={future_checks} asks MovieLens genre / decade questions; the event log's "
                         "generic pairs have none (set data.future_checks=0)")
    users = world.users() if users is None else users
    topics = history_topics(world)
    pop = population(world)
    mu, sd = relevance_moments(reference_users(world), lambda u: event_window(world, u, "history"),
                               [t.fn for t in topics], pop)
    out: list[Pair] = []
    for u in users:
        h, f = event_window(world, u, "history"), event_window(world, u, "future")
        ans, facts = future_summary(h, f)
        out.append(Pair(u, "future", "future_behaviour", FUTURE_QUERY, ans, 1.0, facts))
        if future_aspects:
            for ft in FUTURE_EVENT_TOPICS:
                a = ft.fn(h, f)
                if a is not None:
                    out.append(Pair(u, "future", ft.name, ft.question(world.user_id(u)), a.answer, 1.0, a.facts))
        scored = []
        for t, topic in enumerate(topics):
            a = topic.fn(h, pop)
            if a is None:
                continue
            rel = 0.5 if a.stat is None else abs(a.stat - mu[t]) / sd[t]
            scored.append(Pair(u, "qa", topic.name, topic.question, a.answer, float(rel), a.facts))
        scored.sort(key=lambda p: (-p.relevance, p.topic))
        out.extend(scored[:top_k])
    log.info("event_pairs_built users=%d pairs=%d top_k=%d future_aspects=%s", len(users), len(out), top_k,
             future_aspects)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Print or export pretraining pairs built from the event log")
    p.add_argument("--log-root", default=None, help="the event log folder (default $QANCHOR_EVENT_LOG_DIR, else the "
                                                    "local stack's $QANCHOR_STATE_DIR/eventlog)")
    p.add_argument("--cutoff", type=float, default=None, help="unix seconds: one time cut for every user")
    p.add_argument("--users", type=int, default=3)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--out", default=None, help="JSONL file (default: print)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    world = build_event_world(Path(args.log_root) if args.log_root else default_log_root(), cutoff=args.cutoff)
    pairs = build_event_pairs(world, world.users()[:args.users], args.top_k)
    lines = [json.dumps({**asdict(x), "user_id": world.user_id(x.user)}, ensure_ascii=False, default=str)
             for x in pairs]
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
