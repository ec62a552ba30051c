"""The tuning job's plain function and its Celery task on the tiny model (model env, seconds once torch is loaded).

The registry is the real repository on a SQLite file; the serving model is a real tiny export (training.export);
the Celery task runs in-process (`apply`) with Celery's in-memory result backend: a unit test of the task's logic,
the real broker and worker are in tests/integration/test_tuning_worker.py.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from services.registry.db import Database  # noqa: E402
from services.registry.domain import JobState, PromptKind, PromptStatus  # noqa: E402
from services.registry.models import Base  # noqa: E402
from services.registry.repository import Repository  # noqa: E402
from services.tuning.dataset import DatasetError, TuningData  # noqa: E402
from services.tuning.jobs import JobError, ModelCache, run_tuning_job  # noqa: E402
from services.tuning.settings import TuningSettings  # noqa: E402
from training.artifacts import load_soft_prompt  # noqa: E402
from training.export.qanchor import QAnchorExportConfig, export_qanchor  # noqa: E402

pytestmark = pytest.mark.model
torch.set_num_threads(1)  # tiny matrices: extra threads only add spin-wait on shared, busy cores
QUERY = "Does this user like the planted genre?"


def planted_data(n: int = 48, seed: int = 3) -> TuningData:
    """Users of the tiny model's schema; the label is the side of a fixed direction the newest liked event is on."""
    rng = np.random.default_rng(seed)
    k = {"liked": 6, "neutral": 3, "disliked": 2}  # liked deeper than the model's K=4: the newest 4 must be kept
    vecs = {s: rng.standard_normal((n, kk, 384)).astype(np.float16) for s, kk in k.items()}
    mask = {s: np.ones((n, kk), dtype=bool) for s, kk in k.items()}
    mask["disliked"][: n // 2] = False  # half the users have no disliked events
    direction = rng.standard_normal(384)
    labels = (vecs["liked"][:, -1].astype(np.float64) @ direction > 0).astype(np.int64)
    return TuningData([f"u{i}" for i in range(n)], labels, vecs, mask, rng.standard_normal((n, 8)).astype(np.float32),
                      np.arange(1, n + 1, dtype=np.int64), meta={"n_missing": 2})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("tuning")
    export_qanchor(tmp / "model_repository", QAnchorExportConfig(preset="tiny", model_version="tiny-t"))
    db = Database(f"sqlite:///{tmp / 'registry.db'}")
    Base.metadata.create_all(db.engine)  # the registry's migrations need alembic (services env); same tables
    repo = Repository(db)
    repo.register_scenario("planted", QUERY)
    snapshot = planted_data().save(tmp / "labels" / "planted.npz")
    settings = TuningSettings(state_dir=tmp / "state", database_url=db.url, model_repository=tmp / "model_repository",
                              artifact_dir=tmp / "artifacts", features_python=None, device="cpu")
    yield repo, settings, snapshot, ModelCache("cpu")
    db.dispose()


def test_job_adds_a_ready_version_whose_artifact_matches(world) -> None:  # type: ignore[no-untyped-def]
    repo, settings, snapshot, models = world
    job = repo.create_tuning_job("planted", snapshot.as_uri(), params={"steps": "10", "batch_size": "16",
                                                                       "min_val_gain": "-1"})  # keep the tuned one
    seen: list[float] = []
    version = run_tuning_job(job, repo, settings, models, lambda f, msg, st: seen.append(f))
    assert (version.version, version.kind, version.status) == (2, PromptKind.TUNED, PromptStatus.READY)
    assert version.model_version == "tiny-t"  # "" resolved to the repository's default version
    assert {"auc", "ks", "auc_zero_shot", "ks_zero_shot", "n_train", "n_val"} <= set(version.metrics)
    assert version.metrics["n_train"] + version.metrics["n_val"] == 48 and version.metrics["n_missing"] == 2
    assert 0.0 <= version.metrics["auc"] <= 1.0 and 0.0 <= version.metrics["ks"] <= 1.0
    path = Path(version.artifact_uri.removeprefix("file://"))
    assert path.is_file() and path.is_relative_to(settings.resolved_artifact_dir() / "prompts" / "planted")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == version.sha256
    art = load_soft_prompt(path.parent)  # verifies the manifest's sha256 too
    assert art.prompt.shape == (6, 32) and art.meta["metrics"]["auc"] == pytest.approx(version.metrics["auc"])
    assert art.meta["extra"]["job_id"] == job.job_id and art.meta["query"] == QUERY
    done = repo.get_tuning_job(job.job_id)
    assert (done.state, done.prompt_version) == (JobState.SUCCEEDED, 2)
    assert seen == sorted(seen) and seen[-1] >= 0.95 and len(seen) >= 10  # one report per step at least


def test_running_a_completed_job_again_adds_no_version(world) -> None:  # type: ignore[no-untyped-def]
    repo, settings, snapshot, models = world
    job = repo.create_tuning_job("planted", str(snapshot), params={"steps": "4", "batch_size": "16", "seed": "1"})
    n_before = len(repo.list_prompt_versions("planted"))
    first = run_tuning_job(job, repo, settings, models, lambda *a: None)
    again = run_tuning_job(job, repo, settings, models, lambda *a: None)  # what a redelivery would do
    assert (again.version, again.sha256, again.artifact_uri) == (first.version, first.sha256, first.artifact_uri)
    assert len(repo.list_prompt_versions("planted")) == n_before + 1
    folders = list((settings.resolved_artifact_dir() / "prompts" / "planted").glob(f"{job.job_id}-*"))
    assert [f.name for f in folders] == [Path(first.artifact_uri).parent.name]  # no orphan, nothing overwritten


def test_a_job_can_tune_against_the_probe_objective(world) -> None:  # type: ignore[no-untyped-def]
    """params objective=probe reaches training.tune: the version's metrics carry the step it kept (best_step)."""
    repo, settings, snapshot, models = world
    job = repo.create_tuning_job("planted", str(snapshot), params={"steps": "4", "batch_size": "16",
                                                                   "objective": "probe", "anchor_weight": "0.5"})
    version = run_tuning_job(job, repo, settings, models, lambda *a: None)
    assert version.metrics["best_step"] in (0.0, 1.0, 2.0, 3.0, 4.0) and "probe_auc" in version.metrics
    assert version.metrics["kept_zero_shot"] == float(version.metrics["best_step"] == 0.0)


def test_a_job_whose_prompt_does_not_beat_the_query_registers_an_empty_prompt(world) -> None:  # type: ignore
    """min_val_gain out of reach: the version is READY with kept_zero_shot 1 and a [0, hidden] prompt, which the
    serving prompt store loads (and serves as the query alone: test_export_runtime)."""
    from training.artifacts import load_soft_prompt

    repo, settings, snapshot, models = world
    job = repo.create_tuning_job("planted", str(snapshot), params={"steps": "4", "batch_size": "16",
                                                                   "min_val_gain": "0.999"})
    version = run_tuning_job(job, repo, settings, models, lambda *a: None)
    assert version.metrics["kept_zero_shot"] == 1.0
    art = load_soft_prompt(Path(version.artifact_uri.removeprefix("file://")).parent)
    assert art.prompt.shape[0] == 0 and art.meta["n_tokens"] == 0
    assert "keeps the query (an empty prompt)" in repo.get_tuning_job(job.job_id).message


def test_a_job_with_more_users_than_its_cache_memory_tunes_on_a_stratified_sample(world) -> None:  # type: ignore
    """TUNING_MAX_CACHE_MB below the 48 users' prefix caches (~7 KB each on the tiny model): the job tunes on the
    users that fit (a stratified sample: the shares are test_stratified_sample's) and says so (message, n_users /
    n_labelled, which counts the labelled users as the snapshot does: with features or not (n_missing)); a budget
    below TUNING_MIN_USERS users fails with what to raise."""
    repo, settings, snapshot, models = world
    capped = settings.model_copy(update={"max_cache_mb": 0.17})
    job = repo.create_tuning_job("planted", str(snapshot), params={"steps": "4", "batch_size": "16"})
    messages: list[str] = []
    version = run_tuning_job(job, repo, capped, models, lambda f, msg, st: messages.append(msg))
    n = version.metrics["n_users"]
    assert 8 <= n < 48 and version.metrics["n_labelled"] == 48 + 2 and version.metrics["n_missing"] == 2
    assert version.metrics["n_train"] + version.metrics["n_val"] == n
    assert any(f"on {int(n)} of 48 labelled users with features" in m and "TUNING_MAX_CACHE_MB=0.17" in m
               for m in messages)
    full = run_tuning_job(repo.create_tuning_job("planted", str(snapshot), params={"steps": "1", "batch_size": "16"}),
                          repo, settings, models, lambda *a: None)
    assert full.metrics["n_users"] == full.metrics["n_labelled"] - 2 == 48  # the default budget holds them all
    tiny = settings.model_copy(update={"max_cache_mb": 0.01})
    with pytest.raises(JobError, match="fewer than TUNING_MIN_USERS=8; raise TUNING_MAX_CACHE_MB"):
        run_tuning_job(repo.create_tuning_job("planted", str(snapshot)), repo, tiny, models, lambda *a: None)


def test_stratified_sample_keeps_each_class_share_and_is_seeded() -> None:
    from training.tune import stratified_sample

    y = np.array([0] * 90 + [1] * 8 + [2] * 2)
    got = stratified_sample(y, 20, seed=1)
    assert len(got) == 20 and np.all(np.diff(got) > 0)
    assert np.bincount(y[got]).tolist() == [16, 2, 2]  # 18 / 1.6 / 0.4 by share; every class keeps >= 2
    assert np.array_equal(got, stratified_sample(y, 20, seed=1))
    assert not np.array_equal(got, stratified_sample(y, 20, seed=2))
    assert np.array_equal(stratified_sample(y, 500), np.arange(100))


@pytest.mark.parametrize("params, labels_uri, model_version, match", [
    ({"stepz": "3"}, None, "", "unknown tuning params"),
    ({"lr": "fast"}, None, "", "lr='fast' is not a number"),
    ({"objective": "ranker"}, None, "", "objective 'ranker' is not one of prototype, probe"),
    ({"anchor_weight": "-1"}, None, "", "anchor_weight>=0"),
    ({"min_val_gain": "1.5"}, None, "", "-1<=min_val_gain<1"),
    ({}, None, "tiny-nope", r"not in .* \(have \['tiny-t'\]\)"),
    ({}, "labels.csv", "", "TUNING_FEATURES_PYTHON"),
    ({}, "s3://bucket/labels.csv", "", "scheme 's3' is not supported"),
])
def test_job_errors_say_what_to_change(world, params, labels_uri, model_version, match) -> None:  # type: ignore
    repo, settings, snapshot, models = world
    if labels_uri == "labels.csv":
        csv = snapshot.parent / "labels.csv"
        csv.write_text("user_id,label\nu1,1\nu2,0\n")
        labels_uri = str(csv)
    job = repo.create_tuning_job("planted", labels_uri or str(snapshot), model_version=model_version, params=params)
    with pytest.raises((JobError, DatasetError), match=match):  # both are written verbatim to the job row
        run_tuning_job(job, repo, settings, models, lambda *a: None)


def test_one_class_labels_fail_readably(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo, settings, _, models = world
    data = planted_data(n=20)
    data.labels[:] = 1
    job = repo.create_tuning_job("planted", str(data.save(tmp_path / "one.npz")))
    with pytest.raises(JobError, match="cannot tune on these labels: labels hold a single class"):
        run_tuning_job(job, repo, settings, models, lambda *a: None)


def test_task_marks_running_then_succeeded_and_skips_redelivery(world) -> None:  # type: ignore[no-untyped-def]
    from services.tuning import app as app_module
    from services.tuning import tasks

    repo, settings, snapshot, _ = world
    app_module.configure(settings.model_copy(update={"broker_url": "memory://",
                                                     "result_backend": "cache+memory://"}))
    tasks._runtime.clear()
    job = repo.create_tuning_job("planted", str(snapshot), params={"steps": "3", "batch_size": "16"})
    n_before = len(repo.list_prompt_versions("planted"))
    out = tasks.tune_scenario.apply(args=[job.job_id], task_id=job.job_id).get()
    assert out["state"] == "SUCCEEDED" and out["prompt_version"] == repo.get_tuning_job(job.job_id).prompt_version
    again = tasks.tune_scenario.apply(args=[job.job_id], task_id=job.job_id).get()
    assert again == {"job_id": job.job_id, "state": "SUCCEEDED", "skipped": True,
                     "prompt_version": out["prompt_version"]}
    assert len(repo.list_prompt_versions("planted")) == n_before + 1

    bad = repo.create_tuning_job("planted", str(snapshot), params={"steps": "0"})
    failed = tasks.tune_scenario.apply(args=[bad.job_id], task_id=bad.job_id).get()
    row = repo.get_tuning_job(bad.job_id)
    assert failed["state"] == "FAILED" and row.state is JobState.FAILED and "steps>=1" in row.message
    tasks._runtime.clear()


def test_a_finished_jobs_message_gives_the_held_out_gain_and_whether_it_is_resolved():
    from services.registry.repository import _job_done_message

    base = {"kept_zero_shot": 0.0, "n_val": 200.0, "val_gain": 0.012, "val_gain_high": 0.03}
    wide = _job_done_message(4, {**base, "val_gain_low": -0.006})
    assert wide.startswith("prompt version 4 ready; promote it or route traffic to it")
    assert "+0.012, 95% -0.006 to +0.030 on 200 users: not resolved at this size; an A/B split tells more" in wide
    assert _job_done_message(4, {**base, "val_gain_low": 0.002}).endswith("+0.002 to +0.030 on 200 users)")
    assert _job_done_message(4, {"auc": 0.7}) == "prompt version 4 ready; promote it or route traffic to it"
    split = _job_done_message(4, {**base, "n_select": 100.0, "n_verdict": 100.0, "val_gain_low": 0.002})
    assert split.endswith("+0.002 to +0.030 on 100 users)")  # the gain reads the verdict users only
    assert "keeps the query" in _job_done_message(4, {**base, "val_gain_low": 0.002, "kept_zero_shot": 1.0})
