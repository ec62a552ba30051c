"""Hand tuning jobs to the Celery tuning worker by task name (the worker lives in services/tuning)."""
from __future__ import annotations

import logging
from typing import Protocol

from services.common.errors import FailedPrecondition, Unavailable

log = logging.getLogger(__name__)

TUNE_TASK = "qanchor.tuning.tune_scenario"


class JobQueue(Protocol):
    def enqueue(self, job_id: str) -> None: ...


class CeleryJobQueue:
    """Publishes `qanchor.tuning.tune_scenario(job_id)`; the task re-reads the job row, so only the id travels."""

    def __init__(self, broker: str, queue: str | None = None, publish_timeout_s: float = 5.0) -> None:
        from celery import Celery  # imported lazily: only registries with tuning enabled need it loaded

        self.queue = queue
        self.publish_timeout_s = publish_timeout_s
        self.app = Celery("qanchor-registry", broker=broker, set_as_current=False)
        self.app.conf.broker_connection_timeout = publish_timeout_s
        self.app.conf.broker_connection_retry_on_startup = False

    def enqueue(self, job_id: str) -> None:
        options = {"queue": self.queue} if self.queue else {}
        try:
            self.app.send_task(
                TUNE_TASK, args=[job_id], task_id=job_id, **options,
                retry=True, retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5,
                                          "interval_max": self.publish_timeout_s},
            )
        except Exception as exc:  # kombu raises many transport-specific errors
            raise Unavailable(f"cannot reach the Celery broker to queue tuning job {job_id}: {exc}; "
                              "check REGISTRY_CELERY_BROKER and that the broker is running") from exc
        log.info("tuning task sent", extra={"job_id": job_id, "task": TUNE_TASK, "queue": self.queue or "default"})


class DisabledJobQueue:
    def enqueue(self, job_id: str) -> None:
        raise FailedPrecondition(
            "tuning is disabled on this registry: no Celery broker is configured; set REGISTRY_CELERY_BROKER "
            "(e.g. redis://host:6379/0) and restart the registry"
        )
