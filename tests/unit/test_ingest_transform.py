"""Windowing, last-K and idempotence rules of services.ingest.transform (pure logic)."""
from __future__ import annotations

import numpy as np
import pytest

from services.common.features import FeatureSpec, SourceSpec, UserFeatures
from services.ingest.schema import Event
from services.ingest.transform import (
    VERSION_FLAG, IngestSpec, Position, already_applied, decode_version, encode_version, load_ingest_spec,
    plan_user_update,
)

DAY = 86400.0
DIM = 384


def spec(k_a: int = 3, k_b: int = 2, window_days: float = 10.0) -> IngestSpec:
    fs = FeatureSpec(sources=(SourceSpec("a", k_a), SourceSpec("b", k_b)), tabular_dim=2)
    return IngestSpec(features=fs, window_s={"a": window_days * DAY, "b": window_days * DAY})


def ev(i: int, source: str = "a", ts: float | None = None, user: str = "u") -> Event:
    return Event(event_id=f"e{i}", user_id=user, kind="event", ts=float(i * 100 if ts is None else ts),
                 source=source, text=f"text {i}")


def tab(i: int, vec: tuple[float, float], user: str = "u") -> Event:
    return Event(event_id=f"t{i}", user_id=user, kind="tabular", ts=float(i), vector=vec)


def vecs_for(texts) -> dict[str, np.ndarray]:
    return {t: np.full(DIM, hash(t) % 97 / 97.0, dtype=np.float16) for t in texts}


def apply(current, events, sp, partition=0):
    upd = plan_user_update(current, [(Position(partition, off), e) for off, e in events], sp)
    if upd is None or not upd.applied:
        return current, upd
    return upd.to_features(vecs_for(upd.texts_to_encode()), sp, updated_at=1.0), upd


def test_version_layout_round_trips_and_orders():
    for p, o in [(0, 0), (3, 12345), (2**21 - 1, 2**40 - 3)]:
        v = encode_version(Position(p, o))
        assert v >= VERSION_FLAG and decode_version(v) == Position(p, o)
        assert v < 2**63  # fits Feast's int64
    assert encode_version(Position(1, 5)) < encode_version(Position(1, 6))
    assert decode_version(0) is None and decode_version(7) is None  # not written by ingest
    with pytest.raises(ValueError):
        encode_version(Position(2**21, 0))


def test_already_applied_needs_same_partition():
    v = encode_version(Position(2, 10))
    assert already_applied(v, Position(2, 10)) and already_applied(v, Position(2, 3))
    assert not already_applied(v, Position(2, 11))
    assert not already_applied(v, Position(1, 3))  # re-partitioned topic: the mark says nothing
    assert not already_applied(0, Position(0, 0)) and not already_applied(5, Position(0, 0))


def test_keeps_last_k_newest_last_and_encodes_only_survivors():
    sp = spec(k_a=3)
    upd = plan_user_update(None, [(Position(0, i), ev(i)) for i in range(6)], sp)
    assert [e.text for e in upd.sources["a"]] == ["text 3", "text 4", "text 5"]
    assert upd.texts_to_encode() == ["text 3", "text 4", "text 5"]  # dropped events never hit the encoder
    assert upd.applied == 6 and upd.version == encode_version(Position(0, 5))


def test_window_is_event_time_relative_to_users_newest_event():
    sp = spec(k_a=10, k_b=10, window_days=10)
    events = [ev(0, "a", ts=0), ev(1, "b", ts=5 * DAY), ev(2, "a", ts=12 * DAY)]
    feats, _ = apply(None, list(enumerate(events)), sp)
    assert feats.sources["a"].texts == ["text 2"]  # ts=0 is 12 days behind the newest event
    assert feats.sources["b"].texts == ["text 1"]  # 7 days behind: kept, though b got nothing new
    assert list(feats.sources["b"].timestamps) == [5 * 86400]


def test_out_of_order_event_is_inserted_by_time_ties_keep_log_order():
    sp = spec(k_a=5)
    feats, _ = apply(None, [(0, ev(0, ts=100)), (1, ev(1, ts=300))], sp)
    feats, _ = apply(feats, [(2, ev(2, ts=200)), (3, ev(3, ts=300))], sp)
    assert feats.sources["a"].texts == ["text 0", "text 2", "text 1", "text 3"]
    assert list(feats.sources["a"].timestamps) == [100, 200, 300, 300]
    assert feats.sources["a"].vectors.shape == (4, DIM)


def test_replayed_events_are_skipped():
    sp = spec()
    feats, _ = apply(None, [(0, ev(0)), (1, ev(1))], sp)
    again, upd = apply(feats, [(0, ev(0)), (1, ev(1))], sp)
    assert upd.applied == 0 and upd.skipped == 2 and again is feats
    # half-applied batch: the first two landed before a crash, the replay adds only the third
    feats2, upd = apply(feats, [(0, ev(0)), (1, ev(1)), (2, ev(2))], sp)
    assert (upd.applied, upd.skipped) == (1, 2)
    assert feats2.sources["a"].texts == ["text 0", "text 1", "text 2"]
    assert feats2.feature_version > feats.feature_version


def test_existing_vectors_are_kept_not_reencoded():
    sp = spec()
    feats, _ = apply(None, [(0, ev(0))], sp)
    upd = plan_user_update(feats, [(Position(0, 1), ev(1))], sp)
    assert upd.texts_to_encode() == ["text 1"]
    out = upd.to_features(vecs_for(["text 1"]), sp, updated_at=2.0)
    np.testing.assert_array_equal(out.sources["a"].vectors[0], feats.sources["a"].vectors[0])


def test_tabular_last_in_log_wins_and_events_keep_it():
    sp = spec()
    feats, _ = apply(None, [(0, tab(5, (1.0, 2.0))), (1, tab(3, (3.0, 4.0)))], sp)
    np.testing.assert_array_equal(feats.tabular, [3.0, 4.0])
    feats, _ = apply(feats, [(2, ev(2))], sp)
    np.testing.assert_array_equal(feats.tabular, [3.0, 4.0])
    assert feats.sources["b"].texts == []
    feats.validate(sp.features)


def test_backfilled_user_without_ingest_version_gets_all_events():
    sp = spec()
    backfill = UserFeatures(user_id="u", feature_version=3)
    feats, upd = apply(backfill, [(0, ev(0))], sp)
    assert upd.applied == 1 and decode_version(feats.feature_version) == Position(0, 0)


def test_missing_vector_is_an_error():
    sp = spec()
    upd = plan_user_update(None, [(Position(0, 0), ev(0))], sp)
    with pytest.raises(KeyError, match="encode it first"):
        upd.to_features({}, sp, updated_at=0.0)


def test_load_ingest_spec_reads_windows(tmp_path):
    p = tmp_path / "sources.yaml"
    p.write_text("tabular_dim: 2\nwindow_days: 30\nsources:\n  - {name: a, k: 4}\n"
                 "  - {name: b, k: 2, window_days: 7}\n")
    sp = load_ingest_spec(p)
    assert sp.window_s == {"a": 30 * DAY, "b": 7 * DAY} and sp.k("a") == 4
    p.write_text("sources:\n  - {name: a, k: 4, window_days: 0}\n")
    with pytest.raises(ValueError, match="window_days"):
        load_ingest_spec(p)


def test_repo_sources_yaml_loads():
    sp = load_ingest_spec()
    assert sp.source_names and all(w > 0 for w in sp.window_s.values())
