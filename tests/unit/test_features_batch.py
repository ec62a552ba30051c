"""UserBatch arrays from UserFeatures: padding, truncation to the newest K, missing sources, cold-start users."""
from __future__ import annotations

import numpy as np
import pytest

from services.common.features import (
    FeatureSpec, SourceEvents, SourceSpec, UserFeatures, build_user_batch_arrays,
)

SPEC = FeatureSpec(sources=(SourceSpec("liked", 4), SourceSpec("disliked", 2)), tabular_dim=3, encoder_dim=5)


def _events(n: int, start: float = 1.0) -> SourceEvents:
    # Row i is filled with start + i, so positions are recognisable after padding/truncation.
    vecs = (start + np.arange(n, dtype=np.float32))[:, None] * np.ones((1, 5), np.float32)
    return SourceEvents(texts=[f"e{i}" for i in range(n)], vectors=vecs.astype(np.float16),
                        timestamps=np.arange(n, dtype=np.int64))


def test_shapes_dtypes_and_left_aligned_padding() -> None:
    u = UserFeatures("a", sources={"liked": _events(2), "disliked": _events(2, start=10)},
                     tabular=np.array([1, 2, 3], np.float32))
    b = build_user_batch_arrays([u], SPEC)
    assert b.batch_size == 1
    assert b.event_vecs["liked"].shape == (1, 4, 5) and b.event_vecs["liked"].dtype == np.float32
    assert b.event_mask["liked"].dtype == np.bool_
    np.testing.assert_array_equal(b.event_mask["liked"][0], [True, True, False, False])
    np.testing.assert_array_equal(b.event_vecs["liked"][0, :, 0], [1, 2, 0, 0])
    np.testing.assert_array_equal(b.event_mask["disliked"][0], [True, True])
    np.testing.assert_array_equal(b.event_vecs["disliked"][0, :, 0], [10, 11])
    np.testing.assert_array_equal(b.tabular, [[1, 2, 3]])


def test_longer_than_k_keeps_the_newest_in_order() -> None:
    b = build_user_batch_arrays([UserFeatures("a", sources={"disliked": _events(5)})], SPEC)
    np.testing.assert_array_equal(b.event_vecs["disliked"][0, :, 0], [4, 5])  # newest two, oldest first
    assert b.event_mask["disliked"].all()


def test_missing_source_and_cold_start_user_are_all_padding() -> None:
    warm = UserFeatures("warm", sources={"liked": _events(4)}, tabular=np.array([1, 1, 1], np.float32))
    cold = UserFeatures.missing("cold")
    empty = UserFeatures("empty")  # found, but no events and no stats
    b = build_user_batch_arrays([warm, cold, empty], SPEC)
    assert b.batch_size == 3
    assert b.event_mask["liked"].sum(axis=1).tolist() == [4, 0, 0]
    assert not b.event_mask["disliked"].any()  # missing source: every row padding
    assert not b.event_vecs["disliked"].any()
    assert not b.event_vecs["liked"][1:].any()
    np.testing.assert_array_equal(b.tabular, [[1, 1, 1], [0, 0, 0], [0, 0, 0]])


def test_values_match_float16_store_exactly() -> None:
    rng = np.random.default_rng(0)
    v16 = rng.standard_normal((3, 5)).astype(np.float16)
    u = UserFeatures("a", sources={"liked": SourceEvents(texts=["x"] * 3, vectors=v16,
                                                         timestamps=np.zeros(3, np.int64))})
    b = build_user_batch_arrays([u], SPEC)
    np.testing.assert_array_equal(b.event_vecs["liked"][0, :3], v16.astype(np.float32))
    # f16 -> f32 -> f16 is lossless, which the gateway relies on when it sends FP16 to Triton.
    np.testing.assert_array_equal(b.event_vecs["liked"][0, :3].astype(np.float16), v16)


def test_empty_batch() -> None:
    b = build_user_batch_arrays([], SPEC)
    assert b.batch_size == 0 and b.event_vecs["liked"].shape == (0, 4, 5) and b.tabular.shape == (0, 3)


def test_wrong_widths_raise_with_the_user() -> None:
    bad_tab = UserFeatures("t", tabular=np.zeros(7, np.float32))
    with pytest.raises(ValueError, match="user 't'.*expected 3"):
        build_user_batch_arrays([bad_tab], SPEC)
    bad_vec = UserFeatures("v", sources={"liked": SourceEvents(texts=["x"], vectors=np.zeros((1, 9), np.float16),
                                                               timestamps=np.zeros(1, np.int64))})
    with pytest.raises(ValueError, match="user 'v', source 'liked'"):
        build_user_batch_arrays([bad_vec], SPEC)
