"""Labels CSV parsing, snapshot round trip and re-padding to the model's K (pure numpy; runs in the model env)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.tuning.dataset import DatasetError, TuningData, local_path, model_arrays, read_labels, read_labels_csv
from services.tuning.settings import TuningSettings


def test_labels_csv(tmp_path: Path) -> None:
    f = tmp_path / "l.csv"
    f.write_text("user_id,label,comment\nalice,1,x\nbob,0,y\nalice,1,dup ok\n u:c@x ,0,z\n")
    users, labels = read_labels_csv(f)
    assert users == ["alice", "bob", "u:c@x"] and labels.tolist() == [1, 0, 0]
    for body, match in [("id,label\na,1\n", "header must contain user_id,label"),
                        ("user_id,label\na,yes\n", r"l.csv:2: label 'yes' is not an integer"),
                        ("user_id,label\na,1\na,0\n", "labelled both 1 and 0"),
                        ("user_id,label\n", "has no rows")]:
        f.write_text(body)
        with pytest.raises(DatasetError, match=match):
            read_labels_csv(f)
    with pytest.raises(DatasetError, match="not found"):
        read_labels_csv(tmp_path / "missing.csv")


def test_labels_csv_as_of_column(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")  # the time parser lives with the event log's reader
    f = tmp_path / "l.csv"
    f.write_text("user_id,label,as_of\na,1,2026-06-01\nb,0,1780272000\nc,1,2026-06-01T02:00:00+02:00\n"
                 "a,1,2026-06-01T00:00:00Z\n")
    got = read_labels(f)
    assert got.user_ids == ["a", "b", "c"] and got.labels.tolist() == [1, 0, 1]
    assert got.as_of.tolist() == [1780272000.0] * 3  # a date, unix seconds, an offset, a repeated row: one time
    f.write_text("user_id,label\na,1\n")
    assert read_labels(f).as_of is None and read_labels_csv(f) == (["a"], [1])
    for body, match in [("user_id,label,as_of\na,1,\n", r"l.csv:2: empty as_of; give every row its time"),
                        ("user_id,label,as_of\na,1,2026-06-01\nb,0,next week\n",
                         r"l.csv:3: as_of 'next week' is not a time: give unix seconds"),
                        ("user_id,label,as_of\na,1,2026-06-01\na,1,2026-07-01\n", "labelled as of two times")]:
        f.write_text(body)
        with pytest.raises(DatasetError, match=match):
            read_labels(f)


def test_local_path() -> None:
    assert local_path("file:///data/a%20b.csv") == Path("/data/a b.csv")
    assert local_path("rel/x.npz") == Path("rel/x.npz")


def _data(b: int = 3) -> TuningData:
    vecs = np.arange(b * 5 * 4, dtype=np.float32).reshape(b, 5, 4).astype(np.float16)  # [B, K=5, d=4]
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=bool)[:b]
    return TuningData([f"u{i}" for i in range(b)], np.array([1, 0, 1][:b]), {"liked": vecs}, {"liked": mask},
                      np.ones((b, 2), np.float32), np.array([3, 4, 5][:b]), meta={"n_missing": 1})


def test_snapshot_round_trip(tmp_path: Path) -> None:
    d = _data()
    back = TuningData.load(d.save(tmp_path / "s.npz"))
    assert back.user_ids == d.user_ids and back.labels.tolist() == [1, 0, 1] and back.meta["n_missing"] == 1
    np.testing.assert_array_equal(back.event_vecs["liked"], d.event_vecs["liked"])
    np.testing.assert_array_equal(back.event_mask["liked"], d.event_mask["liked"])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a tuning snapshot"):
        TuningData.load(tmp_path / "bad.npz")


def test_model_arrays_keep_the_newest_k_and_fill_missing_sources() -> None:
    d = _data()
    vecs, mask, tab = model_arrays(d, {"liked": 2, "neutral": 3}, d_enc=4, d_tab=2)
    src = d.event_vecs["liked"].astype(np.float32)
    np.testing.assert_array_equal(vecs["liked"][0], src[0, 1:3])  # user 0 has 3 events: keep events 1, 2
    np.testing.assert_array_equal(vecs["liked"][1], src[1, 3:5])  # user 1 has 5: keep the newest two
    assert mask["liked"].tolist() == [[True, True], [True, True], [False, False]]
    assert not mask["neutral"].any() and vecs["neutral"].shape == (3, 3, 4) and tab.shape == (3, 2)
    with pytest.raises(DatasetError, match="tabular width 2 != the model's d_tab 8"):
        model_arrays(d, {"liked": 2}, d_enc=4, d_tab=8)


def test_settings_defaults_follow_the_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QANCHOR_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("QANCHOR_PORT_BASE", "25500")
    monkeypatch.setenv("TUNING_ARTIFACT_DIR", str(tmp_path / "art"))
    s = TuningSettings()
    assert s.resolved_broker_url() == "redis://127.0.0.1:25579/1"  # the local stack's Redis, db 1
    assert s.resolved_result_backend() == s.resolved_broker_url()
    assert s.resolved_database_url() == f"sqlite:///{tmp_path / 'registry' / 'registry.db'}"
    assert s.resolved_artifact_dir() == tmp_path / "art"
    assert s.resolved_model_repository() == tmp_path / "model_repository"
    assert s.visibility_timeout_s > s.max_job_s
