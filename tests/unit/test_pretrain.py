"""Pretraining loop on the tiny config: schedule, sampler, and resume == uninterrupted run."""
from __future__ import annotations

import json

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("torch")
pytest.importorskip("peft")

from training import pretrain  # noqa: E402
from training.data.sampler import PairSampler  # noqa: E402
from training.data.pairs import Pair  # noqa: E402

pytestmark = pytest.mark.model


def test_lr_schedule_warmup_then_cosine():
    lam = [pretrain.lr_lambda(s, 4, 20, "cosine") for s in range(20)]
    assert lam[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lam[3:], lam[4:])) and lam[-1] < 0.05
    assert pretrain.lr_lambda(10, 4, 20, "constant") == 1.0


def test_sampler_deterministic_and_disjoint_across_ranks():
    pairs = [Pair(u, "qa", f"t{k}", "q", f"a{u}-{k}", 1.0) for u in range(50) for k in range(3)]
    s = PairSampler(pairs, seed=3)
    a, b = s.batch(7, 8), s.batch(7, 8)
    assert [p.answer for p in a] == [p.answer for p in b]
    assert len({p.user for p in a}) == 8  # one pair per user: no user is its own negative
    r0, r1 = s.batch(7, 8, rank=0, world_size=2), s.batch(7, 8, rank=1, world_size=2)
    assert not ({p.user for p in r0} & {p.user for p in r1})


def test_question_groups_put_users_answering_the_same_question_in_one_batch():
    pairs = [Pair(u, "qa", f"t{k}", f"q{k}", f"a{u}-{k}", 1.0) for u in range(50) for k in range(u % 4, 4)]
    s = PairSampler(pairs, seed=3, group=4)
    a = s.batch(7, 8)
    assert [p.answer for p in a] == [p.answer for p in s.batch(7, 8)]  # still a pure function of the step
    assert len(a) == 8 and len({p.user for p in a}) == 8  # distinct users: no user is its own negative
    for g in range(0, 8, 4):  # each block of 4 answers one question
        assert len({p.topic for p in a[g:g + 4]}) == 1
    r0, r1 = s.batch(7, 8, rank=0, world_size=2), s.batch(7, 8, rank=1, world_size=2)
    assert not ({p.user for p in r0} & {p.user for p in r1}) and len(r0) == len(r1) == 8
    # a question with fewer users than a group is never drawn; running out of users ends the batch early
    few = [Pair(u, "qa", "rare" if u < 2 else "common", "q", f"a{u}", 1.0) for u in range(10)]
    got = PairSampler(few, seed=0, group=4).batch(0, 16)
    assert len(got) == 8 and {p.topic for p in got} == {"common"}
    with pytest.raises(ValueError, match="question_group"):
        PairSampler(few, seed=0, group=16)


def test_question_grids_put_each_user_under_several_questions():
    # users 0..39 answer t0..t3 and one private question each; t0..t3 are shared by all (like the future aspects)
    pairs = [Pair(u, "qa", f"t{k}", f"q{k}", f"a{u}-{k}", 1.0) for u in range(40) for k in range(4)]
    pairs += [Pair(u, "qa", f"own{u}", f"own{u}", f"a{u}-own", 1.0) for u in range(40)]
    s = PairSampler(pairs, seed=5, schedule=[[3, 4]], per_user=2)
    assert len({p.user for p in s.batch(2, 16)}) == 16  # before the grouped phase: one pair per user
    a = s.batch(3, 16)
    assert [p.answer for p in a] == [p.answer for p in s.batch(3, 16)]  # a pure function of the step
    assert len(a) == 16
    for g in range(0, 16, 8):  # a 4 x 2 grid: 4 users, each answering the grid's two questions
        grid = a[g:g + 8]
        users = [p.user for p in grid]
        assert users[:4] == users[4:] and len(set(users)) == 4
        assert len({p.topic for p in grid[:4]}) == 1 and len({p.topic for p in grid[4:]}) == 1
        assert grid[0].topic != grid[4].topic  # an anchor's own user answers another question in the batch
    assert not ({p.user for p in a[:8]} & {p.user for p in a[8:]})  # grids never share a user
    r0, r1 = s.batch(3, 8, rank=0, world_size=2), s.batch(3, 8, rank=1, world_size=2)
    assert not ({p.user for p in r0} & {p.user for p in r1}) and len(r0) == len(r1) == 8
    lonely = [Pair(u, "qa", f"own{u}", "q", f"a{u}", 1.0) for u in range(8)] + \
        [Pair(u, "qa", "t0", "q0", f"b{u}", 1.0) for u in range(8)]
    with pytest.raises(ValueError, match="questions_per_user"):  # no 4 users share two questions
        PairSampler(lonely, seed=0, group=4, per_user=2).batch(0, 8)
    with pytest.raises(ValueError, match="per_user"):
        PairSampler(pairs, seed=0, per_user=0)


def test_question_grid_must_divide_the_batch():
    from training.config import ConfigError, load_config

    cfg = load_config("tiny", ["optim.batch_size=16", "optim.question_group_schedule=[[0, 4]]",
                               "optim.questions_per_user=4"])
    assert cfg.optim.questions_per_user == 4
    with pytest.raises(ConfigError, match="questions_per_user"):
        load_config("tiny", ["optim.batch_size=16", "optim.question_group=4", "optim.questions_per_user=3"])
    with pytest.raises(ConfigError, match="questions_per_user"):
        load_config("tiny", ["optim.questions_per_user=0"])


def test_question_group_must_divide_the_batch():
    from training.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="question_group"):
        load_config("tiny", ["optim.batch_size=8", "optim.question_group=3"])


def _run(tmp, steps, resume=False, extra=()):
    args = ["--config", "tiny", "--dataset", "ml-100k", "--max-users", "60", "--steps", str(steps),
            "--batch-size", "4", "--out", str(tmp), "--save-every", "1", "--device", "cpu", "--top-k", "3",
            "--set", "optim.chunk_size=2", "--set", "optim.schedule=constant", "--set", "optim.warmup_steps=0", *extra]
    assert pretrain.main(args + (["--resume"] if resume else [])) == 0
    return [json.loads(x) for x in (tmp / "metrics.jsonl").read_text().splitlines()]


def _train_rows(rows):
    return [r for r in rows if "contrastive" in r]


def test_tie_shuffle_is_a_function_of_the_step(tmp_path, monkeypatch):
    """data.tie_shuffle draws each step's same-second order from (seed, step): a resumed run trains on the same
    prefixes as an uninterrupted one, and the draw changes what the model reads (ML-100K users rate in bursts)."""
    monkeypatch.setattr(pretrain, "cached_text_vectors", lambda texts, name, progress=True: np.random.default_rng(
        0).standard_normal((len(texts), 384)).astype(np.float16))
    ties = ["--set", "data.tie_shuffle=true", "--eval-every", "0"]
    full = _train_rows(_run(tmp_path / "full", 2, extra=ties))
    _run(tmp_path / "split", 1, extra=ties)
    resumed = _train_rows(_run(tmp_path / "split", 2, resume=True, extra=ties))
    for a, b in zip(full, resumed, strict=True):
        assert a["contrastive"] == pytest.approx(b["contrastive"], rel=1e-4)
    plain = _train_rows(_run(tmp_path / "plain", 2, extra=["--eval-every", "0"]))
    assert any(a["contrastive"] != pytest.approx(b["contrastive"], rel=1e-6) for a, b in zip(full, plain))


def test_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    # event vectors: random instead of MiniLM (the loop is under test, not the encoder)
    def fake_vectors(texts, name, progress=True):  # same vectors on every call, like the on-disk cache
        return np.random.default_rng(0).standard_normal((len(texts), 384)).astype(np.float16)

    monkeypatch.setattr(pretrain, "cached_text_vectors", fake_vectors)
    full_rows = _run(tmp_path / "full", 2)
    _run(tmp_path / "split", 1)
    with (tmp_path / "split" / "metrics.jsonl").open("a") as f:  # a killed run logged past its last checkpoint
        f.write(json.dumps({"step": 2, "contrastive": 9.0, "ntp": 9.0}) + "\n" + '{"step": 3, "contr')
    resumed_rows = _run(tmp_path / "split", 2, resume=True)
    # held-out evaluation before the first step and at the end; it must not disturb training (resume == full)
    evals = [r for r in full_rows if "val_acc1" in r]
    assert [r["step"] for r in evals] == [0, 2]
    assert all(0.0 <= r["val_acc1"] <= 1.0 and r["val_infonce"] > 0 and r["val_pairs"] >= 2 for r in evals)
    full, resumed = _train_rows(full_rows), _train_rows(resumed_rows)
    assert [r["step"] for r in full] == [1, 2] and [r["step"] for r in resumed] == [1, 2]
    for a, b in zip(full, resumed):
        assert a["contrastive"] == pytest.approx(b["contrastive"], rel=1e-4)
        assert a["ntp"] == pytest.approx(b["ntp"], rel=1e-4)
    assert (tmp_path / "full" / "checkpoint" / "weights.safetensors").is_file()
    assert (tmp_path / "full" / "curve.png").stat().st_size > 0
    model = pretrain.load_pretrained(tmp_path / "full" / "checkpoint")
    assert model.cfg.input.source_k == {"liked": 32, "neutral": 16, "disliked": 16}
    assert all("val_acc1_same_q" in r and 0.0 <= r["val_acc1_same_q"] <= 1.0 for r in evals)

    # second stage: the trained weights, other data settings (question groups), a fresh optimiser
    stage2 = tmp_path / "stage2"
    args = ["--config", "tiny", "--dataset", "ml-100k", "--max-users", "60", "--steps", "1", "--batch-size", "4",
            "--out", str(stage2), "--device", "cpu", "--top-k", "3", "--eval-every", "0",
            "--set", "optim.chunk_size=2", "--set", "optim.question_group=2",
            "--init-from", str(tmp_path / "full" / "checkpoint")]
    assert pretrain.main(args) == 0
    from training.artifacts import ArtifactError, checkpoint_id, init_from_checkpoint, load_checkpoint

    _, cfg2, extra = load_checkpoint(stage2 / "checkpoint")
    assert cfg2.optim.question_group == 2 and extra["step"] == 1
    assert extra["init_from_id"] == checkpoint_id(tmp_path / "full" / "checkpoint")
    other = pretrain.QAnchorModel(load_config_with_head(cfg2, 64))
    with pytest.raises(ArtifactError, match="head"):
        init_from_checkpoint(other, tmp_path / "full" / "checkpoint")


def load_config_with_head(cfg, out):
    from training.config import QAnchorConfig

    d = cfg.to_dict()
    d["head"]["out"] = out
    return QAnchorConfig.from_dict(d)


def test_question_groups_start_at_question_group_from():
    pairs = [Pair(u, "qa", f"t{k}", f"q{k}", f"a{u}-{k}", 1.0) for u in range(60) for k in range(4)]
    s = PairSampler(pairs, seed=1, group=4, group_from=10)
    before, after = s.batch(9, 8), s.batch(10, 8)
    assert len({p.topic for p in before}) > 2  # mixed: one pair per user, any question
    assert all(len({p.topic for p in after[g:g + 4]}) == 1 for g in (0, 4))  # grouped from step 10 on
    assert [p.answer for p in s.batch(9, 8)] == [p.answer for p in before]


def test_question_group_schedule_changes_the_group_size_at_its_steps():
    pairs = [Pair(u, "qa", f"t{k}", f"q{k}", f"a{u}-{k}", 1.0) for u in range(80) for k in range(3)]
    s = PairSampler(pairs, seed=2, schedule=[[5, 2], [10, 8]])
    assert [s.group_at(x) for x in (0, 4, 5, 9, 10, 99)] == [1, 1, 2, 2, 8, 8]
    plain = PairSampler(pairs, seed=2, group=2, group_from=5)  # the schedule's first phase is the two-field form
    assert [p.answer for p in s.batch(7, 8)] == [p.answer for p in plain.batch(7, 8)]
    late = s.batch(10, 16)
    assert len({p.user for p in late}) == 16 and all(len({p.topic for p in late[g:g + 8]}) == 1 for g in (0, 8))
    from training.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="question_group_schedule"):
        load_config("tiny", ["optim.batch_size=8", "optim.question_group_schedule=[[5, 3]]"])


def test_question_group_schedule_in_shares_of_the_run_moves_with_steps():
    from training.config import ConfigError, load_config

    # The default's preset: steps 150 and 900 of 1,800; the same schedule at 900 steps is the H200 run's.
    assert load_config("smollm2-cpu").optim.group_schedule() == [(150, 4), (900, 8)]
    assert load_config("smollm2-cpu", ["optim.steps=900"]).optim.group_schedule() == [(75, 4), (450, 8)]
    mixed = load_config("tiny", ["optim.steps=40", "optim.question_group_schedule=[[3, 2], [0.5, 4]]"]).optim
    assert mixed.group_schedule() == [(3, 2), (20, 4)]  # an int is a step, a float a share
    for bad in ("[[1.0, 4]]", "[[-1, 4]]", "[[0.5, 4.0]]", "[[true, 4]]"):
        with pytest.raises(ConfigError, match="a step .* or a share"):
            load_config("tiny", [f"optim.question_group_schedule={bad}"])
    with pytest.raises(ConfigError, match=r"steps \[30, 20\] of optim.steps=40"):  # a share and a step out of order
        load_config("tiny", ["optim.steps=40", "optim.question_group_schedule=[[0.75, 2], [20, 4]]"])


def test_keep_metrics_through_drops_rows_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 0, "val_acc1": 0.1}, {"step": 5, "loss": 1.0}, {"step": 10, "loss": 0.9},
            {"step": 10, "val_acc1": 0.2}, {"step": 15, "loss": 0.8}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 20, "lo')
    assert pretrain.keep_metrics_through(path, 10) == 2
    assert [json.loads(x) for x in path.read_text().splitlines()] == rows[:4]
    assert pretrain.keep_metrics_through(path, 10) == 0  # idempotent
    assert pretrain.keep_metrics_through(tmp_path / "absent.jsonl", 3) == 0
