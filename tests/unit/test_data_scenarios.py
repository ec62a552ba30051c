"""Scenario labels are sane: defined, both classes present, and equal to an independent recomputation."""
from __future__ import annotations

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("torch")
pytest.importorskip("yaml")

from training.data.scenarios import LABEL_FUNCTIONS, class_balance, load_scenarios  # noqa: E402

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def world(ml100k_world):
    return ml100k_world


def test_ten_scenarios_with_queries_and_known_label_functions():
    sc = load_scenarios()
    assert len(sc) == 10 and len({s.name for s in sc}) == 10
    assert all(s.query.endswith("?") and s.label in LABEL_FUNCTIONS for s in sc)


def test_class_balance_not_degenerate(world):
    for row in class_balance(world, load_scenarios()):
        assert row["train_n"] > 500, row
        assert 0.05 < row["train_pos"] < 0.95, row


def test_labels_match_recomputation(world):
    sc = {s.name: s for s in load_scenarios()}
    r, movies = world.ml.ratings, world.ml.movies
    for u in world.users()[:200]:
        user = world.ml.users[u]
        tl = world.timelines[u]
        fut_movies = [movies[i] for i in r.item[tl.future]]
        assert sc["gender_female"].label_of(world, u) == (user.gender == "F")
        assert sc["age_under_25"].label_of(world, u) == (user.age < 25)
        assert sc["age_45_plus"].label_of(world, u) == (user.age >= 45)
        assert sc["future_horror"].label_of(world, u) == any("Horror" in m.genres for m in fut_movies)
        share = sum("Comedy" in m.genres for m in fut_movies) / len(fut_movies)
        assert sc["future_comedy_share"].label_of(world, u) == (share >= 0.334)
        drop = r.rating[tl.future].mean() < r.rating[tl.history].mean() - 0.2
        assert sc["future_harsher"].label_of(world, u) == drop


def test_future_labels_ignore_history(world):
    """Changing a user's history window must not change a future label (they read the future only)."""
    s = next(x for x in load_scenarios() if x.name == "future_horror")
    u = world.users()[0]
    before = s.label_of(world, u)
    tl = world.timelines[u]
    saved = tl.history
    tl.history = tl.history[:world.cfg.min_history]
    try:
        assert s.label_of(world, u) == before
    finally:
        tl.history = saved
