"""MovieLens world on ML-100K: event split per source, time split, user split, collate, export."""
from __future__ import annotations

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("torch")
pytest.importorskip("yaml")

from training.data.collate import UserCollator  # noqa: E402
from training.data.export_events import export_records  # noqa: E402
from training.data.world import SPLITS, WorldConfig, build_world, user_split  # noqa: E402

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def world(ml100k_world):
    return ml100k_world


def test_loads_ml100k_from_package(world):
    assert len(world.ml.users) == 943 and len(world.ml.ratings.user) == 100_000
    assert 0 < len(world.excluded) < 10  # users whose ratings all share a few seconds
    assert len(world.timelines) + len(world.excluded) == 943


def test_events_routed_to_sources_by_rating(world):
    names = world.sources.names
    r = world.ml.ratings
    for s in world.sources.sources:
        rows = np.nonzero(world.source_of_rating == names.index(s.name))[0]
        assert len(rows) > 0
        assert r.rating[rows].min() >= s.min_rating and r.rating[rows].max() <= s.max_rating
    assert (world.source_of_rating >= 0).all()  # liked/neutral/disliked cover 1..5
    ev = world.events(world.users("train")[0])[0]
    assert ev["text"] == f"Rated '{ev['title']}' [{', '.join(ev['genres'])}] {ev['rating']}/5"


def test_history_strictly_before_future(world):
    ts = world.ml.ratings.ts
    for u, tl in world.timelines.items():
        assert len(tl.history) >= world.cfg.min_history and len(tl.future) >= world.cfg.min_future
        assert ts[tl.history].max() < tl.cutoff_ts <= ts[tl.future].min()
        assert len(set(tl.history) & set(tl.future)) == 0
        assert (world.ml.ratings.user[np.concatenate([tl.history, tl.future])] == u).all()


def test_no_user_in_two_splits(world):
    by_split = {s: set(world.users(s)) for s in SPLITS}
    assert sum(len(v) for v in by_split.values()) == len(world.timelines)
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
    assert not (by_split["val"] & by_split["test"])
    assert len(by_split["train"]) > 0.7 * len(world.timelines) and len(by_split["test"]) > 0.05 * len(world.timelines)
    # deterministic and independent of which subset is loaded
    small = build_world(WorldConfig(dataset="ml-100k", max_users=50), ml=world.ml)
    for u, s in small.split.items():
        assert world.split[u] == s == user_split(world.ml.users[u].user_id, world.cfg.split_salt)


def test_tabular_standardised_on_train_users(world):
    TABULAR_FEATURES = world.sources.spec.statistics.names
    tab = world.tabular
    train = world.users("train")
    assert tab.shape == (943, len(TABULAR_FEATURES))
    assert np.allclose(tab[train].mean(0), 0, atol=1e-4)
    assert np.allclose(tab[train].std(0), 1, atol=1e-3)
    assert (tab[list(world.excluded)] == 0).all()


def test_collate_takes_newest_k_of_history(world):
    vecs = np.random.default_rng(0).standard_normal((len(world.texts), 384)).astype(np.float16)
    col = UserCollator(world, vecs)
    users = world.users("train")[:5]
    b = col(users)
    assert b.batch_size == 5 and b.tabular.shape == (5, world.sources.tabular_dim)
    for s in world.sources.sources:
        assert b.event_vecs[s.name].shape == (5, s.k, 384)
        for j, u in enumerate(users):
            rows = world.timelines[u].history
            mine = rows[world.source_of_rating[rows] == world.sources.names.index(s.name)][-s.k:]
            n = len(mine)
            assert b.event_mask[s.name][j].sum() == n and b.event_mask[s.name][j, :n].all()
            expect = vecs[world.text_of_rating[mine]].astype(np.float32)
            assert np.array_equal(b.event_vecs[s.name][j, :n].numpy(), expect)
            assert (b.event_vecs[s.name][j, n:] == 0).all()


def test_export_records_follow_event_contract(world):
    users = world.users()[:3]
    vecs = np.random.default_rng(0).standard_normal((len(world.texts), 384)).astype(np.float16)
    recs = export_records(world, users, vecs=vecs)
    events = [r for r in recs if r["kind"] == "event"]
    assert len(events) == sum(len(world.timelines[u].history) for u in users)
    assert [r["ts"] for r in recs] == sorted(r["ts"] for r in recs)
    assert len({r["event_id"] for r in recs}) == len(recs)
    for r in events:
        assert set(r) == {"schema_version", "event_id", "user_id", "kind", "source", "ts", "text", "attributes"}
        assert r["source"] in world.sources.names and isinstance(r["ts"], int)
        assert all(isinstance(v, (str, int, float, bool)) for v in r["attributes"].values())
    tab = [r for r in recs if r["kind"] == "tabular"]
    assert len(tab) == 3 and all(len(r["vector"]) == world.sources.tabular_dim for r in tab)
    assert not [r for r in export_records(world, users) if r["kind"] == "tabular"]  # no vectors, no dense record


def test_dense_user_vector_is_statistics_then_standardised_history_mean(world):
    from training.data.features import dense_user_features

    TABULAR_FEATURES = world.sources.spec.statistics.names
    vecs = np.random.default_rng(1).standard_normal((len(world.texts), 384)).astype(np.float16)
    dense = dense_user_features(world, vecs)
    assert dense.shape == (943, world.sources.tabular_dim) == (943, len(TABULAR_FEATURES) + 384)
    assert dense_user_features(world, vecs) is dense  # memoised per (world, vectors)
    np.testing.assert_array_equal(dense[:, :len(TABULAR_FEATURES)], world.tabular)
    train = world.users("train")
    hist = dense[train, len(TABULAR_FEATURES):]
    assert np.allclose(hist.mean(0), 0, atol=1e-4) and np.allclose(hist.std(0), 1, atol=1e-3)
    u = train[0]  # the mean of *every* history event, not only the newest K per source
    raw = np.stack([vecs[world.text_of_rating[world.timelines[v].history]].astype(np.float64).mean(0) for v in train])
    want = (raw[0] - raw.mean(0)) / raw.std(0)
    np.testing.assert_allclose(dense[u, len(TABULAR_FEATURES):], want, rtol=1e-3, atol=1e-3)
    assert (dense[list(world.excluded)] == 0).all()
    b = UserCollator(world, vecs).batch([u])
    np.testing.assert_allclose(b.tabular[0].numpy(), dense[u])
    # a checkpoint from before the dense vector (d_tab 16) reads the statistics only: the first columns
    narrow = UserCollator(world, vecs, d_tab=len(TABULAR_FEATURES)).batch([u])
    assert narrow.tabular.shape == (1, len(TABULAR_FEATURES))
    np.testing.assert_allclose(narrow.tabular[0].numpy(), dense[u, :len(TABULAR_FEATURES)])


def test_tie_shuffle_reorders_same_second_events_only(world):
    """data.tie_shuffle's draw: a user's same-second events in another order (which of them fill the last of K slots
    may move), times still oldest first; no rng is the timeline's order, and the draw is a function of the rng."""
    from training.data.collate import shuffle_ties, user_record

    vecs = np.zeros((len(world.texts), 384), np.float32)
    vecs[:, 0] = np.arange(len(world.texts))  # each event's text id, readable back
    ts = np.array([5, 5, 5, 7, 9, 9], np.float64)
    for seed in range(20):
        order = shuffle_ties(ts, np.random.default_rng(seed))
        assert sorted(order.tolist()) == list(range(6)) and (np.diff(ts[order]) >= 0).all()
    assert len({tuple(shuffle_ties(ts, np.random.default_rng(s))) for s in range(20)}) > 1
    r = world.ml.ratings
    u = max(world.users("train"), key=lambda v: len(world.timelines[v].history) - len(np.unique(
        r.ts[world.timelines[v].history])))  # the user with the most same-second events
    plain = user_record(world, vecs, u)
    np.testing.assert_array_equal(plain.event_vecs["liked"], user_record(world, vecs, u).event_vecs["liked"])
    moved = False
    for seed in range(5):
        a = user_record(world, vecs, u, np.random.default_rng(seed))
        np.testing.assert_array_equal(a.tabular, plain.tabular)  # whole-history statistics: order-free
        b = user_record(world, vecs, u, np.random.default_rng(seed))
        for name, e in a.event_vecs.items():
            np.testing.assert_array_equal(e, b.event_vecs[name])
            rows = e[:, 0].astype(int)  # text ids -> rating rows of this user, to read their seconds
            when = {int(world.text_of_rating[i]): r.ts[i] for i in world.timelines[u].history}
            assert (np.diff([when[t] for t in rows]) >= 0).all()
            moved |= not np.array_equal(e, plain.event_vecs[name])
    assert moved
