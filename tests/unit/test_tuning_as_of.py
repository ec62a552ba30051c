"""Tuning labels as of a time: each user's features rebuilt from the event log's events before the label's time.

The log is written with its own schema and file names (test_event_world.write_log), no Kafka; a deterministic
vector per text plays Triton's text encoder. The expected row is ingest's own: the same events fed batch by batch
through the ingest transform, as the consumer applies them. The real path (Kafka -> ingest and eventlog -> a
snapshot from the log equal to the online store's) is tests/integration/test_own_events_to_served_model.py.
"""
from __future__ import annotations

import dataclasses
import json
import zlib
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("pyarrow")

from services.common.features import build_user_batch_arrays, load_feature_spec  # noqa: E402
from services.common.settings import repo_root  # noqa: E402
from services.ingest.schema import parse_event  # noqa: E402
from services.ingest.transform import Position, encode_version, load_ingest_spec, load_normalisation  # noqa: E402
from services.ingest.transform import plan_user_update  # noqa: E402
from services.tuning.dataset import DatasetError  # noqa: E402
from services.tuning.snapshot import features_before, main, make_snapshot_as_of  # noqa: E402
from test_event_world import DAY, T0, synthetic_events, write_log  # noqa: E402

CONSTANTS = repo_root() / "artifacts" / "default" / "normalisation.json"


class StandInEncoder:
    """text -> a fixed unit vector (float16, as Triton's text_encoder returns); counts what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def encode(self, texts):  # type: ignore[no-untyped-def]
        self.asked += list(texts)
        out = []
        for t in texts:
            v = np.random.default_rng(zlib.crc32(t.encode())).standard_normal(384)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, np.float16)


@pytest.fixture(scope="module")
def spec():
    base = load_ingest_spec()
    return dataclasses.replace(base, normalisation=load_normalisation(CONSTANTS, base))


@pytest.fixture()
def log(tmp_path):
    records = synthetic_events(n_users=4, n_events=30)
    write_log(tmp_path / "log", records)
    return tmp_path / "log", records


def ingest_row(records, user, before, spec, encoder, batch=7):
    """The row ingest writes after applying the user's events with ts < before, `batch` records at a time."""
    names = load_feature_spec().names
    mine = [(Position(0, off), r) for off, r in enumerate(records) if r["user_id"] == user and r["ts"] < before]
    events = [(p, parse_event(json.dumps(r).encode(), user.encode(), names, 400)) for p, r in mine]
    current = None
    for s in range(0, len(events), batch):
        upd = plan_user_update(current, events[s:s + batch], spec)
        texts = upd.texts_to_encode()
        current = upd.to_features(dict(zip(texts, encoder.encode(texts))), spec, updated_at=1.0)
    return current


def test_the_row_is_ingests_after_exactly_the_events_before_the_time(log, spec) -> None:
    root, records = log
    times = {"user-000": T0 + 10 * DAY + 0.5, "user-001": T0 + 400 * DAY, "user-002": T0 - 1,
             "user-003": T0 + 20 * DAY}
    enc = StandInEncoder()
    got = features_before(root, times, spec, enc)
    assert set(got) == set(times) and not got["user-002"].found  # no event before its time: as a cold start
    assert len(enc.asked) == len(set(enc.asked))  # each distinct text encoded once, for every user together
    for user in ("user-000", "user-001", "user-003"):
        want = ingest_row(records, user, times[user], spec, StandInEncoder())
        row = got[user]
        assert row.found and row.feature_version == want.feature_version  # the last applied event's log position
        for name in spec.source_names:
            a, b = row.events(name), want.events(name)
            assert a.texts == b.texts, (user, name)
            np.testing.assert_array_equal(a.timestamps, b.timestamps)
            np.testing.assert_array_equal(a.vectors, b.vectors)
            assert (a.timestamps < times[user]).all()
        np.testing.assert_allclose(row.tabular, want.tabular, rtol=1e-6, atol=1e-6)
        assert np.abs(row.tabular).sum() > 0  # derived with the served constants
    # user-000 sees 10 days of its 30: an event exactly at a time is not before it
    n_before = sum(r["user_id"] == "user-000" and r["ts"] < times["user-000"] for r in records)
    assert 0 < sum(len(got["user-000"].events(n)) for n in spec.source_names) <= n_before < 30
    at = {"user-000": float(min(r["ts"] for r in records if r["user_id"] == "user-000"))}
    assert not features_before(root, at, spec, StandInEncoder())["user-000"].found
    # an event of a source sources.yaml no longer declares is left out (ingest would dead-letter it), not a crash
    odd = {**records[0], "event_id": "odd-1", "source": "wishlist", "ts": T0 + 3}
    write_log(root, [odd], partition=0, first_offset=10_000)
    again = features_before(root, {"user-000": times["user-000"]}, spec, StandInEncoder())["user-000"]
    assert again.events("liked").texts == got["user-000"].events("liked").texts


def test_snapshot_per_row_times_default_time_and_errors(log, spec, tmp_path) -> None:
    root, records = log
    labels = tmp_path / "labels.csv"
    labels.write_text("user_id,label,as_of\nuser-000,1,2020-09-23T12:00:00Z\nuser-001,0,1700000000\n"
                      "user-002,1,2020-09-01\nnobody,0,1700000000\n")
    enc = StandInEncoder()
    snap = make_snapshot_as_of(labels, tmp_path / "s.npz", log_root=root, encoder=enc, normalisation=CONSTANTS)
    # user-002's time is before its first event and nobody has none: dropped and counted, as the store's unknowns
    assert snap.user_ids == ["user-000", "user-001"] and snap.labels.tolist() == [1, 0]
    assert snap.meta["n_missing"] == 2 and snap.meta["n_labelled"] == 4 and snap.meta["features_from"] == "event_log"
    times = {"user-000": 1600862400.0, "user-001": 1700000000.0}
    feats = features_before(root, times, spec, StandInEncoder())
    want = build_user_batch_arrays([feats[u] for u in snap.user_ids], spec.features)
    for name in spec.source_names:
        np.testing.assert_array_equal(snap.event_vecs[name].astype(np.float32), want.event_vecs[name])
        np.testing.assert_array_equal(snap.event_mask[name], want.event_mask[name])
    np.testing.assert_allclose(snap.tabular, want.tabular, rtol=1e-6)
    last = max(off for off, r in enumerate(records) if r["user_id"] == "user-001")
    assert snap.feature_version[1] == encode_version(Position(0, last))

    # a file without the column needs a time for every row; with one, that time
    plain = tmp_path / "plain.csv"
    plain.write_text("user_id,label\nuser-000,1\nuser-001,0\nuser-003,1\n")
    with pytest.raises(DatasetError, match="no as_of column; give one"):
        make_snapshot_as_of(plain, tmp_path / "p.npz", log_root=root, encoder=enc, normalisation=CONSTANTS)
    snap = make_snapshot_as_of(plain, tmp_path / "p.npz", log_root=root, encoder=enc, normalisation=CONSTANTS,
                               as_of=T0 + 5 * DAY)
    assert snap.user_ids == ["user-000", "user-001", "user-003"] and snap.meta["as_of_max"] == T0 + 5 * DAY
    # without constants the dense vector stays empty, as ingest leaves it
    snap = make_snapshot_as_of(plain, tmp_path / "p.npz", log_root=root, encoder=enc, normalisation=None,
                               as_of=T0 + 5 * DAY)
    assert not snap.tabular.any() and snap.meta["normalisation"] == ""
    with pytest.raises(DatasetError, match="there is none at .*TUNING_EVENT_LOG_DIR"):
        make_snapshot_as_of(labels, tmp_path / "x.npz", log_root=tmp_path / "nolog", encoder=enc,
                            normalisation=CONSTANTS)


def test_cli_refuses_a_bad_time_with_what_to_write(tmp_path, capsys) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("user_id,label\nu,1\n")
    assert main(["--labels", str(labels), "--out", str(tmp_path / "s.npz"), "--feast-config", str(tmp_path / "f"),
                 "--as-of", "soon"]) == 2
    assert "--as-of 'soon' is not a time: give unix seconds" in capsys.readouterr().err
    labels.write_text("user_id,label,as_of\nu,1,yesterday\n")
    assert main(["--labels", str(labels), "--out", str(tmp_path / "s.npz"), "--feast-config",
                 str(tmp_path / "f")]) == 2
    assert "labels.csv:2: as_of 'yesterday' is not a time" in capsys.readouterr().err


def test_the_worker_hands_the_snapshot_what_ingest_had(tmp_path, monkeypatch) -> None:
    from services.tuning import jobs
    from services.tuning.settings import TuningSettings

    seen = {}

    def run(cmd, **kw):  # type: ignore[no-untyped-def]
        seen["cmd"] = cmd
        return type("P", (), {"returncode": 0, "stdout": "", "stderr": ""})()

    monkeypatch.setattr(jobs.subprocess, "run", run)
    monkeypatch.delenv("QANCHOR_EVENT_LOG_DIR", raising=False)
    monkeypatch.setenv("QANCHOR_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("QANCHOR_PORT_BASE", "31000")
    settings = TuningSettings(features_python=Path("/bin/sh"))
    jobs.snapshot_csv(tmp_path / "l.csv", settings, tmp_path / "s.npz")
    cmd = seen["cmd"]
    flags = {cmd[i]: cmd[i + 1] for i in range(3, len(cmd) - 1, 2)}
    assert flags["--log-root"] == str(tmp_path / "eventlog") and flags["--triton-url"] == "127.0.0.1:31001"
    assert flags["--normalisation"] == str(tmp_path / "model_repository" / "qanchor" / "normalisation.json")
    monkeypatch.setenv("QANCHOR_EVENT_LOG_DIR", str(tmp_path / "shared-log"))  # where the eventlog service writes
    jobs.snapshot_csv(tmp_path / "l.csv", TuningSettings(features_python=Path("/bin/sh")), tmp_path / "s.npz")
    assert seen["cmd"][seen["cmd"].index("--log-root") + 1] == str(tmp_path / "shared-log")
    settings = TuningSettings(features_python=Path("/bin/sh"), event_log_dir=tmp_path / "L",
                              triton_url="triton:8001", normalisation=tmp_path / "n.json")
    jobs.snapshot_csv(tmp_path / "l.csv", settings, tmp_path / "s.npz")
    flags = {seen["cmd"][i]: seen["cmd"][i + 1] for i in range(3, len(seen["cmd"]) - 1, 2)}
    assert (flags["--log-root"], flags["--triton-url"], flags["--normalisation"]) == (
        str(tmp_path / "L"), "triton:8001", str(tmp_path / "n.json"))
