"""The Celery task: thin. Re-check the job row, mark it RUNNING, run the job where TUNING_BACKEND says (here:
jobs.run_tuning_job; or as a Kubernetes Job: on_kubernetes.run_on_kubernetes), report progress.

Idempotent on redelivery: a job already SUCCEEDED/FAILED/CANCELLED is skipped; a job found RUNNING is one whose
worker died (the visibility timeout exceeds any job), so it runs again (on Kubernetes: its Job is adopted); the
registry's completion returns the version an earlier delivery created instead of adding a second one.
Cancellation and the soft time limit are checked at every progress step (control.py); the hard limit is a timer.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError

from services.common.errors import FailedPrecondition, NotFound, QAnchorError
from services.registry.domain import JobState
from services.registry.enqueue import TUNE_TASK
from services.tuning.app import app, settings
from services.tuning.control import HardLimit, JobCancelled, JobControl, TimeLimitExceeded
from services.tuning.dataset import DatasetError
from services.tuning.jobs import JobError, ModelCache, run_tuning_job
from services.tuning.metrics import METRICS

log = logging.getLogger(__name__)
_runtime: dict[str, Any] = {}


def _repo_and_models() -> tuple[Any, ModelCache]:
    # Built on first use in the worker process (never at import, never before a fork).
    if not _runtime:
        from services.registry.db import Database
        from services.registry.repository import Repository

        s = settings()
        if s.torch_threads:
            import torch

            torch.set_num_threads(s.torch_threads)
        _runtime["repo"] = Repository(Database(s.resolved_database_url()))
        _runtime["models"] = ModelCache(s.device)
    return _runtime["repo"], _runtime["models"]


def _kube_backend() -> Any:
    if "kube" not in _runtime:
        from services.kube.backend import KubeJobBackend
        from services.tuning.on_kubernetes import kube_settings_for

        _runtime["kube"] = KubeJobBackend(kube_settings_for(settings()))
    return _runtime["kube"]


def _exit_worker() -> None:
    # The hard limit fired: this thread cannot stop the stuck one, so the process goes; the message is
    # acknowledged late, comes back after the restart, and is skipped because the job row now says FAILED.
    logging.shutdown()
    os._exit(75)


class Reporter:
    """Progress to Celery (`update_state`, every call) and to the job row (at most every `every_s`)."""

    def __init__(self, task: Any, repo: Any, job_id: str, every_s: float, control: JobControl | None = None) -> None:
        self.task, self.repo, self.job_id, self.every_s = task, repo, job_id, every_s
        self.control = control
        self._last = 0.0

    def __call__(self, fraction: float, message: str, stats: dict[str, float]) -> None:
        if self.control is not None:
            self.control.check()  # raises JobCancelled / TimeLimitExceeded: the job stops at this step
        METRICS.progress.labels(self.job_id).set(round(fraction, 4))
        meta = {"job_id": self.job_id, "progress": round(fraction, 4), "message": message, **stats}
        if self.task.request.id:  # called directly (tests, eager) there is no task id to report under
            self.task.update_state(state="PROGRESS", meta=meta)
        now = time.monotonic()
        if now - self._last >= self.every_s or fraction >= 0.95:
            self._last = now
            self.repo.update_tuning_job(self.job_id, progress=min(fraction, 0.99), message=message)


USER_ERRORS = (JobError, DatasetError, FailedPrecondition, NotFound)


@app.task(name=TUNE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=5)
def tune_scenario(self: Any, job_id: str) -> dict[str, Any]:
    repo, models = _repo_and_models()
    try:
        job = repo.get_tuning_job(job_id)
    except NotFound:
        log.warning("tuning task for an unknown job; dropped", extra={"job_id": job_id})
        return {"job_id": job_id, "state": "UNKNOWN", "skipped": True}
    if job.state.terminal:
        log.info("tuning job already finished; redelivery skipped", extra={"job_id": job_id, "state": job.state.value})
        METRICS.finished.labels("skipped").inc()
        return {"job_id": job_id, "state": job.state.value, "skipped": True, "prompt_version": job.prompt_version}
    if job.state is JobState.RUNNING:
        log.warning("tuning job was RUNNING: its worker died; running it again", extra={"job_id": job_id})
    s = settings()
    try:
        repo.update_tuning_job(job_id, state=JobState.RUNNING, progress=0.01,
                               message=f"running on {self.request.hostname or 'local'}"
                                       + (" (Kubernetes backend)" if s.backend == "kubernetes" else ""))
    except FailedPrecondition:  # cancelled between the read above and this write
        return {"job_id": job_id, "state": repo.get_tuning_job(job_id).state.value, "skipped": True}
    control = JobControl(repo, job_id, s.resolved_soft_time_limit_s(), every_s=min(s.progress_every_s, 2.0))
    reporter = Reporter(self, repo, job_id, s.progress_every_s, control)
    t0 = time.perf_counter()
    outcome = "failed"
    METRICS.started(job_id)
    try:
        if s.backend == "kubernetes":
            from services.tuning.on_kubernetes import run_on_kubernetes

            version = run_on_kubernetes(job, repo, s, _kube_backend(), reporter, control)
        else:
            with HardLimit(repo, job_id, s.resolved_time_limit_s(), _exit_worker):
                version = run_tuning_job(job, repo, s, models, reporter)
        outcome = "succeeded"
    except JobCancelled:
        outcome = "cancelled"
        log.info("tuning job cancelled; stopped", extra={"job_id": job_id})
        return {"job_id": job_id, "state": "CANCELLED"}
    except (TimeLimitExceeded, SoftTimeLimitExceeded) as exc:
        message = str(exc) if isinstance(exc, TimeLimitExceeded) else (
            f"soft time limit of {s.resolved_soft_time_limit_s()} s exceeded; lower steps or raise "
            "TUNING_SOFT_TIME_LIMIT_S")
        return _fail(self, repo, job_id, message)
    except USER_ERRORS as exc:
        return _fail(self, repo, job_id, str(exc))
    except QAnchorError as exc:  # e.g. the Kubernetes API refused or was unreachable: its message says why
        return _fail(self, repo, job_id, exc.message)
    except OperationalError as exc:  # the database went away: the job row cannot be trusted, try again later
        log.warning("database error during tuning; retrying", extra={"job_id": job_id, "error": str(exc)[:200]})
        raise self.retry(exc=exc, countdown=30)
    except Exception as exc:  # noqa: BLE001 - anything else is our bug: say so on the job, log the traceback once
        log.exception("tuning job crashed", extra={"job_id": job_id})
        return _fail(self, repo, job_id, f"internal error ({type(exc).__name__}: {exc}); see the tuning worker log "
                                          f"for job_id={job_id}")
    finally:
        METRICS.ended(job_id, outcome, time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    return {"job_id": job_id, "state": "SUCCEEDED", "prompt_version": version.version,
            "artifact_uri": version.artifact_uri, "sha256": version.sha256, "seconds": round(seconds, 2)}


def _fail(task: Any, repo: Any, job_id: str, message: str) -> dict[str, Any]:
    log.warning("tuning job failed", extra={"job_id": job_id, "reason": message[:300]})
    try:
        repo.update_tuning_job(job_id, state=JobState.FAILED, message=message[:2000])
    except FailedPrecondition:  # finished meanwhile by another delivery (or cancelled): its outcome stands
        pass
    except OperationalError as exc:
        raise task.retry(exc=exc, countdown=30)
    return {"job_id": job_id, "state": "FAILED", "message": message}
