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


def test_cv_choice_of_c_reads_train_and_val_users_only(ml100k_world):
    """C by 5-fold over train + val: the test users play no part (their embeddings can be anything); the probe then
    fits with that C. (Its stability under bf16-sized changes is measured, not asserted: probe_stability.py.)"""
    from training.data.scenarios import load_scenarios
    from training.evaluate import C_GRID, _labelled, cv_choose_c, probe

    world = ml100k_world
    sc = next(s for s in load_scenarios() if s.name == "gender_female")
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((len(world.ml.users), 8)).astype(np.float32)
    emb[:, 0] += 1.0 * np.array([u.gender == "F" for u in world.ml.users])
    x, (tr_u, tr_y), (va_u, va_y), (te_u, _) = _labelled(emb, world, sc)
    c = cv_choose_c(x, tr_u, tr_y, va_u, va_y)
    assert c in C_GRID
    scrambled = x.copy()
    scrambled[te_u] = rng.standard_normal(scrambled[te_u].shape)
    assert cv_choose_c(scrambled, tr_u, tr_y, va_u, va_y) == c  # test users untouched
    got = probe(emb, world, sc, seeds=(0,), subsample=1.0, c_choice="cv")
    assert got.c == c and got.auc_mean > 0.7
    with pytest.raises(ValueError, match="c_choice"):
        probe(emb, world, sc, c_choice="test")


def test_cv_choice_of_c_falls_back_to_the_val_choice_when_a_class_is_smaller_than_the_folds():
    from training.evaluate import choose_c, cv_choose_c

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 4))
    tr_u, va_u = np.arange(30), np.arange(30, 40)
    tr_y, va_y = (np.arange(30) < 2).astype(int), (np.arange(10) < 2).astype(int)  # 4 positives in all
    assert cv_choose_c(x, tr_u, tr_y, va_u, va_y) == choose_c(x, tr_u, tr_y, va_u, va_y)


def test_stratified_subsets_keep_balance_and_are_seeded():
    from training.evaluate import stratified_subsets

    y = np.array([1] * 30 + [0] * 70)
    subs = stratified_subsets(y, 20, repeats=5)
    assert len(subs) == 5
    for s in subs:
        assert len(s) == 20 and len(set(s.tolist())) == 20 and y[s].sum() == 6  # 30% of 20
    assert all((a == b).all() for a, b in zip(subs, stratified_subsets(y, 20, repeats=5)))  # same draws every row
    assert len({tuple(s) for s in subs}) == 5
    assert y[stratified_subsets(y, 5, repeats=1)[0]].sum() == 2  # never fewer than 2 of a class
    (whole,) = stratified_subsets(y, 100, repeats=7)
    assert (whole == np.arange(100)).all()  # a budget of everyone is one subset: everyone
    with pytest.raises(ValueError, match="too small"):
        stratified_subsets(y, 3, repeats=1)
    with pytest.raises(ValueError, match="2 users of each class"):
        stratified_subsets(np.array([1] + [0] * 9), 5, repeats=1)


def test_linear_cka_sees_geometry_not_position_or_basis():
    from training.evaluate import linear_cka

    rng = np.random.default_rng(0)
    a = rng.standard_normal((500, 16))
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    assert linear_cka(a, a) == pytest.approx(1.0)
    assert linear_cka(a, 3.0 * a @ q + 5.0) == pytest.approx(1.0)  # rotated, scaled, shifted: same user geometry
    assert linear_cka(a, rng.standard_normal((500, 16))) < 0.1  # unrelated geometry
    half = np.hstack([a[:, :8], rng.standard_normal((500, 8))])
    assert 0.3 < linear_cka(a, half) < 0.8  # half the directions kept


def test_probe_budget_uses_n_labels_and_finds_planted_signal(ml100k_world):
    from training.data.scenarios import load_scenarios
    from training.evaluate import probe_budget

    world = ml100k_world
    sc = next(s for s in load_scenarios() if s.name == "gender_female")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((len(world.ml.users), 8)).astype(np.float32)
    x[:, 0] += 2.0 * np.array([u.gender == "F" for u in world.ml.users])
    got = probe_budget(x, world, sc, n=40, repeats=3)
    assert len(got) == 3 and all(p.n_train == 40 for p in got)
    assert all(p.auc_mean > 0.8 for p in got)
    assert len({tuple(p.test_score[:5].round(6)) for p in got}) == 3  # three different draws, three probes
    # C by folds: at the full budget the same C as the full probe's; a bad choice name is refused
    from training.evaluate import probe

    full = probe_budget(x, world, sc, n=10**6, repeats=1, c_choice="cv")
    assert len(full) == 1 and full[0].c == probe(x, world, sc, c_choice="cv").c
    with pytest.raises(ValueError, match="c_choice"):
        probe_budget(x, world, sc, n=40, repeats=1, c_choice="test")


def test_row_bootstrap_weighs_scenarios_not_probes():
    import importlib

    from training.evaluate import ProbeResult

    boot_mod = importlib.import_module("benchmarks.quality.intervals")
    rng = np.random.default_rng(1)
    users = np.arange(60)

    def probe_of(name, shift):
        y = (np.arange(60) % 2).astype(int)
        s = y * shift + rng.standard_normal(60)
        return ProbeResult(name, 0.0, 0.0, 0.0, 0.0, 1.0, 10, 60, [], [], users, y, s)

    a, b = probe_of("a", 2.0), probe_of("b", 0.1)
    boot = boot_mod.RowBootstrap([{"row": "one each", "probes": [a, b]},
                                  {"row": "a twice", "probes": [a, a, b]}], draws=50)
    assert np.allclose(boot.avg["one each"], boot.avg["a twice"])  # two draws of one scenario count once



def test_row_bootstrap_gives_each_scenario_its_own_paired_interval():
    """A difference planted in one scenario stands out of test-user noise there; where both rows score the users
    identically, the paired interval is exactly 0 (the same resamples on both sides)."""
    import importlib

    from training.evaluate import ProbeResult

    boot_mod = importlib.import_module("benchmarks.quality.intervals")
    rng = np.random.default_rng(2)
    users, y = np.arange(200), (np.arange(200) % 2).astype(int)
    noise = rng.standard_normal(200)

    def probe(name, score):
        return ProbeResult(name, 0.0, 0.0, 0.0, 0.0, 1.0, 10, 200, [], [], users, y, score)

    same = probe("same", y * 0.5 + noise)
    boot = boot_mod.RowBootstrap([{"row": "better", "probes": [probe("planted", y * 3.0 + noise), same]},
                                  {"row": "worse", "probes": [probe("planted", y * 0.2 + noise), same]}], draws=200)
    d = boot.difference("better", "worse")
    assert set(d["by_scenario"]) == {"planted", "same"}
    assert d["by_scenario"]["planted"]["low"] > 0.2
    assert d["by_scenario"]["same"] == {"low": 0.0, "high": 0.0}
    assert d["low"] > 0  # the average carries the planted scenario, halved


def test_paired_claims_report_point_differences_and_a_verdict_per_claim():
    """A claim's difference is the rows' point difference (average, and per scenario over its draws), its interval
    the paired bootstrap's; a pair with a skipped row is left out; 'yes' needs the whole interval above 0."""
    import importlib

    from training.evaluate import ProbeResult

    iv = importlib.import_module("benchmarks.quality.intervals")
    rng = np.random.default_rng(3)
    users, y = np.arange(200), (np.arange(200) % 2).astype(int)
    noise = rng.standard_normal(200)

    def probe(name, auc_mean, shift):
        return ProbeResult(name, auc_mean, 0.0, 0.0, 0.0, 1.0, 10, 200, [], [], users, y, y * shift + noise)

    rows = [{"row": "better", "auc_avg": 0.80, "probes": [probe("a", 0.9, 3.0), probe("b", 0.7, 1.0),
                                                          probe("b", 0.7, 1.0)]},
            {"row": "worse", "auc_avg": 0.60, "probes": [probe("a", 0.6, 0.2), probe("b", 0.6, 0.5)]},
            {"row": "gone", "skipped": "needs a GPU"}]
    claims = iv.paired_claims(rows, [("better", "worse"), ("worse", "better"), ("better", "gone")],
                              iv.RowBootstrap(rows, draws=200))
    assert [(c["better"], c["worse"]) for c in claims] == [("better", "worse"), ("worse", "better")]
    up, down = claims
    assert up["diff"] == pytest.approx(0.20) and down["diff"] == pytest.approx(-0.20)
    assert up["by_scenario"]["a"]["diff"] == pytest.approx(0.3) and up["by_scenario"]["b"]["diff"] == pytest.approx(0.1)
    assert up["low"] > 0 and iv.claim_cells(up).endswith("| yes |")
    assert iv.claim_cells(down).endswith("| no |")
    assert iv.claim_cells({**up, "low": -0.01}).endswith("| point estimate only |")


def test_claims_carry_the_train_sample_noise_of_seeded_probe_draws():
    """With probes refitted on seeded 80% draws of the train users, a claim reports the paired difference's sd over
    the draws and the delete-d jackknife sd it implies for the full-train difference (x sqrt(0.8 / 0.2) = x2); rows
    probed once, or at a subsample of 1, get neither; the markdown shows both noises and their combined width."""
    import importlib

    from training.evaluate import ProbeResult

    iv = importlib.import_module("benchmarks.quality.intervals")
    users, y = np.arange(100), (np.arange(100) % 2).astype(int)
    noise = np.random.default_rng(4).standard_normal(100)

    def row(name, per_seed):  # per_seed: [scenarios][seeds] test AUCs
        probes = [ProbeResult(f"s{i}", float(np.mean(a)), 0.0, 0.0, 0.0, 1.0, 10, 100, list(a), [0.0] * len(a),
                              users, y, y * (1.0 + i) + noise) for i, a in enumerate(per_seed)]
        return {"row": name, "auc_avg": float(np.mean(per_seed)), "probes": probes,
                "auc_avg_by_seed": np.mean(per_seed, axis=0).tolist()}  # as run.py's run_row records it

    better = row("better", [[0.70, 0.72, 0.71], [0.60, 0.64, 0.62]])
    worse = row("worse", [[0.69, 0.69, 0.69], [0.60, 0.60, 0.60]])
    boot = iv.RowBootstrap([better, worse], draws=100)
    (c,) = iv.paired_claims([better, worse], [("better", "worse")], boot, subsample=0.8)
    draws = np.array([0.005, 0.035, 0.02])  # per seed: mean over the two scenarios of better - worse
    assert c["train_draws"] == 3 and c["train_draws_sd"] == pytest.approx(np.std(draws, ddof=1))
    assert c["train_sd"] == pytest.approx(2 * np.std(draws, ddof=1)) and c["sd"] >= 0
    text = "\n".join(iv.train_noise_lines([c]))
    assert "3 seeded draws" in text and f"{c['train_sd']:.4f}" in text
    assert f"{1.96 * np.hypot(c['train_sd'], c['sd']):.4f}" in text
    (whole,) = iv.paired_claims([better, worse], [("better", "worse")], boot)  # subsample 1: no draws to read
    assert "train_sd" not in whole and iv.train_noise_lines([whole]) == []
    once = row("once", [[0.7], [0.6]])
    (single,) = iv.paired_claims([once, worse], [("once", "worse")], iv.RowBootstrap([once, worse], draws=50),
                                 subsample=0.8)
    assert "train_sd" not in single


def test_seeded_intervals_resample_the_seed_average_and_keep_the_per_draw_test_noise():
    """In a seeded run each probe keeps every seed's test scores: the paired interval resamples their average, so it
    is centred on the seed-averaged difference (not on seed 0's), and "sd_within" is one draw's test-user sd
    averaged over the draws as variances, the test-user term the combined width uses."""
    import importlib

    from training.evaluate import ProbeResult, auc, bootstrap_counts, weighted_auc

    iv = importlib.import_module("benchmarks.quality.intervals")
    rng = np.random.default_rng(5)
    users, y = np.arange(300), (np.arange(300) % 2).astype(int)
    noise = rng.standard_normal((3, 300))
    strong = np.stack([y * shift + noise[i] for i, shift in enumerate((0.1, 2.0, 2.0))])  # seed 0 is the odd one
    flat = np.stack([y * 0.1 + noise[i] for i in range(3)])

    def row(name, scores):
        aucs = [auc(y, s) for s in scores]
        p = ProbeResult("s", float(np.mean(aucs)), 0.0, 0.0, 0.0, 1.0, 10, 300, aucs, [0.0] * 3, users, y,
                        scores[0], scores)
        return {"row": name, "auc_avg": float(np.mean(aucs)), "probes": [p], "auc_avg_by_seed": aucs}

    better, worse = row("better", strong), row("worse", flat)
    boot = iv.RowBootstrap([better, worse], draws=300)
    (c,) = iv.paired_claims([better, worse], [("better", "worse")], boot, subsample=0.8)
    assert c["low"] <= c["diff"] <= c["high"] and c["low"] > 0.2  # seed 0 alone would be centred near 0
    counts = bootstrap_counts(300, 300, 0)
    per_seed = np.stack([weighted_auc(y, strong[i], counts) - weighted_auc(y, flat[i], counts) for i in range(3)])
    assert c["sd"] == pytest.approx(np.nanstd(per_seed.mean(axis=0)))
    assert c["sd_within"] == pytest.approx(np.sqrt(np.mean(np.nanvar(per_seed, axis=1))))
    text = "\n".join(iv.train_noise_lines([c]))
    assert "80% of them each" in text and f"{1.96 * np.hypot(c['train_sd'], c['sd_within']):.4f}" in text


def test_a_seeded_probe_keeps_every_seeds_test_scores(ml100k_world):
    """probe() with several seeds keeps each seed's scores on the test users (row 0 is the seed-0 `test_score`);
    with one seed there is nothing more to keep."""
    from training.data.scenarios import load_scenarios
    from training.evaluate import probe

    sc = next(s for s in load_scenarios() if s.name == "gender_female")
    emb = np.random.default_rng(0).standard_normal((len(ml100k_world.ml.users), 8)).astype(np.float32)
    many = probe(emb, ml100k_world, sc, seeds=(0, 1, 2), subsample=0.8)
    assert many.test_scores.shape == (3, len(many.test_users))
    assert np.array_equal(many.test_scores[0], many.test_score)
    assert not np.array_equal(many.test_scores[1], many.test_score)  # another draw, another fit
    assert probe(emb, ml100k_world, sc, seeds=(0,), subsample=1.0).test_scores is None
