"""Held-out question geometry: the same users' anchors / answers under every future question, compared by CKA."""
from __future__ import annotations

import pytest

np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.model


def test_question_geometry_compares_the_same_users_across_future_questions(ml100k_world):
    from training.config import DataConfig, load_config
    from training.data.collate import UserCollator
    from training.data.future_topics import FUTURE_TOPICS
    from training.heldout import HeldOutEval
    from training.model.embedder import QAnchorModel
    from training.pretrain import align_config

    world = ml100k_world
    vecs = np.random.default_rng(0).standard_normal((len(world.texts), 384)).astype(np.float16)
    ho = HeldOutEval(world, UserCollator(world, vecs), 8, DataConfig(top_k=1, future_aspects=True), geometry_users=10)
    assert len(ho.geometry) == len(FUTURE_TOPICS) + 1  # the summary question and every aspect
    users = [p.user for p in ho.geometry[0]]
    assert len(users) == 10 and all([p.user for p in t] == users for t in ho.geometry)
    assert all(len({p.topic for p in t}) == 1 for t in ho.geometry)
    torch.manual_seed(0)
    cfg = align_config(load_config("tiny"), world)
    got = ho._question_geometry(QAnchorModel(cfg).eval(), cfg, torch.autocast("cpu", enabled=False))
    assert set(got) == {"val_anchor_cka", "val_answer_cka"}
    assert all(0.0 <= v <= 1.0 + 1e-9 for v in got.values())
    no_aspects = HeldOutEval(world, UserCollator(world, vecs), 8, DataConfig(top_k=1))  # one future question
    assert no_aspects.geometry == [] and no_aspects._question_geometry(None, cfg, None) == {}
