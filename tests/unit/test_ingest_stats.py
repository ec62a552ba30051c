"""Ingest derives the dense user vector (`tabular`) from raw events exactly as training computes it.

Parity on real MovieLens-100K users: their exported events (training.data.export_events, no tabular record) go
through the ingest transform (parse_event -> plan_user_update -> to_features) and must give the row of
training.data.features.dense_user_features. A deterministic stand-in vector per text plays MiniLM on both sides.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("recbole", reason="MovieLens-100K ships in the recbole package (the model env)")

from services.common.features import StatsAggregate  # noqa: E402
from services.ingest.schema import parse_event  # noqa: E402
from services.ingest.transform import IngestSpec, Position, load_ingest_spec, plan_user_update  # noqa: E402
from training.data.export_events import export_records  # noqa: E402
from training.data.features import dense_user_features, fit_normalisation  # noqa: E402
from training.data.world import WorldConfig, build_world  # noqa: E402


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(dataset="ml-100k"))


@pytest.fixture(scope="module")
def vecs(world):
    """A deterministic vector per distinct text (ML-100K has equal titles for different items: same text, same
    vector, as MiniLM would give)."""
    rng = np.random.default_rng(3)
    by_text: dict[str, np.ndarray] = {}
    return np.stack([by_text.setdefault(t, rng.standard_normal(384).astype(np.float16)) for t in world.texts])


@pytest.fixture(scope="module")
def spec(world, vecs):
    import dataclasses

    return dataclasses.replace(load_ingest_spec(), normalisation=fit_normalisation(world, vecs))


def user_events(world, u):
    """(position, Event) of one user's exported history, in log order (offsets 0, 1, ...)."""
    spec = load_ingest_spec().features
    recs = export_records(world, [u])
    assert recs and all(r["kind"] == "event" for r in recs)  # raw events only
    return [(Position(0, i), parse_event(json.dumps(r).encode(), r["user_id"].encode(), spec.names, spec.tabular_dim))
            for i, r in enumerate(recs)]


def feed(batches, spec: IngestSpec, vectors, current=None):
    """Apply batches in order, each through the ingest transform; -> the last written row."""
    for batch in batches:
        upd = plan_user_update(current, batch, spec)
        if upd is None or not upd.applied:
            continue
        current = upd.to_features({t: vectors[t] for t in upd.texts_to_encode()}, spec, updated_at=1.0)
    return current


def text_vectors(world, vecs):
    return {t: vecs[i] for i, t in enumerate(world.texts)}


def test_ingest_derived_tabular_equals_training_row(world, vecs, spec):
    dense = dense_user_features(world, vecs)
    vectors = text_vectors(world, vecs)
    for u in world.users("test")[:2] + world.users("train")[:2]:
        events = user_events(world, u)
        row = feed([events[i:i + 25] for i in range(0, len(events), 25)], spec, vectors)
        assert row.tabular.shape == (spec.features.tabular_dim,)
        np.testing.assert_allclose(row.tabular, dense[u], rtol=1e-5, atol=1e-5)


def test_incremental_equals_batch_and_replay_is_a_no_op(world, vecs, spec):
    vectors = text_vectors(world, vecs)
    events = user_events(world, world.users("train")[5])
    whole = feed([events], spec, vectors)
    one_by_one = feed([[e] for e in events], spec, vectors)
    np.testing.assert_allclose(one_by_one.tabular, whole.tabular, rtol=1e-6, atol=1e-6)
    a, b = StatsAggregate.from_bytes(whole.stats), StatsAggregate.from_bytes(one_by_one.stats)
    st = spec.features.statistics
    np.testing.assert_allclose(a.raw_stats(st), b.raw_stats(st), rtol=1e-12)
    np.testing.assert_array_equal(a.v_sum, b.v_sum)  # float16 vectors sum exactly in float64, in any order
    # The same events again (a crash replay of everything), then a half-applied batch replayed: nothing moves.
    again = feed([events], spec, vectors, current=whole)
    assert again is whole
    half = feed([events[: len(events) // 2]], spec, vectors)
    replayed = feed([events[len(events) // 4:]], spec, vectors, current=half)
    np.testing.assert_array_equal(replayed.tabular, whole.tabular)
    assert replayed.stats == whole.stats


def test_without_constants_tabular_stays_empty_but_aggregates_are_kept(world, vecs):
    events = user_events(world, world.users("train")[0])
    row = feed([events], load_ingest_spec(), text_vectors(world, vecs))
    assert row.tabular.size == 0 and StatsAggregate.from_bytes(row.stats).n == len(events)


def test_tabular_record_overrides_until_the_next_behaviour_event(world, vecs, spec):
    vectors = text_vectors(world, vecs)
    events = user_events(world, world.users("train")[1])
    feats = spec.features
    u = events[0][1].user_id
    rec = {"schema_version": 1, "event_id": "tab-1", "user_id": u, "kind": "tabular", "ts": 1,
           "vector": [0.5] * feats.tabular_dim}
    tab = (Position(0, len(events)), parse_event(json.dumps(rec).encode(), u.encode(), feats.names, feats.tabular_dim))
    row = feed([events[:-1] + [tab]], spec, vectors)
    assert np.all(row.tabular == 0.5)
    last = (Position(0, len(events) + 1), events[-1][1])
    derived = feed([[last]], spec, vectors, current=row)
    np.testing.assert_allclose(derived.tabular, dense_user_features(world, vecs)[world.users("train")[1]],
                               rtol=1e-5, atol=1e-5)


def test_constants_are_loaded_checked_or_reported_missing(tmp_path, caplog, world, vecs):
    import logging

    from services.ingest.transform import load_normalisation

    sp = load_ingest_spec()
    with caplog.at_level(logging.WARNING):
        assert load_normalisation(tmp_path / "absent.json", sp) is None
    assert "INGEST_NORMALISATION" in caplog.text
    good = tmp_path / "normalisation.json"
    good.write_text(fit_normalisation(world, vecs).to_json())
    assert load_normalisation(good, sp).names == sp.features.statistics.names
    wrong = fit_normalisation(world, vecs)
    wrong.names = wrong.names[:-1]
    bad = tmp_path / "other.json"
    bad.write_text(wrong.to_json())
    with pytest.raises(ValueError, match="training.normalisation"):
        load_normalisation(bad, sp)


def test_ingest_keeps_the_prefix_events_training_reads(world, vecs, spec):
    """The feature store's events per source (a replay of the exported history through the ingest transform) are
    training.data.collate.user_record's: the same events in the same order, for users whose window drops old events
    and whose ratings share seconds at the newest-K cut (a replay in event-id order reordered those)."""
    pytest.importorskip("torch", reason="training.data.collate builds torch batches (the model env runs this)")
    from training.data.collate import user_record

    vectors = text_vectors(world, vecs)
    windowed = tied = 0
    for u in world.users("train")[:60]:
        events = user_events(world, u)
        row = feed([events[i:i + 40] for i in range(0, len(events), 40)], spec, vectors)
        rec = user_record(world, vecs, u)
        for s in spec.features.sources:
            mine = [e for _, e in events if e.source == s.name]
            np.testing.assert_array_equal(row.events(s.name).vectors, rec.event_vecs[s.name], err_msg=f"{u} {s.name}")
            windowed += len(mine) > len(rec.event_vecs[s.name]) < s.k  # fewer than K kept: the window cut
            cut = [e.ts for e in mine][-s.k - 1:-s.k + 1] if len(mine) > s.k else []
            tied += len(cut) == 2 and cut[0] == cut[1]  # the K-th newest shares its second with the one before
    assert windowed and tied, (windowed, tied)  # both cases were exercised
