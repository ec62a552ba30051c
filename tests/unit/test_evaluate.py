"""AUC / KS equal brute force; the probe separates a planted signal from noise."""
from __future__ import annotations

import itertools

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("sklearn")
pytest.importorskip("torch")

from training.evaluate import auc, ks  # noqa: E402

pytestmark = pytest.mark.model


def brute_auc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)])


def brute_ks(y, s):
    best = 0.0
    for t in np.r_[np.unique(s), np.inf]:
        pred = s >= t
        best = max(best, pred[y == 1].mean() - pred[y == 0].mean())
    return best


@pytest.mark.parametrize("seed", range(20))
def test_auc_ks_equal_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    # coarse scores so ties are common
    s = np.round(rng.normal(size=n) + 0.7 * y, int(rng.integers(0, 2)))
    assert auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)
    assert ks(y, s) == pytest.approx(brute_ks(y, s), abs=1e-12)


def test_extremes():
    y = np.array([0, 0, 1, 1])
    assert auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0 and ks(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(y, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0 and ks(y, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert auc(y, np.ones(4)) == 0.5 and ks(y, np.ones(4)) == 0.0
    with pytest.raises(ValueError, match="both classes"):
        auc(np.ones(3), np.arange(3))


def test_probe_finds_planted_signal(ml100k_world):
    from training.data.scenarios import load_scenarios
    from training.evaluate import probe

    world = ml100k_world
    sc = next(s for s in load_scenarios() if s.name == "gender_female")
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((len(world.ml.users), 8)).astype(np.float32)
    signal = noise.copy()
    signal[:, 0] += 2.0 * np.array([u.gender == "F" for u in world.ml.users])
    good, bad = probe(signal, world, sc, seeds=(0, 1, 2)), probe(noise, world, sc, seeds=(0, 1, 2))
    assert good.auc_mean > 0.85 and good.ks_mean > 0.5
    assert abs(bad.auc_mean - 0.5) < 0.15
    assert len(good.aucs) == 3 and good.n_test > 50
