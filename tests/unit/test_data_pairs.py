"""Pretraining pairs are grounded: each answer's facts recompute from the user's own events."""
from __future__ import annotations

import re

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("torch")
pytest.importorskip("yaml")

from training.data.movielens import GENRES  # noqa: E402
from training.data.pairs import FUTURE_QUERY, build_pairs  # noqa: E402
from training.data.qa_topics import TOPICS  # noqa: E402

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def world(ml100k_world):
    return ml100k_world


@pytest.fixture(scope="module")
def pairs(world):
    return build_pairs(world, world.users()[:40], top_k=10)


def _hist(world, u):
    r, movies = world.ml.ratings, world.ml.movies
    rows = world.timelines[u].history
    return r.rating[rows], [movies[i] for i in r.item[rows]]


def test_at_least_30_topics_and_top_k(pairs):
    assert len(TOPICS) >= 30 and len({t.name for t in TOPICS}) == len(TOPICS)
    per_user: dict[int, list] = {}
    for p in pairs:
        per_user.setdefault(p.user, []).append(p)
    for ps in per_user.values():
        assert sum(p.kind == "future" for p in ps) == 1
        qa = [p for p in ps if p.kind == "qa"]
        assert len(qa) == 10 and len({p.topic for p in qa}) == 10
        assert [p.relevance for p in qa] == sorted((p.relevance for p in qa), reverse=True)
    used = {p.topic for p in pairs if p.kind == "qa"}
    assert len(used) >= 15  # relevance picks different topics for different users


def test_every_fact_is_in_its_answer(pairs):
    for p in pairs:
        for k, v in p.facts.items():
            vals = v if isinstance(v, list) else list(v) if isinstance(v, dict) else [v]
            for x in vals:
                assert str(x) in p.answer, (p.topic, k, x, p.answer)


def test_qa_answers_recomputed_from_history(world, pairs):
    checked = 0
    for p in pairs:
        if p.kind != "qa":
            continue
        ratings, movies = _hist(world, p.user)
        titles = {m.title for m in movies}
        if p.topic == "favourite_genre":
            counts = {g: sum(g in m.genres for m in movies) for g in GENRES}
            assert counts[p.facts["genre"]] == max(counts.values()) == p.facts["count"]
        elif p.topic == "harshness":
            assert p.facts["mean"] == round(float(ratings.mean()), 2)
        elif p.topic == "activity_level":
            assert p.facts["count"] == len(ratings)
        elif p.topic == "five_star_share":
            assert p.facts["count"] == int((ratings == 5).sum())
        elif p.topic in ("favourite_movie", "least_favourite_movie"):
            best = ratings.max() if p.topic == "favourite_movie" else ratings.min()
            assert p.facts["rating"] == best
            assert any(m.title == p.facts["title"] and r == best for m, r in zip(movies, ratings))
        if "title" in p.facts:
            assert p.facts["title"] in titles  # never a movie from outside the history window
        checked += 1
    assert checked > 100


def test_future_summary_grounded_in_future_window(world, pairs):
    r, movies = world.ml.ratings, world.ml.movies
    for p in pairs:
        if p.kind != "future":
            continue
        assert p.query == FUTURE_QUERY
        rows = world.timelines[p.user].future
        fut = {movies[i].title: int(x) for i, x in zip(r.item[rows], r.rating[rows])}
        assert p.facts["count"] == len(rows)
        assert all(fut[t] >= 4 for t in p.facts["loved"]) and all(fut[t] <= 2 for t in p.facts["disliked"])
        for g, c in p.facts["genres"].items():
            assert c == sum(g in movies[i].genres for i in r.item[rows])
        assert int(re.search(r"rates (\d+) movies", p.answer).group(1)) == len(rows)


def test_future_aspect_pairs_are_grounded_in_the_future_window(world):
    from training.data.future_topics import FUTURE_TOPICS

    users = world.users()[:30]
    plain = build_pairs(world, users, top_k=3)
    pairs = build_pairs(world, users, top_k=3, future_aspects=True)
    aspects = [p for p in pairs if p.topic in {t.name for t in FUTURE_TOPICS}]
    assert len(pairs) == len(plain) + len(aspects) and not [p for p in plain if p in aspects]
    assert {p.topic for p in aspects} == {t.name for t in FUTURE_TOPICS}
    for t in FUTURE_TOPICS:  # every user gets the aspect (era only if a release year is known), in one of its wordings
        got = [p for p in aspects if p.topic == t.name]
        assert len(got) >= 25 and all(p.query in t.questions and p.kind == "future" for p in got)
        assert len({p.answer for p in got}) > len(got) // 2  # answers differ between users answering one question
    r, movies = world.ml.ratings, world.ml.movies
    for p in aspects:
        fut = world.timelines[p.user].future
        if p.topic == "future_activity":
            assert p.facts["count"] == len(fut) and f"{len(fut)} more ratings" in p.answer
        if p.topic == "future_genres":
            counts = {g: sum(g in movies[i].genres for i in r.item[fut]) for g in GENRES}
            assert all(counts[g] == c for g, c in p.facts["genres"].items())
            assert max(p.facts["genres"].values()) == max(counts.values())
        if p.topic == "future_ratings":
            assert p.facts["mean"] == round(float(r.rating[fut].mean()), 1)
            assert p.facts["five"] == int((r.rating[fut] == 5).sum())
    # the wording is a pure function of (user, topic): reproducible runs
    again = build_pairs(world, users, top_k=3, future_aspects=True)
    assert [p.query for p in again] == [p.query for p in pairs]


def test_own_aspect_answers_state_only_their_own_facts(world):
    """data.aspect_answers=own: the future volume is the activity answer's alone, genres the genres answer's."""
    import pytest

    from training.config import ConfigError, DataConfig
    from training.data.future_topics import FUTURE_TOPICS

    users = world.users()[:30]
    counts = build_pairs(world, users, top_k=0, future_aspects=True)
    own = build_pairs(world, users, top_k=0, future_aspects=True, aspect_answers="own")
    assert [(p.user, p.topic, p.query, p.facts) for p in counts] == [(p.user, p.topic, p.query, p.facts) for p in own]
    aspect_names = {t.name for t in FUTURE_TOPICS}
    changed = 0
    for c, o in zip(counts, own):
        if c.topic not in aspect_names:
            assert c.answer == o.answer  # the summary question keeps its answer
            continue
        n = len(world.timelines[o.user].future)
        changed += c.answer != o.answer
        if o.topic == "future_activity":
            assert f"{n} more ratings" in o.answer and o.answer == c.answer
        else:
            text = o.answer.replace("4 or 5 stars", "")  # no future volume outside activity (n as a bare number)
            assert f"of {n}" not in text and not re.search(rf"(?<![\d./]){n}(?![\d%./])", text), (n, o.answer)
        if o.topic == "future_taste" and o.facts.get("genres"):
            assert not any(g in o.answer.split("such as")[0] for g in GENRES)  # genres are the genres answer's
    assert changed >= 4 * len(users) * 0.9
    with pytest.raises(ConfigError, match="aspect_answers"):
        DataConfig(aspect_answers="shares")
    with pytest.raises(ValueError, match="unknown aspect answer style"):
        FUTURE_TOPICS[0].answer(None, None, "shares")


def test_future_checks_answer_yes_or_no_from_the_future_window(world):
    """data.future_checks=k: k yes/no questions per user (one genre or release decade each), grounded in the future
    window, the first answer word the verdict, a reproducible draw; the other pairs are unchanged."""
    from training.config import ConfigError, DataConfig
    from training.data.future_topics import CHECK_WORDINGS, draw_checks

    users = world.users()[:40]
    plain = build_pairs(world, users, top_k=3, future_aspects=True)
    pairs = build_pairs(world, users, top_k=3, future_aspects=True, future_checks=4)
    checks = [p for p in pairs if p.topic.startswith("check_")]
    assert [p for p in pairs if not p.topic.startswith("check_")] == plain
    assert len(checks) >= 3.5 * len(users)  # 4 per user; a decade check is skipped where no year is known
    per_user = {u: [p.topic for p in checks if p.user == u] for u in users}
    assert all(len(set(t)) == len(t) <= 4 for t in per_user.values())  # no question twice for one user
    assert len({p.topic for p in checks}) >= 15  # the draw spreads over the catalogue
    r, movies = world.ml.ratings, world.ml.movies
    verdicts = []
    for p in checks:
        _, kind, x = p.topic.split("_", 2)
        items = [movies[i] for i in r.item[world.timelines[p.user].future]]
        if kind == "genre":
            k, n = sum(x in m.genres for m in items), len(items)
        else:
            years = [m.year for m in items if m.year > 0]
            k, n = sum(y // 10 * 10 == int(x) for y in years), len(years)
        assert p.facts["yes"] == (k > 0) and p.facts["of"] == n
        assert p.answer.startswith("Yes: " if k else "No: ") and f"next {n}" in p.answer
        assert p.query in {w.format(x=x) for w in CHECK_WORDINGS[kind]} and p.kind == "future"
        verdicts.append(k > 0)
    assert 0.2 < np.mean(verdicts) < 0.95  # both verdicts are common
    again = build_pairs(world, users, top_k=3, future_aspects=True, future_checks=4)
    assert again == pairs
    assert draw_checks(users[0], None, 0) == []
    with pytest.raises(ConfigError, match="future_checks"):
        DataConfig(future_checks=-1)
    assert DataConfig(future_checks=2).pair_options()["future_checks"] == 2
