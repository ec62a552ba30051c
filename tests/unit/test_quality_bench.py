"""Quality benchmark plumbing: seeded user caps (CappedWorld) and the table's row registry."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import sys
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("sklearn")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.model

RUN = Path(__file__).resolve().parents[2] / "benchmarks" / "quality" / "run.py"


def _load():
    spec = importlib.util.spec_from_file_location("quality_run", RUN)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["quality_run"] = mod  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(mod)
    return mod


class FakeWorld:  # only what CappedWorld and the cache key touch: users(split), the dataset, pass-through attributes
    splits = {"train": list(range(0, 100)), "val": list(range(100, 130)), "test": list(range(130, 180))}
    tabular = "passthrough"
    cfg = dataclasses.make_dataclass("Cfg", [("dataset", str, "ml-1m")])()
    normalisation = None

    def users(self, split=None):
        return self.splits[split] if split else sorted(u for us in self.splits.values() for u in us)


@dataclasses.dataclass
class FakeConstants:  # a Normalisation as the cache key reads it
    text: str

    def to_json(self) -> str:
        return self.text


def test_capped_world_subsets_are_seeded_sorted_and_within_split():
    run = _load()
    a = run.CappedWorld(FakeWorld(), {"train": 20, "val": None, "test": 10})
    b = run.CappedWorld(FakeWorld(), {"train": 20, "val": None, "test": 10})
    assert a.users("train") == b.users("train") and a.users("test") == b.users("test")
    assert len(a.users("train")) == 20 and set(a.users("train")) <= set(FakeWorld.splits["train"])
    assert a.users("train") == sorted(a.users("train"))
    assert a.users("val") == FakeWorld.splits["val"]  # no cap: the whole split
    assert len(a.users("test")) == 10 and set(a.users("test")) <= set(FakeWorld.splits["test"])
    assert a.users() == sorted(a.users("train") + a.users("val") + a.users("test"))
    assert a.tabular == "passthrough"
    c = run.CappedWorld(FakeWorld(), {"train": 20, "val": None, "test": 10}, seed=1)
    assert c.users("train") != a.users("train")


def test_cap_larger_than_split_keeps_everyone():
    run = _load()
    w = run.CappedWorld(FakeWorld(), {"train": 1000, "val": 5, "test": 0})
    assert w.users("train") == FakeWorld.splits["train"] and w.users("test") == FakeWorld.splits["test"]


def test_model_rows_are_registered_and_skip_without_checkpoint():
    run = _load()
    for name in ("Q-Anchor static query", "Q-Anchor zero-shot", "Q-Anchor prompt-tuned",
                 "ablation: zero-shot, no pretraining"):
        assert name in run.ROWS
    ctx = run.Context(world=FakeWorld(), vecs=np.zeros((1, 384), np.float16), scenarios=[], checkpoint=None,
                      device="cpu", model_users=None)
    row = run.run_row("Q-Anchor zero-shot", ctx, (0,))
    assert "checkpoint" in row["skipped"]
    row = run.run_row("Q-Anchor prompt-tuned", ctx, (0,))
    assert "--tune-steps" in row["skipped"]


@pytest.mark.parametrize("arg, message", [("no-equals-sign", "LABEL=CHECKPOINT"),
                                          ("no NTP=/nonexistent/checkpoint", "not a checkpoint directory"),
                                          ("state=artifacts/default#last_layer", "one of ['projected', 'hidden']"),
                                          ("state=artifacts/default#hidden@x", "hidden@LAYER"),
                                          ("state=artifacts/default#projected@3", "needs head.embedding hidden")])
def test_bad_ablation_arguments_are_rejected_before_any_work(arg, message, capsys):
    run = _load()
    with pytest.raises(SystemExit) as exc:
        run.main(["--ablation", arg])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_ablation_rows_read_their_own_checkpoint():
    run = _load()
    ctx = run.Context(world=FakeWorld(), vecs=np.zeros((1, 384), np.float16), scenarios=[], checkpoint="main",
                      device="cpu", model_users=None, ablations={"no NTP": "runs/no_ntp/checkpoint"})
    assert run._checkpoint(ctx, "no NTP") == "runs/no_ntp/checkpoint"
    assert run._checkpoint(ctx, "trained") == run._checkpoint(ctx, "untrained") == "main"
    with pytest.raises(run.RowSkipped):
        run._checkpoint(ctx, "not registered")


def test_each_ablation_is_paired_against_this_checkpoints_zero_shot():
    run = _load()
    paper = [("Q-Anchor prompt-tuned", "Q-Anchor zero-shot")]
    pairs = run.claim_pairs(paper, {"cpu default": "artifacts/default", "no NTP": "runs/no_ntp/checkpoint"})
    assert pairs == paper + [("Q-Anchor zero-shot", "ablation: zero-shot, cpu default"),
                             ("Q-Anchor zero-shot", "ablation: zero-shot, no NTP")]
    assert run.claim_pairs(paper, {}) == paper


def test_label_budget_table_on_planted_rows(ml100k_world, monkeypatch):
    """Every row is probed on the same label draws; the tuned row only at the full budget; claims are paired."""
    from benchmarks.quality import label_budget as lb
    from benchmarks.quality import run as quality
    from training.data.scenarios import load_scenarios

    world = quality.CappedWorld(ml100k_world, {"train": 300, "val": 100, "test": 150})
    female = np.array([u.gender == "F" for u in ml100k_world.ml.users])
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((len(female), 6)).astype(np.float32)
    strong, weak = noise.copy(), noise.copy()
    strong[:, 0] += 2.0 * female
    weak[:, 0] += 0.3 * female
    scen = [s for s in load_scenarios() if s.name == "gender_female"]
    monkeypatch.setitem(quality.ROWS, lb.ZS, lambda ctx: {"gender_female": strong})
    monkeypatch.setitem(quality.ROWS, lb.STATIC, lambda ctx: weak)
    monkeypatch.setitem(quality.ROWS, lb.TUNED, lambda ctx: {"gender_female": strong})
    ctx = quality.Context(world, np.zeros((1, 384), np.float16), scen, None, "cpu", None)
    table = lb.budget_table(ctx, [lb.STATIC, lb.ZS, lb.TUNED], [20, 10_000], repeats=3, draws=200)
    few, full = table
    assert [r["row"] for r in few["rows"]] == [lb.STATIC, lb.ZS]  # tuned saw every label: full budget only
    assert [r["row"] for r in full["rows"]] == [lb.STATIC, lb.ZS, lb.TUNED]
    assert few["rows"][0]["n_labels"]["gender_female"] == 20
    n_labelled = len(scen[0].labels(world, world.users("train"))[0])
    assert full["rows"][0]["n_labels"]["gender_female"] == n_labelled
    zs_vs_static = next(c for c in few["claims"] if (c["better"], c["worse"]) == (lb.ZS, lb.STATIC))
    assert zs_vs_static["low"] > 0  # the planted signal wins with 20 labels, and the interval says so
    # the draws' spread: per draw the row's average, the same draws for both rows; the mean's noise is sd / sqrt(3)
    per_draw = np.subtract(few["rows"][1]["auc_avg_by_seed"], few["rows"][0]["auc_avg_by_seed"])
    assert len(per_draw) == 3 and np.mean(per_draw) == pytest.approx(zs_vs_static["diff"])
    assert zs_vs_static["train_draws"] == 3
    assert zs_vs_static["train_sd"] == pytest.approx(np.std(per_draw, ddof=1) / np.sqrt(3))
    full_claim = next(c for c in full["claims"] if (c["better"], c["worse"]) == (lb.ZS, lb.STATIC))
    assert "train_sd" not in full_claim  # every draw at the full budget is all train users: no spread to read
    md = lb.markdown(table, {"scenario_names": ["gender_female"], "n_train": len(world.users("train")),
                             "n_val": 100, "n_test": 150, "repeats": 3, "draws": 200})
    assert (f"| all ({len(world.users('train'))}) |" in md
            and "| 20 | Q-Anchor zero-shot > Q-Anchor static query |" in md)
    assert "spread between the 3 draws" in md and f"| {zs_vs_static['train_sd']:.4f} |" in md
    one = ev_probe(scen[0].name, 0.6)
    assert lb.draw_averages([one, one, ev_probe("other", 0.7)]) == []  # 2 draws of one scenario, 1 of the other


def ev_probe(scenario: str, auc: float):
    from training.evaluate import ProbeResult

    return ProbeResult(scenario, auc, 0.0, 0.0, 0.0, 1.0, 10, 10, [auc], [0.0])


def test_val_selected_row_keeps_the_tuned_prompt_only_where_the_val_probe_improves(ml100k_world):
    """Per scenario: the tuned embedding where its val probe beats the query's, else the zero-shot one; the choice
    and both val AUCs are logged, and the test users play no part in it."""
    from benchmarks.quality import run as quality
    from benchmarks.quality.intervals import CLAIMS
    from training.data.scenarios import load_scenarios

    world = quality.CappedWorld(ml100k_world, {"train": 300, "val": 100, "test": 150})
    female = np.array([u.gender == "F" for u in ml100k_world.ml.users], np.float32)
    noise = np.random.default_rng(0).standard_normal((len(female), 6)).astype(np.float32)
    strong, weak = noise.copy(), noise.copy()
    strong[:, 0] += 2.0 * female
    weak[:, 0] += 0.1 * female
    scen = [s for s in load_scenarios() if s.name == "gender_female"]
    ctx = quality.Context(world, np.zeros((1, 384), np.float16), scen, "ckpt", "cpu", None, tune_steps=10)
    ctx.model_cache["trained"] = {"zero_shot": {"gender_female": weak}, "tuned": {"gender_female": strong}}
    assert quality.ROWS[quality.TUNED_VAL_SELECTED](ctx)["gender_female"] is strong
    log = ctx.tune_log["gender_female"]
    assert log["kept_tuned"] is True and log["val_probe_auc"] > log["val_probe_auc_zero_shot"] + 0.2, log
    ctx = quality.Context(world, np.zeros((1, 384), np.float16), scen, "ckpt", "cpu", None, tune_steps=10)
    ctx.model_cache["trained"] = {"zero_shot": {"gender_female": strong}, "tuned": {"gender_female": weak}}
    assert quality.ROWS[quality.TUNED_VAL_SELECTED](ctx)["gender_female"] is strong
    assert ctx.tune_log["gender_female"]["kept_tuned"] is False
    assert (quality.TUNED_VAL_SELECTED, "Q-Anchor zero-shot") in CLAIMS  # its paired difference is reported


def test_the_tuning_settings_key_the_embedding_cache_of_tuned_runs_only(monkeypatch):
    """Tuned embeddings of another objective never load from a prototype run's cache file (nor the reverse), nor
    from a file written before tuning kept the query where it was not beaten (2026-12-04); a run without tuning
    shares its file whatever the tuning flags say."""
    import hashlib
    import json

    run = _load()
    monkeypatch.setattr("training.artifacts.checkpoint_id", lambda path: "ckpt-id")
    monkeypatch.setattr("training.precision.resolve_precision", lambda setting, device: torch.bfloat16)  # any CPU
    paths = {}
    for steps in (200, 0):
        for objective in ("prototype", "probe"):
            ctx = run.Context(world=FakeWorld(), vecs=np.zeros((1, 384), np.float16), scenarios=[],
                              checkpoint="main", device="cpu", model_users=None, tune_steps=steps,
                              tune_objective=objective, embed_cache="cache")
            paths[steps, objective] = run._disk_cache_path(ctx, "trained", [1, 2])
    assert paths[200, "prototype"] != paths[200, "probe"]
    assert paths[0, "prototype"] == paths[0, "probe"] != paths[200, "prototype"]
    old = json.dumps(["ckpt-id", "trained", [1, 2], 200, run.STATIC_QUERY, []])
    assert paths[200, "prototype"].name != f"trained-{hashlib.sha256(old.encode()).hexdigest()[:16]}.npz"
    for steps in (200, 0):  # deep prompts are other tuned embeddings; without tuning the depth is not read
        ctx = run.Context(world=FakeWorld(), vecs=np.zeros((1, 384), np.float16), scenarios=[], checkpoint="main",
                          device="cpu", model_users=None, tune_steps=steps, tune_objective="probe",
                          tune_depth="deep", embed_cache="cache")
        paths[steps, "deep"] = run._disk_cache_path(ctx, "trained", [1, 2])
    assert paths[200, "deep"] != paths[200, "probe"] and paths[0, "deep"] == paths[0, "probe"]
    for steps in (200, 0):  # verdict users change which prompts are kept; 0 (one set) keeps the older key
        ctx = run.Context(world=FakeWorld(), vecs=np.zeros((1, 384), np.float16), scenarios=[], checkpoint="main",
                          device="cpu", model_users=None, tune_steps=steps, tune_objective="probe",
                          tune_verdict=0.5, embed_cache="cache")
        paths[steps, "verdict"] = run._disk_cache_path(ctx, "trained", [1, 2])
    assert paths[200, "verdict"] != paths[200, "probe"] and paths[0, "verdict"] == paths[0, "probe"]


def test_the_hidden_read_out_has_its_own_cache_key_and_the_head_output_keeps_the_old_one(monkeypatch):
    """--embedding hidden (or an --ablation CHECKPOINT#hidden) never loads the head's cached embeddings; the head's
    output keeps the key its files were written under before the option existed."""
    import hashlib
    import json

    run = _load()
    monkeypatch.setattr("training.artifacts.checkpoint_id", lambda path: "ckpt-id")
    monkeypatch.setattr("training.precision.resolve_precision", lambda setting, device: torch.bfloat16)  # any CPU

    def path(**kw):
        ctx = run.Context(world=FakeWorld(), vecs=np.zeros((1, 384), np.float16), scenarios=[], checkpoint="main",
                          device="cpu", model_users=None, embed_cache="cache",
                          ablations={"state": "main", "head": "main"},
                          ablation_embedding={"state": "hidden", "head": "projected"}, **kw)
        return {key: run._disk_cache_path(ctx, key, [1, 2]) for key in ("trained", "state", "head")}

    old = json.dumps(["ckpt-id", "trained", [1, 2], 0, run.STATIC_QUERY, []])
    old_name = f"trained-{hashlib.sha256(old.encode()).hexdigest()[:16]}.npz"
    plain, hidden = path(), path(embedding="hidden")
    # the head's output shares one key across runs, and no file written before the inputs fix (full_world) loads
    assert plain["trained"].name == plain["head"].name == hidden["head"].name != old_name
    assert hidden["trained"] == plain["state"] == hidden["state"] != plain["trained"]
    assert len({path(embedding="hidden@24")["trained"], hidden["trained"], plain["trained"]}) == 3  # a layer: its own


def test_the_compute_dtype_keys_the_embedding_cache(monkeypatch):
    """An fp32 pass (a CPU without AMX, QANCHOR_PRECISION=fp32) never loads embeddings a bf16 pass wrote, nor the
    reverse; neither loads a file written before the model read whole-train-split moments (full_world)."""
    import hashlib
    import json

    run = _load()
    monkeypatch.setattr("training.artifacts.checkpoint_id", lambda path: "ckpt-id")
    ctx = run.Context(world=FakeWorld(), vecs=np.zeros((1, 384), np.float16), scenarios=[], checkpoint="main",
                      device="cpu", model_users=None, embed_cache="cache")
    old = json.dumps(["ckpt-id", "trained", [1, 2], 0, run.STATIC_QUERY, []])
    names = {}
    for dtype in (torch.bfloat16, torch.float32):
        monkeypatch.setattr("training.precision.resolve_precision", lambda setting, device, d=dtype: d)
        names[dtype] = run._disk_cache_path(ctx, "trained", [1, 2]).name
    assert names[torch.bfloat16] != f"trained-{hashlib.sha256(old.encode()).hexdigest()[:16]}.npz"
    assert names[torch.float32] != names[torch.bfloat16]


def test_a_capped_world_scores_fewer_users_but_the_model_reads_the_whole_worlds_inputs(ml100k_world):
    """The dense user vector is standardised with train-user moments: a capped run's model inputs must be the served
    ones (the whole train split's moments, as in normalisation.json), not its 20 train users'."""
    from benchmarks.quality import run as quality
    from training.data.collate import UserCollator
    from training.data.features import dense_user_features

    vecs = np.random.default_rng(0).standard_normal((len(ml100k_world.texts), 384)).astype(np.float16)
    capped = quality.CappedWorld(ml100k_world, {"train": 20, "val": 20, "test": 50})
    assert quality.full_world(capped) is ml100k_world and quality.full_world(ml100k_world) is ml100k_world
    users = capped.users("test")[:4]
    # what the harness read before (when no row had filled the whole world's cache first): the 20 train users'
    # moments, other inputs than the served model's
    before = dense_user_features(capped, vecs)[users]
    served = UserCollator(ml100k_world, vecs).batch(users).tabular
    harness = UserCollator(quality.full_world(capped), vecs).batch(users).tabular
    assert torch.equal(harness, served)
    assert not np.allclose(before, served.numpy(), atol=1e-3)


def test_a_world_read_with_a_checkpoints_constants_is_standardised_with_them(ml100k_world):
    """A dataset the model was not trained on is served with the checkpoint's constants (ingest reads
    normalisation.json), not its own users' moments: the harness's model inputs follow, and a memo of the other
    constants is never returned."""
    from training.data.collate import UserCollator
    from training.data.features import dense_user_features, fit_normalisation, stats_spec, user_aggregates
    from training.data.stats import Normalisation

    vecs = np.random.default_rng(1).standard_normal((len(ml100k_world.texts), 384)).astype(np.float16)
    own = fit_normalisation(ml100k_world, vecs)
    other = Normalisation(own.names, own.stats_mean + 1.0, own.stats_std * 2.0, own.text_mean - 0.5, own.text_std)
    world = dataclasses.replace(ml100k_world)  # a copy: the session's fixture is never mutated
    users = world.users("test")[:4]
    before = dense_user_features(world, vecs)[users].copy()
    world.normalisation = other
    after = dense_user_features(world, vecs)[users]
    aggs, spec = user_aggregates(world, vecs), stats_spec(world)
    np.testing.assert_allclose(after, np.stack([other.dense(aggs[u], spec) for u in users]), rtol=1e-6)
    assert not np.allclose(before, after, atol=1e-3)
    assert torch.equal(UserCollator(world, vecs).batch(users).tabular, torch.from_numpy(after))


@pytest.mark.parametrize("split, checkpoint, trained_on, message", [
    ([0.5, 0.1, 0.4], "ckpt", None, "does not record the dataset"),  # older checkpoint: may be its own
    ([0.5, 0.1, 0.3], "ckpt", "ml-1m", "sum to 1"),
    ([0.0, 0.5, 0.5], "ckpt", "ml-1m", "train and test above 0"),
    ([0.6, -0.1, 0.5], None, None, "three shares"),
])
def test_a_probe_split_is_refused_where_it_would_test_on_pretraining_users_or_is_not_a_split(split, checkpoint,
                                                                                             trained_on, message):
    run = _load()
    with pytest.raises(SystemExit, match=message):
        run.split_fracs(split, "ml-100k", checkpoint, trained_on)


def _replayed_log(world, users: list[int], root: Path, prefix: str) -> None:
    """`users`' history events as the event log holds them after a replay (training.data.export_events, the ids
    prefixed as served.py's --user-prefix does), each second's events in reverse order (the log's tie order is not
    the world's)."""
    from training.data.export_events import export_records

    records = [r for _, r in sorted(enumerate(export_records(world, users)),
                                    key=lambda ir: (ir[1]["ts"], ir[1]["user_id"], -ir[0]))]
    for r in records:
        r["user_id"] = prefix + r["user_id"]
    _event_log_helpers().write_log(root, records)


def test_a_user_is_known_by_their_earliest_events_under_any_id_and_any_order_within_a_second(ml100k_world, tmp_path):
    """training.data.identity: the same MovieLens user replayed into the event log under another id, the log's order
    of same-second events, or a longer history (another cut) keeps the fingerprint; other users never share one."""
    pytest.importorskip("pyarrow")
    from training.data.event_world import build_event_world
    from training.data.identity import EARLIEST, fingerprints, user_fingerprint
    from training.data.world import WorldConfig

    users = ml100k_world.users()[:40]
    _replayed_log(ml100k_world, users, tmp_path / "log", "ml100k-")
    log_world = build_event_world(tmp_path / "log", WorldConfig(dataset="offline", min_history=1, min_future=0),
                                  cutoff=np.inf)
    ml = fingerprints(ml100k_world, users)
    logged = fingerprints(log_world, log_world.users())
    assert {f"ml100k-{uid}": fp for uid, fp in ml.items()} == logged
    assert len(set(fingerprints(ml100k_world, ml100k_world.users()).values())) == len(ml100k_world.users())
    # a user's first seconds decide: only events after the second of the EARLIEST-th one are left out
    u = next(u for u in users if len(np.unique(ml100k_world.row_ts(ml100k_world.timelines[u].history))) > EARLIEST)
    full = ml100k_world.timelines[u]
    rows = full.history
    keep = ml100k_world.row_ts(rows) <= np.sort(ml100k_world.row_ts(rows))[EARLIEST - 1]
    short = dataclasses.replace(ml100k_world, timelines={u: dataclasses.replace(full, history=rows[keep])})
    assert user_fingerprint(short, u) == ml[ml100k_world.user_id(u)]
    fewer = dataclasses.replace(ml100k_world, timelines={u: dataclasses.replace(full, history=rows[keep][:-1])})
    assert user_fingerprint(fewer, u) != ml[ml100k_world.user_id(u)]


def test_the_probe_is_never_scored_on_users_the_checkpoint_was_pretrained_on_by_user_not_by_name(ml100k_world,
                                                                                                  tmp_path):
    """check_unseen compares users: the default split of the checkpoint's own dataset passes, another split of it is
    refused (drop --split), its users replayed into an event log are caught under their new ids, and another
    team's log (another "offline") is not mistaken for the checkpoint's own; same_users says which runs read the
    checkpoint's constants as another population's (a transfer)."""
    pytest.importorskip("pyarrow")
    from training.data.event_world import build_event_world
    from training.data.identity import fingerprints
    from training.data.world import WorldConfig, build_world
    from training.normalisation import checkpoint_train_users

    run = _load()
    ckpt = _tiny_checkpoint(ml100k_world, tmp_path)
    assert run.pretraining_users(str(ckpt)) is None and run.pretraining_users(None) is None  # records nothing
    _attach(ckpt, ml100k_world, {"dataset": "ml-100k"})  # an older checkpoint: its users rebuilt from the record
    seen = run.pretraining_users(str(ckpt))
    assert seen == fingerprints(ml100k_world, ml100k_world.users("train"))
    run.check_unseen(ml100k_world, {str(ckpt): seen}, None)
    assert run.same_users(ml100k_world, seen, "ml-100k")
    other_split = build_world(WorldConfig(dataset="ml-100k", split_fracs=(0.5, 0.1, 0.4)))
    with pytest.raises(SystemExit, match=r"test users are users .* was pretrained on \(e\.g\. \d+\).*drop --split"):
        run.check_unseen(other_split, {str(ckpt): seen}, [0.5, 0.1, 0.4])
    assert not run.same_users(other_split, seen, "ml-100k")
    # its train users replayed into a log (the log's own salted split puts some of them among its test users)
    _replayed_log(ml100k_world, ml100k_world.users("train")[:200], tmp_path / "log", "ml100k-")
    replay = build_event_world(tmp_path / "log", WorldConfig(dataset="offline", min_history=1, min_future=0),
                               cutoff=np.inf)
    with pytest.raises(SystemExit, match=r"e\.g\. ml100k-\d+, pretrained on as \d+\).*under other ids"):
        run.check_unseen(replay, {str(ckpt): seen}, None)
    # a checkpoint pretrained on that log: another team's log is other users (by name both are "offline")
    logged = _tiny_checkpoint(replay, tmp_path / "logged")
    _attach(logged, replay, {"dataset": "offline"}, fingerprints(replay, replay.users("train")))
    assert checkpoint_train_users(logged) == fingerprints(replay, replay.users("train"))
    helpers = _event_log_helpers()
    helpers.write_log(tmp_path / "team", helpers.synthetic_events(n_users=30, n_events=12))
    team = build_event_world(tmp_path / "team", WorldConfig(dataset="offline", min_history=1, min_future=0),
                             cutoff=np.inf)
    other = {str(logged): run.pretraining_users(str(logged))}
    run.check_unseen(team, other, [0.5, 0.1, 0.4])
    assert not run.same_users(team, other[str(logged)], "offline") and run.same_users(replay, other[str(logged)], "x")
    assert run.seen_count(team, other[str(logged)]) == 0
    assert run.seen_count(replay, other[str(logged)]) == len(replay.users("train"))
    # a run on a log that holds some of the checkpoint's users besides new ones says so (not "every user is new")
    meta = run.transfer_of("offline", False, "offline", (0.8, 0.1, 0.1), "checkpoint", seen_here=7)
    header = run.markdown([], [], {"dataset": "offline", "n_train": 1, "n_test": 1, "transfer": meta})
    assert "pretrained on offline, 7 of this run's offline users were among its pretraining users, none of" in header
    assert run.transfer_of("ml-1m", False, "ml-100k", (0.8, 0.1, 0.1), "checkpoint", seen_here=0) == {
        "checkpoint_dataset": "ml-1m", "split": "0.8 / 0.1 / 0.1", "constants": "checkpoint"}
    with pytest.raises(SystemExit, match="drop --split"):
        run.check_unseen(build_event_world(tmp_path / "log", WorldConfig(dataset="offline", min_history=1,
                                                                         min_future=0, split_fracs=(0.3, 0.1, 0.6)),
                                           cutoff=np.inf), other, [0.3, 0.1, 0.6])
    # a log checkpoint from before checkpoints recorded their users: --split on a log is refused, as before
    older = _tiny_checkpoint(replay, tmp_path / "older")
    _attach(older, replay, {"dataset": "offline"})
    assert run.pretraining_users(str(older)) is None
    run.check_unseen(team, {str(older): None}, None)
    with pytest.raises(SystemExit, match="before checkpoints recorded their users"):
        run.check_unseen(team, {str(older): None}, [0.5, 0.1, 0.4])
    # the users file is verified like the constants
    (logged / "train_users.json").write_text("{}")
    with pytest.raises(RuntimeError, match="differs from the sha256"):
        checkpoint_train_users(logged)


def _attach(ckpt: Path, world, provenance: dict, users: dict | None = None) -> None:
    """Record constants (of random event vectors: their values are not under test) and a provenance."""
    from training.data.features import fit_normalisation
    from training.normalisation import attach_normalisation

    vecs = np.random.default_rng(2).standard_normal((len(world.texts), 384)).astype(np.float16)
    attach_normalisation(ckpt, fit_normalisation(world, vecs), provenance, users)


def test_a_probe_split_of_a_dataset_the_checkpoint_never_saw_is_kept_and_keys_the_cache(monkeypatch):
    """Baselines (no checkpoint) or another dataset's checkpoint: the split is the user's; the default otherwise.
    Another dataset's embeddings, or ones read with a checkpoint's constants, never share a cache file with ML-1M's
    (the users are indices into each dataset's own list); ML-1M keeps its key."""
    import hashlib

    from training.data.world import WorldConfig

    run = _load()
    assert run.split_fracs([0.5, 0.1, 0.4], "ml-100k", "ckpt", "ml-1m") == (0.5, 0.1, 0.4)
    assert run.split_fracs([0.5, 0.1, 0.4], "ml-1m", None, None) == (0.5, 0.1, 0.4)  # baselines only
    assert run.split_fracs(None, "ml-1m", "ckpt", "ml-1m") == WorldConfig.split_fracs
    monkeypatch.setattr("training.artifacts.checkpoint_id", lambda path: "ckpt-id")
    monkeypatch.setattr("training.precision.resolve_precision", lambda setting, device: torch.float32)

    def name(world):
        ctx = run.Context(world=world, vecs=np.zeros((1, 384), np.float16), scenarios=[], checkpoint="main",
                          device="cpu", model_users=None, embed_cache="cache")
        return run._disk_cache_path(ctx, "trained", [1, 2]).name

    ml1m = FakeWorld()
    ml100k = FakeWorld()
    ml100k.cfg = dataclasses.replace(FakeWorld.cfg, dataset="ml-100k")
    served = FakeWorld()
    served.cfg, served.normalisation = ml100k.cfg, FakeConstants("constants")
    assert len({name(ml1m), name(ml100k), name(served)}) == 3
    kept = json.dumps(["ckpt-id", "trained", [1, 2], 0, run.STATIC_QUERY, [], "float32", *run.INPUT_TAGS])
    assert name(ml1m) == f"trained-{hashlib.sha256(kept.encode()).hexdigest()[:16]}.npz"  # files written before


def test_the_cache_key_holds_the_constants_the_model_reads(monkeypatch):
    """A checkpoint's id does not cover its normalisation.json: embeddings read with other constants (rewritten ones,
    or ones refitted on other train users) never share a file; a transfer run keys its refit by those users."""
    run = _load()
    monkeypatch.setattr("training.artifacts.checkpoint_id", lambda path: "ckpt-id")
    monkeypatch.setattr("training.precision.resolve_precision", lambda setting, device: torch.float32)
    world = FakeWorld()
    world.cfg = dataclasses.replace(FakeWorld.cfg, dataset="ml-100k")
    transfer = {"checkpoint_dataset": "ml-1m", "split": "0.5 / 0.1 / 0.4", "constants": "checkpoint"}

    def name(normalisation, key="trained", train=None, constants=None):
        w = FakeWorld()
        w.cfg, w.normalisation = world.cfg, normalisation
        if train is not None:
            w.splits = {**FakeWorld.splits, "train": train}
        ctx = run.Context(world=w, vecs=np.zeros((1, 384), np.float16), scenarios=[], checkpoint="main",
                          device="cpu", model_users=None, embed_cache="cache", transfer=transfer,
                          constants=constants or {})
        return run._disk_cache_path(ctx, key, [1, 2]).name

    shipped, rewritten = FakeConstants("shipped"), FakeConstants("rewritten")
    assert name(shipped) == name(FakeConstants("shipped"))  # the constants' content, not the object
    assert name(shipped) != name(rewritten)
    refit = name(shipped, run.REFIT, constants={run.REFIT: None})
    assert refit == name(None) and refit != name(shipped)  # --compare-constants' rows = a --transfer-constants run's
    assert name(None, train=list(range(0, 90))) != name(None)  # other train users, other refitted constants


def test_each_model_key_reads_the_world_with_its_own_constants(ml100k_world):
    """--compare-constants' rows read a copy of the world standardised with refitted constants; the main rows (and
    the shared world) keep the checkpoint's, and each copy is made once."""
    from training.data.features import dense_user_features, fit_normalisation
    from training.data.stats import Normalisation

    run = _load()
    vecs = np.random.default_rng(3).standard_normal((len(ml100k_world.texts), 384)).astype(np.float16)
    own = fit_normalisation(ml100k_world, vecs)
    shipped = Normalisation(own.names, own.stats_mean + 1.0, own.stats_std * 2.0, own.text_mean - 0.5, own.text_std)
    world = dataclasses.replace(ml100k_world, normalisation=shipped)  # the session's fixture is never mutated
    ctx = run.Context(world=run.CappedWorld(world, {"train": 20, "val": 20, "test": 50}), vecs=vecs, scenarios=[],
                      checkpoint="main", device="cpu", model_users=None, constants={run.REFIT: None})
    assert run.inputs_world(ctx) is world and run.inputs_world(ctx, "an ablation") is world
    refit = run.inputs_world(ctx, run.REFIT)
    assert refit is run.inputs_world(ctx, run.REFIT) and refit.normalisation is None
    assert world.normalisation is shipped and refit.ml is world.ml
    users = world.users("test")[:4]
    read = dense_user_features(world, vecs)[users].copy()
    np.testing.assert_allclose(dense_user_features(refit, vecs)[users],
                               dense_user_features(dataclasses.replace(ml100k_world), vecs)[users], rtol=1e-6)
    assert not np.allclose(dense_user_features(refit, vecs)[users], read, atol=1e-3)
    np.testing.assert_array_equal(dense_user_features(world, vecs)[users], read)  # its memo untouched


def test_other_constants_are_refused_where_the_checkpoint_knows_the_dataset(capsys):
    """--transfer-constants dataset on the checkpoint's own dataset (or with no checkpoint) was a silent no-op;
    --compare-constants there has no served constants to compare with: both stop and say so."""
    run = _load()
    with pytest.raises(SystemExit, match="drop the option"):
        run.transfer_of("ml-1m", True, "ml-1m", (0.8, 0.1, 0.1), "dataset")
    with pytest.raises(SystemExit, match="drop the option"):
        run.transfer_of(None, True, "ml-100k", (0.5, 0.1, 0.4), "dataset")
    with pytest.raises(SystemExit) as exc:
        run.main(["--dataset", "ml-100k", "--compare-constants", "--out", "unused"])
    assert exc.value.code == 2 and "--compare-constants: needs a checkpoint" in capsys.readouterr().err


def _tiny_checkpoint(world, tmp_path: Path) -> Path:
    """A seeded tiny model reading the world's events per source (the harness reads users through the world's
    collator), saved as a checkpoint."""
    from training.artifacts import save_checkpoint
    from training.config import load_config
    from training.model.embedder import QAnchorModel

    k = {src.name: src.k for src in world.sources.sources}
    cfg = load_config("tiny", ["input.sources=[" + ", ".join(f"{{name: {n}, k: {v}}}" for n, v in k.items()) + "]"])
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "ckpt", QAnchorModel(cfg).eval(), cfg)


def test_a_transfer_run_reads_the_checkpoints_dataset_and_constants_and_says_so(ml100k_world, tmp_path):
    """The dataset a checkpoint was pretrained on comes from its manifest; its constants load for a world of another
    dataset (or the run stops saying how to write them), and the table's header says what the model read."""
    from training.data.features import fit_normalisation
    from training.normalisation import attach_normalisation

    run = _load()
    ckpt = _tiny_checkpoint(ml100k_world, tmp_path)
    assert run.checkpoint_dataset(str(ckpt)) is None and run.checkpoint_dataset(None) is None
    with pytest.raises(SystemExit, match="python -m training.normalisation --checkpoint"):
        run.transfer_normalisation(str(ckpt), ml100k_world)
    vecs = np.random.default_rng(2).standard_normal((len(ml100k_world.texts), 384)).astype(np.float16)
    norm = fit_normalisation(ml100k_world, vecs)
    attach_normalisation(ckpt, norm, {"dataset": "ml-1m"})
    assert run.checkpoint_dataset(str(ckpt)) == "ml-1m"
    loaded = run.transfer_normalisation(str(ckpt), ml100k_world)
    np.testing.assert_allclose(loaded.text_mean, norm.text_mean)
    assert loaded.names == norm.names
    assert run.transfer_of("ml-1m", True, "ml-1m", (0.8, 0.1, 0.1), "checkpoint") is None  # its own users
    meta = run.transfer_of(run.checkpoint_dataset(str(ckpt)), False, "ml-100k", (0.5, 0.1, 0.4), "dataset")
    assert meta == {"checkpoint_dataset": "ml-1m", "split": "0.5 / 0.1 / 0.4", "constants": "dataset"}
    header = run.markdown([], [], {"dataset": "ml-100k", "n_train": 1, "n_test": 1, "transfer": meta}).splitlines()[0]
    assert "pretrained on ml-1m" in header and "refitted on ml-100k's train users" in header
    compared = {**meta, "constants": "checkpoint", "compare": True}
    header = run.markdown([], [], {"dataset": "ml-100k", "n_train": 1, "n_test": 1, "transfer": compared})
    assert "the checkpoint's constants, as ingest serves it; the rows marked \"refitted constants\"" in header


def test_without_tuning_the_harness_streams_prefixes_and_embeds_what_a_kept_cache_gives(ml100k_world, tmp_path):
    """model_embeddings with no tuning encodes, embeds and drops 16 users at a time (the memory of one batch); its
    embeddings equal those read from one kept cache (encode_prefixes: what tuning runs and the layer scan use)."""
    from benchmarks.quality import run as quality
    from training.data.scenarios import load_scenarios

    ckpt = _tiny_checkpoint(ml100k_world, tmp_path)
    vecs = np.random.default_rng(0).standard_normal((len(ml100k_world.texts), 384)).astype(np.float16)
    world = quality.CappedWorld(ml100k_world, {"train": 20, "val": 10, "test": 10})  # 40 users: batches 16, 16, 8
    scen = [s for s in load_scenarios() if s.name in ("gender_female", "age_under_25")]
    ctx = quality.Context(world, vecs, scen, str(ckpt), "cpu", None)
    got = quality.model_embeddings(ctx)
    model, users = quality.load_model(ctx), quality.model_users(ctx)
    cache = quality.encode_prefixes(ctx, model, users, torch.float32)
    assert cache.batch_size == len(users) == 40
    specs = quality.query_specs(ctx)
    with torch.inference_mode():
        want = torch.cat([model.embed(cache[list(range(i, min(i + 16, 40)))], list(specs.values()))
                          for i in range(0, 40, 16)]).numpy()
    for j, (kind, name) in enumerate(specs):
        assert np.array_equal(got[kind][name][users], want[:, j]), (kind, name)


def test_the_layer_scan_streams_prefixes_and_its_last_layer_is_the_hidden_read_out(ml100k_world, tmp_path,
                                                                                    monkeypatch):
    """layer_scan.embed_layers reads each prefix once: it keeps no cache of every user (PrefixCache.collect, what
    encode_prefixes builds it with, is never called) and its last layer's states are the harness's `--embedding
    hidden` rows (stored in fp16)."""
    from benchmarks.quality import layer_scan
    from benchmarks.quality import run as quality
    from training.data.scenarios import load_scenarios

    ckpt = _tiny_checkpoint(ml100k_world, tmp_path)
    world = quality.CappedWorld(ml100k_world, {"train": 20, "val": 10, "test": 10})  # 40 users: batches 16, 16, 8
    scen = [s for s in load_scenarios() if s.name in ("gender_female", "age_under_25")]
    vecs = np.random.default_rng(0).standard_normal((len(ml100k_world.texts), 384)).astype(np.float16)
    ctx = quality.Context(world, vecs, scen, str(ckpt), "cpu", None, embedding="hidden")
    from training.model.prefix_cache import PrefixCache

    monkeypatch.setattr(PrefixCache, "collect", lambda *a, **kw: pytest.fail("the scan keeps every user's prefix"))
    emb, names, users = layer_scan.embed_layers(ctx, [1, 2])
    assert emb.shape[:3] == (40, len(quality.query_specs(ctx)), 2)
    want = quality.model_embeddings(ctx)
    for j, (kind, name) in enumerate(names):
        np.testing.assert_allclose(emb[:, j, 1].astype(np.float32), want[kind][name][users], atol=2e-3)
    assert not np.allclose(emb[:, :, 0], emb[:, :, 1], atol=1e-2)  # layer 1 is another state


def test_deep_tuned_rows_embed_each_scenario_over_its_own_grown_cache(ml100k_world, tmp_path, monkeypatch):
    """--tune-depth deep: every scenario's tuned embeddings are its query read over the users' prefixes with that
    scenario's deep prompt appended (training.tune.with_deep), one scenario per pass, beside the packed query rows;
    the pass keeps only the train users' prefixes (what tuning reads) and encodes the others on demand."""
    from benchmarks.quality import run as quality
    from training.data.scenarios import load_scenarios
    from training.model.suffix import ScenarioSpec
    from training.tune import with_deep

    ckpt = _tiny_checkpoint(ml100k_world, tmp_path)
    vecs = np.zeros((len(ml100k_world.texts), 384), np.float16)
    world = quality.CappedWorld(ml100k_world, {"train": 24, "val": 8, "test": 8})
    scen = [s for s in load_scenarios() if s.name in ("gender_female", "age_under_25")]
    ctx = quality.Context(world, vecs, scen, str(ckpt), "cpu", None, tune_steps=2, tune_depth="deep")
    prompts = {}
    real = quality._tune_prompts

    def spy(*a, **kw):
        got = real(*a, **kw)
        prompts.update(got)
        return got

    monkeypatch.setattr(quality, "_tune_prompts", spy)
    kept = []
    encode = quality.encode_prefixes
    monkeypatch.setattr(quality, "encode_prefixes", lambda ctx, model, users, *a: (kept.append(users),
                                                                                   encode(ctx, model, users, *a))[1])
    got = quality.model_embeddings(ctx)
    model, users = quality.load_model(ctx), quality.model_users(ctx)
    assert kept == [sorted(world.users("train"))]  # tuning reads the train users: only their prefixes are kept
    cache = encode(ctx, model, users, torch.float32)  # every user's, val and test users too
    for s in scen:
        q, prompt = prompts[s.name]
        assert prompt.ndim == 5 and prompt.shape[0] == model.served_layers  # [layers, 2, kv_heads, n, head_dim]
        with torch.inference_mode():
            want = model.embed(with_deep(cache, prompt), [ScenarioSpec(q)])[:, 0].numpy()
        np.testing.assert_allclose(got["tuned"][s.name][users], want, atol=1e-5)
        assert set(ctx.tune_log[s.name]) >= {"kept_zero_shot", "probe_auc"}


def test_query_rows_and_tuned_rows_keep_separate_cache_files_that_other_runs_reuse(ml100k_world, tmp_path,
                                                                                    monkeypatch, caplog):
    """--embed-cache: a tuned run writes its query rows (static, zero-shot) where a run without tuning looks for
    them and its tuned rows (with the tuning's held-out metrics) under its tuning settings; a run without tuning, or
    a tuned rerun, loads them without a model; a run with other tuning settings tunes and embeds only its tuned
    rows; a tuned file written before the split (every row in one file) still loads whole and gives its query rows
    to runs without tuning."""
    from benchmarks.quality import run as quality
    from training.data.scenarios import load_scenarios

    ckpt = _tiny_checkpoint(ml100k_world, tmp_path)
    vecs = np.zeros((len(ml100k_world.texts), 384), np.float16)
    world = quality.CappedWorld(ml100k_world, {"train": 24, "val": 8, "test": 8})
    scen = [s for s in load_scenarios() if s.name in ("gender_female", "age_under_25")]
    cache_dir = tmp_path / "embcache"

    def ctx(**kw):
        return quality.Context(world, vecs, scen, str(ckpt), "cpu", None, embed_cache=str(cache_dir), **kw)

    written = []
    save = quality.save_npz
    monkeypatch.setattr(quality, "save_npz", lambda disk, arrays: (written.append(sorted(arrays)),
                                                                            save(disk, arrays)))
    tuned = ctx(tune_steps=2)
    first = quality.model_embeddings(tuned)
    users = quality.model_users(tuned)
    query_file = quality._disk_cache_path(tuned, "trained", users, tuned=False)
    tuned_file = quality._disk_cache_path(tuned, "trained", users)
    assert query_file == quality._disk_cache_path(ctx(), "trained", users) != tuned_file
    with np.load(query_file) as z:
        assert sorted(z.files) == sorted(f"{kind}::{name}" for kind, name in quality.query_specs(tuned))
    with np.load(tuned_file) as z:
        assert sorted(z.files) == ["meta::tune_log", *sorted(f"tuned::{s.name}" for s in scen)]
    assert len(written) == 2

    def no_model(*a, **kw):
        raise AssertionError("a run whose rows are on disk loads no model")

    with monkeypatch.context() as m:
        m.setattr(quality, "load_model", no_model)
        plain, again = ctx(), ctx(tune_steps=2)
        for got in (quality.model_embeddings(plain), quality.model_embeddings(again)):
            for kind in got:
                for name in got[kind]:
                    assert np.array_equal(got[kind][name], first[kind][name]), (kind, name)
        assert "tuned" not in quality.model_embeddings(plain) and again.tune_log == tuned.tune_log
    other = ctx(tune_steps=2, tune_objective="probe")  # other tuned rows; the query rows come from disk
    with caplog.at_level(logging.INFO, logger=quality.log.name):
        got = quality.model_embeddings(other)
    assert f"model_embed_done model=trained users={len(users)} specs={len(scen)} " in caplog.text
    assert written[2:] == [["meta::tune_log", *sorted(f"tuned::{s.name}" for s in scen)]]
    assert np.array_equal(got["zero_shot"]["gender_female"], first["zero_shot"]["gender_female"])
    assert set(got["tuned"]) == {s.name for s in scen}
    # a tuned file of every row (written before the split) loads whole, whatever the query file holds
    combined = ctx(tune_steps=3)
    rows = {f"{kind}::{name}": first[kind][name][users] for kind in first for name in first[kind]}
    save(quality._disk_cache_path(combined, "trained", users), rows)
    query_file.unlink()
    with monkeypatch.context() as m:
        m.setattr(quality, "load_model", no_model)
        got = quality.model_embeddings(combined)
    assert np.array_equal(got["tuned"]["age_under_25"], first["tuned"]["age_under_25"])
    assert np.array_equal(got["static"]["static"], first["static"]["static"])
    with np.load(query_file) as z:  # and gives its query rows to runs without tuning
        assert np.array_equal(z["zero_shot::gender_female"], first["zero_shot"]["gender_female"][users])


def test_markdown_prints_each_claims_paired_difference_per_scenario():
    from benchmarks.quality import run as quality
    from training.data.scenarios import load_scenarios

    scen = [s for s in load_scenarios() if s.name in ("gender_female", "age_under_25")]
    claims = [{"better": "Q-Anchor prompt-tuned", "worse": "Q-Anchor zero-shot", "diff": 0.01, "low": -0.002,
               "high": 0.02, "by_scenario": {"gender_female": {"diff": 0.03, "low": 0.011, "high": 0.049},
                                             "age_under_25": {"diff": -0.01, "low": -0.03, "high": 0.01}}}]
    lines = quality.claims_by_scenario(claims, scen)
    assert "| scenario | Q-Anchor prompt-tuned - Q-Anchor zero-shot |" in lines
    assert "| gender_female | +0.0300 (+0.0110 - +0.0490) |" in lines
    assert "| age_under_25 | -0.0100 (-0.0300 - +0.0100) |" in lines
    assert quality.claims_by_scenario([{**claims[0], "by_scenario": {}}], scen) == []  # older results: no table


def test_the_table_plot_names_its_dataset_and_keeps_its_title_and_axis_label_inside_the_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from benchmarks.quality import run as quality
    from training.data.scenarios import load_scenarios

    rows = [{"row": name, "auc_avg": 0.70 + 0.01 * i, "auc_ci": [0.68 + 0.01 * i, 0.72 + 0.01 * i]}
            for i, name in enumerate(["Q-Anchor prompt-tuned where val improves", "Q-Anchor zero-shot",
                                      "ablation: zero-shot, no user+source tokens @30 steps"])]
    fig = quality.plot(rows, load_scenarios()[:8], tmp_path / "q.png",
                       {"dataset": "cdnow", "n_train": 1000, "n_test": 625, "checkpoint": "runs/own-full/checkpoint"})
    title = fig.axes[0].title
    assert "cdnow" in title.get_text() and "MovieLens" not in title.get_text()
    assert "Q-Anchor rows: runs/own-full/checkpoint" in title.get_text()  # a candidate's plot says whose rows
    assert (tmp_path / "q.png").exists()
    # the long row labels push the axes right; one-line texts centred on them ran past the figure's edge
    renderer = FigureCanvasAgg(fig).get_renderer()  # plot closed the figure: measure it on a canvas of its own
    for text in (title, fig.axes[0].xaxis.label):
        box = text.get_window_extent(renderer)
        assert 0 <= box.x0 and box.x1 <= fig.bbox.x1, (text.get_text(), box, fig.bbox)


def _keep_result(test_diffs: dict[str, float], held_diffs: dict[str, float]) -> dict:
    def row(name, shift):
        return {"row": name, "scenarios": [{"scenario": s, "auc_mean": 0.7 + shift.get(s, 0.0)} for s in test_diffs]}

    held = {s: {"auc": 0.8 + d, "auc_zero_shot": 0.7, "probe_auc": 0.8 + d, "probe_auc_zero_shot": 0.8,
                "val_probe_auc": 0.75 + d, "val_probe_auc_zero_shot": 0.75, "n_val": 200.0}
            for s, d in held_diffs.items()}
    return {"meta": {"scenarios": "training/data/scenarios.yaml", "n_val": 300, "tune_objective": "probe",
                     "tune_heldout": held},
            "rows": [row("Q-Anchor zero-shot", {}), row("Q-Anchor prompt-tuned", test_diffs),
                     {"row": "x", "skipped": "y"}]}


def test_keep_signal_scores_each_rule_by_the_test_difference_of_what_it_keeps():
    from benchmarks.quality import keep_signal as ks

    test = {"a": 0.02, "b": -0.01, "c": 0.005, "d": -0.02}
    recs = ks.collect([_keep_result(test, test)])  # held-out differences that predict the test ones exactly
    summary = ks.summarise(recs)
    for sig in ks.SIGNALS:
        assert summary[sig]["pearson"] > 0.999 and summary[sig]["sign_agreement"] == 1.0, sig
        assert summary[sig]["rule_mean"] == pytest.approx(summary["(oracle, reads test)"]["rule_mean"])
    assert summary["(oracle, reads test)"]["rule_mean"] == pytest.approx(0.025 / 4)
    assert summary["(always tuned)"]["rule_mean"] == pytest.approx(-0.005 / 4)
    flipped = ks.summarise(ks.collect([_keep_result(test, {s: -d for s, d in test.items()})]))
    assert flipped["table val users"]["sign_agreement"] == 0.0
    assert flipped["table val users"]["rule_mean"] == pytest.approx(-0.03 / 4)  # keeps exactly the losers
    md = ks.markdown(recs, summary)
    assert "| scenarios | a | +0.0200 |" in md and "| (oracle, reads test) |" in md


def test_keep_signal_needs_a_tuned_and_a_zero_shot_row():
    from benchmarks.quality import keep_signal as ks

    res = _keep_result({"a": 0.01}, {"a": 0.01})
    res["rows"] = res["rows"][:1]
    with pytest.raises(ValueError, match="prompt-tuned"):
        ks.collect([res])


def test_probe_stability_perturbs_like_bf16_rounding_and_counts_c_flips():
    from benchmarks.quality import probe_stability as ps

    e = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    bumped = ps.perturb(e, ps.BF16_HALF_ULP, seed=1)
    rel = np.abs(bumped / e - 1)
    assert 0 < np.median(rel) < ps.BF16_HALF_ULP and np.array_equal(bumped, ps.perturb(e, ps.BF16_HALF_ULP, seed=1))
    got = ps.summarise({"a": [(0.1, 0.70), (0.1, 0.71), (1.0, 0.72)], "b": [(0.01, 0.60), (0.01, 0.60), (0.01, 0.62)]})
    assert got["scenarios_with_c_flips"] == 1.0
    assert got["max_scenario_spread"] == pytest.approx(0.02)
    assert got["average_spread"] == pytest.approx(0.02)  # averages 0.65, 0.655, 0.67


def test_complement_pairs_the_scenario_state_with_the_static_one(ml100k_world, monkeypatch):
    """benchmarks/quality/complement.py: a zero-shot state with information the static one lacks makes
    `[zero-shot; static]` beat `static`, and the markdown pairs every row the diagnostic claims."""
    from benchmarks.quality import complement
    from benchmarks.quality import run as quality
    from training.data.scenarios import load_scenarios

    world = quality.CappedWorld(ml100k_world, {"train": 300, "val": 100, "test": 150})
    female = np.array([u.gender == "F" for u in ml100k_world.ml.users], np.float32)
    rng = np.random.default_rng(1)
    static = rng.standard_normal((len(female), 4)).astype(np.float32)
    zero = rng.standard_normal((len(female), 4)).astype(np.float32)
    zero[:, 0] += 2.0 * female  # only the scenario's state knows the answer
    scen = [s for s in load_scenarios() if s.name == "gender_female"]
    knows = static.copy()
    knows[:, 1] += 2.0 * female  # another model whose generic state knows it too
    models = {"trained": {"static": {"static": static}, "zero_shot": {"gender_female": zero}},
              complement.STATIC_FROM: {"static": {"static": knows}, "zero_shot": {"gender_female": knows}}}
    monkeypatch.setattr(complement, "model_embeddings", lambda ctx, key="trained": models[key])
    ctx = quality.Context(world, np.zeros((1, 384), np.float16), scen, None, "cpu", None)
    table = complement.rows(ctx)
    auc = {r["row"]: r["auc_avg"] for r in table}
    assert auc["static"] < 0.6 < 0.8 < auc["[zero-shot; static]"]
    md = complement.markdown(ctx, table, draws=200)
    for better, worse in complement.PAIRS:
        assert f"| {better} > {worse} |" in md
    # --static-from: the static state is the other model's; no sum row (two spaces do not add)
    ctx.ablations = {complement.STATIC_FROM: "artifacts/other"}
    table = complement.rows(ctx)
    auc = {r["row"]: r["auc_avg"] for r in table}
    assert set(auc) == {"static", "zero-shot", "[zero-shot; static]"} and auc["static"] > 0.8
    md = complement.markdown(ctx, table, draws=200)
    assert md.startswith("`static` is the generic query's state of artifacts/other")
    assert "| [zero-shot; static] > static |" in md and "zero-shot + static" not in md


def test_complement_dims_shows_a_query_that_only_reweights(ml100k_world, monkeypatch):
    """complement.py --dims: a scenario state that holds the same user information as the static one, only with the
    scenario's direction stretched, ties it at full width but wins when each is cut to its first component; the
    components are fitted on the train users alone (no labels, no test users)."""
    from benchmarks.quality import complement
    from benchmarks.quality import run as quality
    from training.data.scenarios import load_scenarios

    world = quality.CappedWorld(ml100k_world, {"train": 300, "val": 100, "test": 150})
    female = np.array([u.gender == "F" for u in ml100k_world.ml.users], np.float32)
    rng = np.random.default_rng(2)
    static = rng.standard_normal((len(female), 4)).astype(np.float32) * np.array([3.0, 1.0, 1.0, 1.0], np.float32)
    static[:, 1] += 1.5 * female  # the answer lies along a weak direction of the static state
    zero = static * np.array([1.0, 4.0, 1.0, 1.0], np.float32)  # the query stretches that direction: nothing new
    scen = [s for s in load_scenarios() if s.name == "gender_female"]
    monkeypatch.setattr(complement, "model_embeddings",
                        lambda ctx, key="trained": {"static": {"static": static}, "zero_shot": {"gender_female": zero}})
    ctx = quality.Context(world, np.zeros((1, 384), np.float16), scen, None, "cpu", None)
    table = complement.rows(ctx, dims=[1])
    auc = {r["row"]: r["auc_avg"] for r in table}
    assert abs(auc["zero-shot"] - auc["static"]) < 0.02
    assert auc["static @1"] < 0.6 < 0.7 < auc["zero-shot @1"]
    md = complement.markdown(ctx, table, draws=200, dims=[1])
    assert "| zero-shot @1 > static @1 |" in md
    # the components see only the fit rows: moving every other user changes no fitted direction
    train = np.asarray(world.users("train"))
    moved = static.copy()
    others = np.setdiff1d(np.arange(len(static)), train)
    moved[others] = rng.standard_normal((len(others), 4)) * 100
    a, b = complement.top_components(static, train, 2), complement.top_components(moved, train, 2)
    assert np.allclose(np.abs(a[train]), np.abs(b[train]), atol=1e-4)


def test_forest_puts_one_claim_of_several_tables_on_one_axis(tmp_path, capsys):
    """benchmarks/quality/forest.py: each --result's claim in order, a table without it left empty; a claim no table
    has, or a file that is not a result, is refused with what to do."""
    from benchmarks.quality import forest

    def table(name, diff, low, high):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"meta": {"claims": [
            {"better": "Q-Anchor zero-shot", "worse": "Q-Anchor static query", "diff": diff, "low": low,
             "high": high}]}, "rows": []}))
        return str(path)

    a, b = table("a", 0.012, 0.003, 0.021), table("b", -0.004, -0.010, 0.002)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"meta": {}, "rows": []}))
    out = tmp_path / "cmp" / "forest"
    assert forest.main(["--result", f"first={a}", "--result", f"second, lr=1e-4={b}", "--result", f"old={empty}",
                        "--claim", "Q-Anchor zero-shot > Q-Anchor static query", "--out", str(out)]) == 0
    md = out.with_suffix(".md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| first") or line.startswith("| second")
            or line.startswith("| old")]
    assert [r.split(" | ")[0] for r in rows] == ["| first", "| second, lr=1e-4", "| old"]  # a label may hold "="
    assert rows[0].endswith("| +0.0120 | +0.0030 - +0.0210 | yes |") and rows[1].endswith("| no |")
    assert "not in this table" in rows[2]
    assert out.with_suffix(".png").stat().st_size > 0
    with pytest.raises(SystemExit):
        forest.main(["--result", f"first={a}", "--claim", "Q-Anchor zero-shot > bag", "--out", str(out)])
    assert "no --claim is in any --result" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        forest.main(["--result", f"gone={tmp_path / 'missing.json'}", "--claim", "a > b", "--out", str(out)])
    assert "cannot read a run.py result JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        forest.main(["--result", "no-equals-sign", "--claim", "a > b", "--out", str(out)])
    assert "expected LEFT=RIGHT" in capsys.readouterr().err


def test_zero_label_reads_the_verdict_direction_of_the_scenario_state(ml100k_world, monkeypatch):
    """benchmarks/quality/zero_label.py: a scenario state whose verdict direction carries the label scores ~1 with no
    labels fitted, the static state (direction blind to it) ~0.5, and the markdown pairs them per scenario."""
    from benchmarks.quality import run as quality
    from benchmarks.quality import zero_label
    from training.data.scenarios import load_scenarios

    world = quality.CappedWorld(ml100k_world, {"train": 300, "val": 100, "test": 150})
    female = np.array([u.gender == "F" for u in ml100k_world.ml.users], np.float32)
    rng = np.random.default_rng(2)
    static = rng.standard_normal((len(female), 4)).astype(np.float32)
    zero = static.copy()
    zero[:, 0] += 4.0 * female  # only the scenario's state moves along the verdict direction
    direction = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    scen = [s for s in load_scenarios() if s.name == "gender_female"]
    monkeypatch.setattr(zero_label, "model_embeddings",
                        lambda ctx, key="trained": {"static": {"static": static}, "zero_shot": {"gender_female": zero}})
    ctx = quality.Context(world, np.zeros((1, 384), np.float16), scen, None, "cpu", None)
    (row,) = zero_label.scores(ctx, direction, draws=200)
    assert row["zero_shot"] > 0.9 and 0.35 < row["static"] < 0.65 and row["diff_ci"][0] > 0.2
    assert row["n"] == len(world.users("test"))
    md = zero_label.markdown([row])
    assert "| gender_female | 0.9" in md and "| **average** |" in md
    assert row["moved"] > 0.9  # the planted verdict is all in what the query moves

    # a prior both states share along the direction (activity), anti-aligned with the label, plus a weak verdict:
    # the raw read-out sees the prior, the per-user difference only the verdict
    prior = 6.0 * rng.standard_normal(len(female)).astype(np.float32) - 3.0 * female
    static[:, 0] = prior
    zero[:, 0] = prior + 1.0 * female
    (row,) = zero_label.scores(ctx, direction, draws=200)
    assert row["zero_shot"] < 0.6 and row["moved"] > 0.95 and row["moved_ci"][0] > 0.9


def _served_file(world, scen, path: Path, users: list[int], rng) -> np.ndarray:
    """A served.py fetch file for `users`, plus one user the run does not have, shuffled -> [users, rows, d]."""
    from benchmarks.quality import run as quality
    from benchmarks.quality.served import save_served, spec_names

    specs = spec_names([{"name": s.name} for s in scen])
    emb = rng.standard_normal((len(users) + 1, len(specs), 8)).astype(np.float32)
    ids = [world.ml.users[u].user_id for u in users] + ["not-in-this-run"]
    order = rng.permutation(len(ids))
    save_served(path, [ids[i] for i in order], specs, emb[order],
                {"model_version": "m1", "static_query": quality.STATIC_QUERY,
                 "queries": {s.name: s.query for s in scen}, "users": len(ids), "events": 10, "replay_s": 1.0,
                 "fetch_s": 2.0, "date": "2026-12-06 00:00 UTC"})
    return emb[:len(users)]


def test_served_rows_are_the_fetched_embeddings_of_this_runs_users(ml100k_world, tmp_path, monkeypatch):
    """--served: each model user's static and zero-shot rows are the file's, whatever its order; a file of other
    users or other wording is refused; the rows get user share but no retrieval column (that needs the model)."""
    from benchmarks.quality import run as quality
    from training.data.scenarios import load_scenarios

    world = quality.CappedWorld(ml100k_world, {"train": 40, "val": 10, "test": 30})
    scen = [s for s in load_scenarios() if s.name in ("gender_female", "age_under_25")]
    users = sorted(world.users("train") + world.users("val") + world.users("test"))
    path = tmp_path / "served.npz"
    planted = _served_file(world, scen, path, users, np.random.default_rng(0))
    ctx = quality.Context(world, np.zeros((1, 384), np.float16), scen, None, "cpu", None, served=str(path))
    got = quality.model_embeddings(ctx, quality.SERVED)
    one = quality.Context(world, ctx.vecs, scen[1:], None, "cpu", None, served=str(path))  # a file may hold more
    assert set(quality.served_embeddings(one)["zero_shot"]) == {scen[1].name}
    np.testing.assert_array_equal(got["static"]["static"][users], planted[:, 0])
    for j, s in enumerate(scen, start=1):
        np.testing.assert_array_equal(got["zero_shot"][s.name][users], planted[:, j])
    monkeypatch.setitem(quality.ROWS, quality.SERVED_ZERO_SHOT, quality.row_served_zero_shot)
    row = quality.run_row(quality.SERVED_ZERO_SHOT, ctx, (0,))
    assert "same_q" not in row and 0 < row["user_share"] < 1 and row["query_dependence"] is not None

    reworded = [dataclasses.replace(scen[0], query="Is she a woman?"), scen[1]]
    with pytest.raises(SystemExit, match=r"without \['gender_female'\] or in other wording"):
        quality.served_embeddings(quality.Context(world, ctx.vecs, reworded, None, "cpu", None, served=str(path)))
    _served_file(world, scen, path, users[1:], np.random.default_rng(1))
    with pytest.raises(SystemExit, match=f"lacks 1 of this run's {len(users)} users"):
        quality.served_embeddings(quality.Context(world, ctx.vecs, scen, None, "cpu", None, served=str(path)))


def test_served_parity_is_the_cosine_to_the_checkpoints_own_rows(ml100k_world, tmp_path):
    from benchmarks.quality import run as quality
    from training.data.scenarios import load_scenarios

    world = quality.CappedWorld(ml100k_world, {"train": 20, "val": 10, "test": 20})
    scen = [s for s in load_scenarios() if s.name == "gender_female"]
    users = sorted(world.users("train") + world.users("val") + world.users("test"))
    path = tmp_path / "served.npz"
    _served_file(world, scen, path, users, np.random.default_rng(0))
    ctx = quality.Context(world, np.zeros((1, 384), np.float16), scen, "ckpt", "cpu", None, served=str(path))
    served = quality.model_embeddings(ctx, quality.SERVED)
    ctx.model_cache["trained"] = {k: {n: 3.0 * e for n, e in v.items()} for k, v in served.items()}  # scale only
    par = quality.served_parity(ctx)
    assert par["pairs"] == 2 * 20 and par["min"] == pytest.approx(1.0, abs=1e-5)
    test = np.asarray(world.users("test"))
    ctx.model_cache["trained"]["zero_shot"]["gender_female"][test[0]] *= -1  # one user served the opposite way
    par = quality.served_parity(ctx)
    assert par["min"] == pytest.approx(-1.0, abs=1e-5) and par["mean"] == pytest.approx(1 - 2 / 40, abs=1e-5)
    md = quality.markdown([], scen, {"dataset": "ml-100k", "n_train": 20, "n_val": 10, "n_test": 20,
                                     "served": quality.served_meta(ctx)})
    assert "model m1" in md and "(40 test user x query pairs): mean 0.95000" in md


class _Result:
    def __init__(self, embedding=None, error=None):
        self.embedding, self.error = embedding, error

    def WhichOneof(self, _):  # noqa: N802 (protobuf's name)
        return "embedding" if self.embedding is not None else "error"


def _emb(**kw):
    from types import SimpleNamespace

    base = dict(values=[1.0, 0.0], fallback=False, prompt_version="zero-shot", arm="default", model_version="m1",
                feature_version=3)
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("results, message", [
    ([_emb(), _emb(fallback=True)], "cold-start fallback"),
    ([_emb(), _emb(prompt_version="v2", arm="tuned")], "prompt version v2"),
    ([_emb(), _emb(model_version="m2")], "model versions"),
    ([_emb()], "1 results for 2 scenarios"),
])
def test_the_fetch_takes_only_the_zero_shot_embedding_of_a_user_with_features(results, message):
    from types import SimpleNamespace

    from benchmarks.quality.served import _check

    resp = SimpleNamespace(results=[_Result(e) for e in results])
    with pytest.raises(RuntimeError, match=message):
        _check("u1", ["quality-static", "quality-gender_female"], resp)
    vecs, version, fv = _check("u1", ["a", "b"], SimpleNamespace(results=[_Result(_emb()), _Result(_emb())]))
    assert vecs.shape == (2, 2) and version == "m1" and fv == 3
    err = SimpleNamespace(code="NOT_FOUND", message="no such scenario")
    with pytest.raises(RuntimeError, match="NOT_FOUND no such scenario"):
        _check("u1", ["a"], SimpleNamespace(results=[_Result(error=err)]))


def test_tie_order_measures_the_cosine_to_the_timeline_order(ml100k_world, tmp_path):
    """tie_order.py: its timeline-order embeddings are the quality table's own rows; a model that reads event order
    moves users under shuffled draws (seeded: a rerun draws the same); the summary is over users x queries x draws."""
    from benchmarks.quality import run as quality
    from benchmarks.quality import tie_order
    from training.data.scenarios import load_scenarios

    ckpt = _tiny_checkpoint(ml100k_world, tmp_path)
    vecs = np.random.default_rng(0).standard_normal((len(ml100k_world.texts), 384)).astype(np.float16)
    world = quality.CappedWorld(ml100k_world, {"train": 10, "val": 10, "test": 20})
    scen = [s for s in load_scenarios() if s.name == "gender_female"]
    ctx = quality.Context(world, vecs, scen, str(ckpt), "cpu", None)
    users = sorted(world.users("test"))
    ties = tie_order.users_with_ties(ctx, users)
    assert len(ties) > 0  # ML-100K users rate in bursts: nearly every history has same-second events
    emb = tie_order.embed_orders(ctx, "trained", users, orders=2)
    assert emb.shape[:3] == (3, len(users), 2)  # timeline + 2 draws, static + one scenario
    table = quality.model_embeddings(ctx)
    np.testing.assert_allclose(emb[0, :, 0], table["static"]["static"][users], atol=1e-5)
    np.testing.assert_allclose(emb[0, :, 1], table["zero_shot"]["gender_female"][users], atol=1e-5)
    np.testing.assert_array_equal(emb, tie_order.embed_orders(ctx, "trained", users, orders=2))
    tied = np.array([i for i, u in enumerate(users) if u in ties])
    moved = tie_order.cosine_summary(emb, tied)
    assert moved["pairs"] == len(tied) * 2 * 2 and moved["min"] < 0.9999 and moved["mean"] <= 1.0 + 1e-6
    same = emb.copy()
    same[1:] = 2.0 * same[0]  # draws that only rescale: cosine 1
    assert tie_order.cosine_summary(same, tied)["min"] == pytest.approx(1.0, abs=1e-5)
    same[1, tied[0], 0] *= -1  # one draw of one user's static embedding the opposite way
    s = tie_order.cosine_summary(same, tied)
    assert s["min"] == pytest.approx(-1.0, abs=1e-4) and s["share_below_0.99"] == pytest.approx(1 / s["pairs"])


def _event_log_helpers():
    spec = importlib.util.spec_from_file_location("event_world_tests", Path(__file__).with_name("test_event_world.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_harness_measures_an_event_log_on_a_teams_labels_files(tmp_path, monkeypatch):
    """--dataset offline: the platform's event log, each user embedded from everything in it, probed on the labels
    CSVs a scenarios file names (`label: given`, the tuning CSV's format); users without a label are not scored.
    Baselines and the model rows run on it, and the embedding cache is keyed by what the log held."""
    pytest.importorskip("pyarrow")
    import yaml

    from training.data.event_world import build_event_world
    from training.data.features import fit_normalisation
    from training.data.scenarios import labels_file
    from training.data.world import WorldConfig
    from training.normalisation import attach_normalisation

    helpers = _event_log_helpers()
    run = _load()
    records = helpers.synthetic_events(n_users=60, n_events=20)
    helpers.write_log(tmp_path / "log", records)
    # the label: the user's favourite category (synthetic_events: CATS[u % 5]) is Drama or Comedy; 10 users unlabelled
    with (tmp_path / "likes_drama.csv").open("w") as f:
        f.write("user_id,label\n" + "".join(f"user-{u:03d},{int(u % 5 < 2)}\n" for u in range(50)))
    (tmp_path / "scen.yaml").write_text(yaml.safe_dump({"scenarios": [
        {"name": "likes_drama", "query": "Does this user like dramas?", "label": "given",
         "params": {"file": "likes_drama.csv"}}]}))

    def fake_vectors(texts, name, progress=True):  # the harness is under test, not the encoder
        assert name == "offline"
        return np.random.default_rng(0).standard_normal((len(texts), 384)).astype(np.float16)

    monkeypatch.setattr(run, "cached_text_vectors", fake_vectors)
    world = build_event_world(tmp_path / "log", WorldConfig(dataset="offline", min_future=0), cutoff=np.inf)
    assert all(len(t.future) == 0 for t in world.timelines.values())  # as of the end of the log: all history
    ckpt = _tiny_checkpoint(world, tmp_path)
    attach_normalisation(ckpt, fit_normalisation(world, fake_vectors(world.texts, "offline")), {"dataset": "ml-1m"})
    args = ["--dataset", "offline", "--log-root", str(tmp_path / "log"), "--scenarios", str(tmp_path / "scen.yaml"),
            "--checkpoint", str(ckpt), "--split", "0.5", "0.2", "0.3", "--draws", "50", "--c-choice", "val",
            "--embed-cache", str(tmp_path / "cache"), "--out", str(tmp_path / "q"),
            "--rows", "bag_of_items+genres (LR)", "Q-Anchor static query", "Q-Anchor zero-shot"]
    assert run.main(args) == 0
    out = json.loads((tmp_path / "q.json").read_text())
    meta, rows = out["meta"], {r["row"]: r for r in out["rows"]}
    assert meta["n_train"] + meta["n_val"] + meta["n_test"] == 50 and meta["n_test"] >= 10
    assert meta["transfer"]["checkpoint_dataset"] == "ml-1m"
    header = (tmp_path / "q.md").read_text().splitlines()[0]
    assert f"the event log {tmp_path / 'log'} (each user embedded from every event the log holds)" in header
    assert rows["bag_of_items+genres (LR)"]["auc_avg"] > 0.8  # the favourite category is in the bag of categories
    assert all("skipped" not in r and np.isfinite(r["auc_avg"]) for r in rows.values())
    assert "same_q" not in rows["Q-Anchor zero-shot"]  # no future windows to ask pretraining's questions of
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 1
    # a grown log is another world: other cache file
    helpers.write_log(tmp_path / "log", helpers.synthetic_events(n_users=60, n_events=21)[-1:], first_offset=5000)
    assert run.main(args) == 0
    assert len(list((tmp_path / "cache").iterdir())) == 2
    labels_file.cache_clear()
    # MovieLens label functions cannot read a log: refused, saying what to write instead
    (tmp_path / "ml.yaml").write_text(yaml.safe_dump({"scenarios": [
        {"name": "g", "query": "Is this user a woman?", "label": "demographic_gender", "params": {"gender": "F"}}]}))
    with pytest.raises(SystemExit, match="label: given"):
        run.main([*args[:4], "--scenarios", str(tmp_path / "ml.yaml"), *args[6:]])
    with pytest.raises(SystemExit, match="qanchor stack up eventlog"):
        run.main(["--dataset", "offline", "--log-root", str(tmp_path / "none"), "--scenarios",
                  str(tmp_path / "scen.yaml"), "--out", str(tmp_path / "x")])


def test_given_labels_read_a_teams_file_and_leave_unlisted_users_out(tmp_path):
    """`label: given` reads the tuning CSV format relative to the scenarios file; labels other than 0/1, a missing
    file or a missing `file` param are refused with what to do."""
    import yaml

    from training.data.scenarios import labels_file, load_scenarios

    class World:
        def user_id(self, u):
            return f"u{u}"

    (tmp_path / "l.csv").write_text("user_id,label,extra\nu1,1,x\nu2,0,y\n")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"scenarios": [
        {"name": "a", "query": "q?", "label": "given", "params": {"file": "l.csv"}}]}))
    (s,) = load_scenarios(tmp_path / "s.yaml")
    users, labels = s.labels(World(), [1, 2, 3])
    assert users.tolist() == [1, 2] and labels.tolist() == [1, 0]
    (tmp_path / "bad.csv").write_text("user_id,label\nu1,2\n")
    for params, message in (({"file": "bad.csv"}, "besides 0/1"), ({"file": "none.csv"}, "not found"),
                            ({}, "needs `params: {file")):
        (tmp_path / "b.yaml").write_text(yaml.safe_dump({"scenarios": [
            {"name": "b", "query": "q?", "label": "given", "params": params}]}))
        with pytest.raises(ValueError, match=message):
            labels_file.cache_clear()
            load_scenarios(tmp_path / "b.yaml")[0].labels(World(), [1])
    labels_file.cache_clear()


def test_future_labels_read_the_log_after_as_of(tmp_path, monkeypatch):
    """The future label functions read any world's future window (stats_columns): on an event log with --as-of, each
    user is embedded from the events before it and labelled from those after it; without --as-of they are refused,
    and a label that reads MovieLens' user table is refused with what to write instead."""
    pytest.importorskip("pyarrow")
    import yaml

    from training.data.event_world import build_event_world
    from training.data.scenarios import load_scenarios
    from training.data.world import WorldConfig

    helpers = _event_log_helpers()
    run = _load()
    helpers.write_log(tmp_path / "log", helpers.synthetic_events(n_users=60, n_events=20))
    as_of = helpers.T0 + 15 * helpers.DAY - 1  # synthetic_events: one event a day per user
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"scenarios": [
        {"name": "drama_next", "query": "Will this user buy dramas?", "label": "future_genre_share",
         "params": {"genre": "Drama", "min_share": 0.5}}]}))
    (scenario,) = load_scenarios(tmp_path / "s.yaml")
    world = build_event_world(tmp_path / "log", WorldConfig(dataset="offline", min_future=0), cutoff=as_of)
    users, labels = scenario.labels(world, world.users())
    assert len(users) == 60 and 0 < labels.mean() < 1
    u = int(users[0])
    cats = [world.categories[i] for i in world.timelines[u].future]
    assert labels[0] == int(np.mean(["Drama" in c for c in cats]) >= 0.5)
    assert all(world.ts[world.timelines[u].history] < as_of) and all(world.ts[world.timelines[u].future] >= as_of)
    late = build_event_world(tmp_path / "log", WorldConfig(dataset="offline", min_future=0),
                             cutoff=helpers.T0 + 18 * helpers.DAY - 1)  # two future events: too few to label
    assert scenario.labels(late, late.users())[0].size == 0

    monkeypatch.setattr(run, "cached_text_vectors", lambda texts, name, progress=True: np.random.default_rng(0)
                        .standard_normal((len(texts), 384)).astype(np.float16))
    args = ["--dataset", "offline", "--log-root", str(tmp_path / "log"), "--scenarios", str(tmp_path / "s.yaml"),
            "--split", "0.5", "0.2", "0.3", "--draws", "20", "--out", str(tmp_path / "q"),
            "--rows", "bag_of_items+genres (LR)"]
    with pytest.raises(SystemExit, match="give --as-of TIME"):
        run.main(args)
    assert run.main([*args, "--as-of", str(as_of)]) == 0
    out = json.loads((tmp_path / "q.json").read_text())
    assert out["meta"]["n_train"] + out["meta"]["n_val"] + out["meta"]["n_test"] == 60
    assert "the events before" in (tmp_path / "q.md").read_text().splitlines()[0]
    # the same labels as the files a tuning job takes (labels_files.py reads the log as the harness does)
    from benchmarks.quality import labels_files

    assert labels_files.main(["--dataset", "offline", "--log-root", str(tmp_path / "log"), "--as-of", str(as_of),
                              "--scenarios", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "lab")]) == 0
    from services.tuning.dataset import read_labels_csv

    ids, got = read_labels_csv(tmp_path / "lab" / "drama_next.csv")
    assert dict(zip(ids, got.tolist())) == {world.user_id(int(u)): int(y) for u, y in zip(users, labels)}
    assert load_scenarios(tmp_path / "lab" / "scenarios.yaml")[0].label == "given"


def test_todays_store_reads_the_future_with_the_as_of_constants(ml100k_world):
    """benchmarks/quality/tuning_as_of.py's leaky view: every user's future joins what their prefix and dense vector
    read, standardised with the constants of the as-of view (serving's do not move), and the as-of world is left
    as it was; its paired bootstrap gives the two AUCs and their difference on the same draws."""
    from benchmarks.quality.tuning_as_of import paired_bootstrap, todays_store
    from training.data.collate import user_record
    from training.data.features import dense_user_features, fit_normalisation, stats_spec, user_aggregates

    vecs = np.random.default_rng(2).standard_normal((len(ml100k_world.texts), 384)).astype(np.float16)
    world = dataclasses.replace(ml100k_world)  # a copy: the session's fixture is never mutated
    before = dense_user_features(world, vecs).copy()
    today = todays_store(world, vecs)
    u = world.users("test")[0]
    t = world.timelines[u]
    assert len(today.timelines[u].history) == len(t.history) + len(t.future) and len(t.future) > 0
    np.testing.assert_array_equal(dense_user_features(world, vecs), before)  # the as-of view is untouched
    norm = fit_normalisation(world, vecs)
    agg = user_aggregates(today, vecs)[u]
    np.testing.assert_allclose(dense_user_features(today, vecs)[u], norm.dense(agg, stats_spec(world)), atol=1e-5)
    # the prefix now ends at the user's newest event, one of the future window's
    assert today.row_ts(today.timelines[u].history).max() == world.row_ts(t.future).max()
    assert sum(len(v) for v in user_record(today, vecs, u).event_vecs.values()) > 0
    y = np.array([0, 1] * 20)
    good, noise = y + np.random.default_rng(0).normal(0, 0.5, 40), np.random.default_rng(1).normal(0, 1, 40)
    ci = paired_bootstrap(y, good, noise)
    assert ci["a"][0] > 0.7 and ci["b"][0] < 0.5 < ci["b"][1] and ci["diff"][0] > 0
