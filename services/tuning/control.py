"""Stopping a running tuning job: cancellation (CancelTuningJob) and the soft/hard time limits.

Celery's own time limits act only in a prefork pool, and the worker runs the threads pool (CUDA does not survive
fork), so the worker enforces them itself:

- `JobControl.check()` is called at every progress step (each optimiser step of a local job, each watch tick of
  a Kubernetes Job). It raises `JobCancelled` when the job row says CANCELLED (read at most every `every_s`),
  and `TimeLimitExceeded` past the soft limit: the job fails cleanly, with a message saying which limit to raise.
- `HardLimit` is a timer for code that never reaches a progress step (a hung read, a stuck kernel). When it fires
  the job is marked FAILED and `on_expire` runs: the worker process exits (its supervisor restarts it), because
  a Python thread cannot be stopped from outside. Kubernetes Jobs get the hard limit as activeDeadlineSeconds.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from services.registry.domain import JobState

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """The job was cancelled through the registry; its row already says CANCELLED."""


class TimeLimitExceeded(RuntimeError):
    """The job ran past its soft time limit; the message says which setting to raise."""


class JobControl:
    def __init__(self, repo: Any, job_id: str, soft_limit_s: float, every_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.repo, self.job_id = repo, job_id
        self.soft_limit_s, self.every_s = soft_limit_s, every_s
        self.clock = clock
        self.started = clock()
        self._last_read = float("-inf")

    @property
    def elapsed_s(self) -> float:
        return self.clock() - self.started

    def check(self) -> None:
        if self.elapsed_s > self.soft_limit_s:
            raise TimeLimitExceeded(
                f"soft time limit of {self.soft_limit_s:.0f} s exceeded after {self.elapsed_s:.0f} s; lower the "
                "job's steps, or raise TUNING_SOFT_TIME_LIMIT_S / TUNING_TIME_LIMIT_S (and TUNING_MAX_JOB_S)")
        now = self.clock()
        if now - self._last_read < self.every_s:
            return
        self._last_read = now
        if self.repo.get_tuning_job(self.job_id).state is JobState.CANCELLED:
            raise JobCancelled(self.job_id)


class HardLimit:
    """A timer: after `seconds`, mark the job FAILED and call `on_expire` (default: exit the process)."""

    def __init__(self, repo: Any, job_id: str, seconds: float, on_expire: Callable[[], None]) -> None:
        self.repo, self.job_id, self.seconds, self.on_expire = repo, job_id, seconds, on_expire
        self.fired = threading.Event()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> HardLimit:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def _fire(self) -> None:
        self.fired.set()
        message = (f"hard time limit of {self.seconds:.0f} s exceeded: the job did not reach a progress step to "
                   "stop at; the worker process exits so that its supervisor restarts it. Raise "
                   "TUNING_TIME_LIMIT_S (and TUNING_MAX_JOB_S) if the job needs longer")
        log.error("tuning job hit the hard time limit", extra={"job_id": self.job_id, "seconds": self.seconds})
        try:
            job = self.repo.get_tuning_job(self.job_id)
            if not job.state.terminal:
                self.repo.update_tuning_job(self.job_id, state=JobState.FAILED, message=message)
        except Exception:  # noqa: BLE001 - the exit below must happen whatever the database says
            log.exception("could not mark the job FAILED at the hard time limit", extra={"job_id": self.job_id})
        self.on_expire()
