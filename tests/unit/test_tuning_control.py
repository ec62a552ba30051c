"""Stopping tuning jobs (cancel, soft and hard time limits) and the worker's metrics, on the real repository
(SQLite file) and, for the cancel of a running job, the real tuning function on the tiny model (model env)."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from prometheus_client import generate_latest  # noqa: E402

from services.registry.db import Database  # noqa: E402
from services.registry.domain import JobState  # noqa: E402
from services.registry.models import Base  # noqa: E402
from services.registry.repository import Repository  # noqa: E402
from services.tuning.control import HardLimit, JobCancelled, JobControl, TimeLimitExceeded  # noqa: E402
from services.tuning.jobs import ModelCache, run_tuning_job  # noqa: E402
from services.tuning.metrics import WorkerMetrics  # noqa: E402
from services.tuning.settings import TuningSettings  # noqa: E402
from test_tuning_jobs import QUERY, planted_data  # noqa: E402
from training.export.qanchor import QAnchorExportConfig, export_qanchor  # noqa: E402

pytestmark = pytest.mark.model
torch.set_num_threads(1)


@pytest.fixture()
def repo(tmp_path: Path) -> Repository:
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    Base.metadata.create_all(db.engine)
    r = Repository(db)
    r.register_scenario("planted", QUERY)
    yield r
    db.dispose()


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_control_sees_a_cancel_at_the_next_check(repo: Repository) -> None:
    job = repo.create_tuning_job("planted", "file:///a.npz")
    clock = Clock()
    control = JobControl(repo, job.job_id, soft_limit_s=60, every_s=2.0, clock=clock)
    control.check()
    repo.cancel_tuning_job(job.job_id)
    control.check()  # the row is read at most every 2 s: not yet
    clock.t += 2.0
    with pytest.raises(JobCancelled):
        control.check()


def test_control_fails_past_the_soft_limit_with_what_to_raise(repo: Repository) -> None:
    job = repo.create_tuning_job("planted", "file:///a.npz")
    clock = Clock()
    control = JobControl(repo, job.job_id, soft_limit_s=30, clock=clock)
    clock.t += 30.0
    control.check()
    clock.t += 0.5
    with pytest.raises(TimeLimitExceeded, match="TUNING_SOFT_TIME_LIMIT_S"):
        control.check()


def test_hard_limit_fails_the_job_then_runs_its_exit(repo: Repository) -> None:
    job = repo.create_tuning_job("planted", "file:///a.npz")
    repo.update_tuning_job(job.job_id, state=JobState.RUNNING)
    exited = threading.Event()
    with HardLimit(repo, job.job_id, 0.05, exited.set) as limit:
        assert exited.wait(60)
    assert limit.fired.is_set()
    row = repo.get_tuning_job(job.job_id)
    assert row.state is JobState.FAILED and "hard time limit" in row.message and "TUNING_TIME_LIMIT_S" in row.message
    # Finished within the limit: the timer never fires.
    quiet = threading.Event()
    with HardLimit(repo, job.job_id, 3600, quiet.set):
        pass
    assert not quiet.is_set()


def test_settings_derive_and_check_the_limits() -> None:
    s = TuningSettings(max_job_s=800)
    assert (s.resolved_soft_time_limit_s(), s.resolved_time_limit_s()) == (700, 800)
    with pytest.raises(ValueError, match="soft time limit"):
        TuningSettings(soft_time_limit_s=900, time_limit_s=800)
    with pytest.raises(ValueError, match="TUNING_MAX_JOB_S"):
        TuningSettings(time_limit_s=20_000)


def test_a_running_local_job_stops_at_its_next_step_when_cancelled(repo: Repository, tmp_path: Path) -> None:
    export_qanchor(tmp_path / "model_repository", QAnchorExportConfig(preset="tiny", model_version="tiny-c"))
    snapshot = planted_data().save(tmp_path / "planted.npz")
    settings = TuningSettings(state_dir=tmp_path / "state", model_repository=tmp_path / "model_repository",
                              artifact_dir=tmp_path / "artifacts", features_python=None, device="cpu")
    job = repo.create_tuning_job("planted", str(snapshot), params={"steps": "50", "batch_size": "16"})
    repo.update_tuning_job(job.job_id, state=JobState.RUNNING)
    control = JobControl(repo, job.job_id, soft_limit_s=3600, every_s=0.0)
    steps: list[str] = []

    def progress(fraction: float, message: str, stats: dict[str, float]) -> None:
        control.check()
        steps.append(message)
        if message == "step 2/50":
            repo.cancel_tuning_job(job.job_id, reason="test")

    with pytest.raises(JobCancelled):
        run_tuning_job(repo.get_tuning_job(job.job_id), repo, settings, ModelCache("cpu"), progress)
    assert steps[-1] == "step 2/50"  # stopped at the very next step, not after 50
    assert repo.get_tuning_job(job.job_id).state is JobState.CANCELLED
    assert len(repo.list_prompt_versions("planted")) == 1  # no version
    assert not list((tmp_path / "artifacts").rglob("prompt.safetensors"))


def test_worker_metrics_count_jobs_by_state_outcome_and_duration(repo: Repository) -> None:
    for _ in range(2):
        repo.create_tuning_job("planted", "file:///a.npz")
    cancelled = repo.create_tuning_job("planted", "file:///a.npz")
    repo.cancel_tuning_job(cancelled.job_id)
    metrics = WorkerMetrics()
    metrics.watch_registry(lambda: repo)
    metrics.started("j1")
    metrics.progress.labels("j1").set(0.4)
    text = generate_latest(metrics.registry).decode()
    assert 'qanchor_tuning_jobs{state="QUEUED"} 2.0' in text and 'qanchor_tuning_jobs{state="CANCELLED"} 1.0' in text
    assert 'qanchor_tuning_jobs{state="FAILED"} 0.0' in text and "qanchor_tuning_registry_up 1.0" in text
    assert "qanchor_tuning_jobs_running 1.0" in text and 'qanchor_tuning_job_progress{job_id="j1"} 0.4' in text
    metrics.ended("j1", "succeeded", 12.0)
    text = generate_latest(metrics.registry).decode()
    assert 'qanchor_tuning_jobs_finished_total{outcome="succeeded"} 1.0' in text
    assert 'qanchor_tuning_job_duration_seconds_bucket{le="15.0",outcome="succeeded"} 1.0' in text
    assert "qanchor_tuning_jobs_running 0.0" in text and "job_id=" not in text

    def broken() -> Repository:
        raise OSError("database is gone")

    down = WorkerMetrics()
    down.watch_registry(broken)
    assert "qanchor_tuning_registry_up 0.0" in generate_latest(down.registry).decode()  # a scrape never fails
