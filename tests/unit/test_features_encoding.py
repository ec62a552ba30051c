"""Vector byte encoding, the feature schema file, and push/read row conversion (pure logic, no Feast)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from services.common.features import (
    FeatureSpec, SourceEvents, SourceSpec, UserFeatures, decode_vectors, encode_vectors, from_feature_dict,
    load_feature_spec, to_push_columns,
)

SPEC = FeatureSpec(sources=(SourceSpec("liked", 4), SourceSpec("disliked", 2)), tabular_dim=3, encoder_dim=8)


def _user(uid: str = "u1", n_liked: int = 3, seed: int = 0) -> UserFeatures:
    rng = np.random.default_rng(seed)
    return UserFeatures(
        user_id=uid,
        sources={"liked": SourceEvents(texts=[f"t{i}" for i in range(n_liked)],
                                       vectors=rng.standard_normal((n_liked, 8)).astype(np.float16),
                                       timestamps=np.arange(n_liked, dtype=np.int64) + 1_700_000_000)},
        tabular=np.array([0.5, -1.0, 2.25], dtype=np.float32),
        feature_version=7,
        updated_at=1_700_000_123.456,
    )


def test_encode_is_little_endian_float16_row_major() -> None:
    vecs = np.array([[1.0, -2.0, 0.5], [65504.0, 0.0, -0.25]], dtype=np.float32)
    data = encode_vectors(vecs, dim=3)
    assert len(data) == 2 * 3 * 2
    # The contract is the byte layout itself: read it back with an explicit '<f2', independent of our decoder.
    np.testing.assert_array_equal(np.frombuffer(data, dtype="<f2").reshape(2, 3), vecs.astype(np.float16))
    assert data[:2] == b"\x00\x3c"  # 1.0 in IEEE half precision, low byte first


def test_decode_round_trip_and_big_endian_input() -> None:
    rng = np.random.default_rng(1)
    vecs = rng.standard_normal((5, 384)).astype(np.float16)
    out = decode_vectors(encode_vectors(vecs))
    assert out.dtype == np.dtype("<f2") and out.shape == (5, 384)
    np.testing.assert_array_equal(out, vecs)
    # A big-endian array is converted, not reinterpreted.
    np.testing.assert_array_equal(decode_vectors(encode_vectors(vecs.astype(">f2"))), vecs)


def test_decode_empty_and_bad_length() -> None:
    assert decode_vectors(b"").shape == (0, 384)
    assert decode_vectors(None, dim=8).shape == (0, 8)
    with pytest.raises(ValueError, match="encoder_dim"):
        decode_vectors(b"\x00" * 10, dim=8)


def test_encode_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"\[n, 384\]"):
        encode_vectors(np.zeros((2, 10)))
    with pytest.raises(ValueError):
        encode_vectors(np.zeros(384))


def test_repo_sources_yaml_is_the_movielens_default() -> None:
    spec = load_feature_spec()
    assert [(s.name, s.k) for s in spec.sources] == [("liked", 32), ("neutral", 16), ("disliked", 16)]
    assert spec.encoder_dim == 384 and spec.tabular_dim == 400  # 16 statistics + the 384-d history mean
    assert spec.feature_service == "user_features_v2"
    assert spec.feature_names[:4] == ["liked_texts", "liked_vectors", "liked_timestamps", "liked_count"]
    assert spec.feature_names[-3:] == ["tabular", "feature_version", "updated_at"]


def test_sources_yaml_errors_say_what_to_fix(tmp_path: Path) -> None:
    bad = tmp_path / "s.yaml"
    bad.write_text("sources:\n  - {name: Liked, k: 3}\n")
    with pytest.raises(ValueError, match="lowercase"):
        load_feature_spec(bad)
    bad.write_text("sources:\n  - {name: a, k: 3}\n  - {name: a, k: 2}\n")
    with pytest.raises(ValueError, match="distinct"):
        load_feature_spec(bad)
    bad.write_text("sources:\n  - {name: a, k: 0}\n")
    with pytest.raises(ValueError, match="positive"):
        load_feature_spec(bad)
    with pytest.raises(FileNotFoundError, match="QANCHOR_SOURCES_YAML"):
        load_feature_spec(tmp_path / "missing.yaml")


def test_push_columns_then_read_back_equals_input() -> None:
    users = [_user("u1"), _user("u2", n_liked=0, seed=2)]
    cols = to_push_columns(users, SPEC)
    assert cols["user_id"] == ["u1", "u2"]
    assert cols["liked_count"] == [3, 0] and cols["disliked_count"] == [0, 0]
    assert cols["updated_at"] == [1_700_000_123_456, 1_700_000_123_456]  # milliseconds in the store
    back = from_feature_dict(["u1", "u2"], cols, SPEC)
    for orig, got in zip(users, back):
        assert got.found and got.feature_version == 7
        assert got.updated_at == pytest.approx(orig.updated_at, abs=1e-3)
        np.testing.assert_array_equal(got.tabular, orig.tabular)
        for s in SPEC.sources:
            a, b = orig.events(s.name, 8), got.events(s.name, 8)
            assert a.texts == b.texts
            np.testing.assert_array_equal(a.vectors, b.vectors)
            np.testing.assert_array_equal(a.timestamps, b.timestamps)


def test_missing_user_and_missing_source_in_a_response() -> None:
    cols = to_push_columns([_user("u1")], SPEC)
    # Shape of an online response for [u1, ghost]: every feature None for the unknown user.
    response = {k: v + [None] for k, v in cols.items() if k != "user_id"}
    response["disliked_texts"] = [None, None]  # a source added after u1's last write
    response["disliked_vectors"] = [None, None]
    response["disliked_timestamps"] = [None, None]
    u1, ghost = from_feature_dict(["u1", "ghost"], response, SPEC)
    assert u1.found and len(u1.events("disliked", 8)) == 0 and u1.events("disliked", 8).vectors.shape == (0, 8)
    assert not ghost.found and ghost.feature_version == 0 and ghost.user_id == "ghost"


@pytest.mark.parametrize("mutate, match", [
    (lambda u: u.sources.update(other=SourceEvents()), "unknown sources"),
    (lambda u: setattr(u.sources["liked"], "timestamps", np.zeros(1, np.int64)), "timestamps"),
    (lambda u: setattr(u.sources["liked"], "vectors", np.zeros((3, 5), np.float16)), r"vectors \[3, 8\]"),
    (lambda u: setattr(u, "tabular", np.zeros(2, np.float32)), "tabular_dim=3"),
    (lambda u: setattr(u, "user_id", ""), "non-empty"),
])
def test_invalid_rows_are_rejected_before_writing(mutate, match) -> None:
    u = _user()
    mutate(u)
    with pytest.raises(ValueError, match=match):
        to_push_columns([u], SPEC)


def test_more_than_k_events_is_rejected() -> None:
    with pytest.raises(ValueError, match="keep the newest 4"):
        to_push_columns([_user(n_liked=5)], SPEC)


def test_features_module_does_not_import_feast() -> None:
    # The model env has no Feast: importing the pure layer must not pull it in.
    import subprocess

    code = "import sys, services.common.features; print('feast' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
