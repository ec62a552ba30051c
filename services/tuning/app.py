"""The Celery app of the tuning worker: `celery -A services.tuning.app worker ...` or `python -m services.tuning`.

Configuration is lazy: nothing reads the environment at import time. `python -m services.tuning` builds the
settings once and calls `configure`; a bare `celery -A services.tuning.app` (docker-compose, Helm) builds them from
the TUNING_* environment the first time the app's config is read.

Delivery semantics (a job runs minutes to hours, and must neither be lost nor run twice at once):
- `task_acks_late` + `task_reject_on_worker_lost`: the message is acknowledged only after the task returns, so a
  worker killed mid-job (OOM, node drain) leaves it on the broker and another worker gets it;
- prefetch 1: a busy worker does not sit on queued jobs that an idle one could run;
- Redis `visibility_timeout` above `max_job_s`: Redis re-delivers unacknowledged messages after that timeout,
  even to a healthy worker still running them (Celery's default is 1 h);
- the task re-reads the job row and the registry's completion is idempotent, so a redelivery is harmless.
"""
from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from services.registry.enqueue import TUNE_TASK
from services.tuning.settings import TuningSettings

app = Celery("qanchor.tuning", include=["services.tuning.tasks"])
_settings: TuningSettings | None = None


def settings() -> TuningSettings:
    """The worker's settings: those given to `configure`, else built once from the environment."""
    global _settings
    if _settings is None:
        _settings = TuningSettings()
    return _settings


def celery_config(s: TuningSettings) -> dict[str, Any]:
    transport = {"visibility_timeout": s.visibility_timeout_s}
    queue = s.queue or "celery"
    return {
        "broker_url": s.resolved_broker_url(),
        "result_backend": s.resolved_result_backend(),
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": queue,
        "task_routes": {TUNE_TASK: {"queue": queue}},
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # If the broker connection drops, a late-acked task will be re-delivered: stop running our copy.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_track_started": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_expires": 7 * 24 * 3600,
        "worker_hijack_root_logger": False,
        # Enforced by Celery only in a prefork pool; the threads pool relies on control.py (same values).
        "task_soft_time_limit": s.resolved_soft_time_limit_s(),
        "task_time_limit": s.resolved_time_limit_s(),
    }


def configure(s: TuningSettings) -> Celery:
    """Use these settings (call before the app's config is first read, i.e. before starting the worker)."""
    global _settings
    _settings = s
    app.conf.update(celery_config(s))
    return app


app.add_defaults(lambda: celery_config(settings()))


@signals.setup_logging.connect
def _logging(loglevel: Any = None, **_: Any) -> None:
    # Connected: Celery leaves logging to us, so worker lines are key=value like every other service.
    from services.common.logging import setup_logging

    level = settings().log_level
    setup_logging("tuning", level)
    logging.getLogger("celery").setLevel(level)


_metrics_repo: dict[str, Any] = {}


def _metrics_repository() -> Any:
    # One Repository for /metrics scrapes (jobs by state), made on the first scrape.
    if "repo" not in _metrics_repo:
        from services.registry.db import Database
        from services.registry.repository import Repository

        _metrics_repo["repo"] = Repository(Database(settings().resolved_database_url()))
    return _metrics_repo["repo"]


@signals.worker_init.connect
def _preload(**_: Any) -> None:
    # Import torch, the model code and the repository at start-up, not inside the first job: a broken install
    # fails the worker at once (visible to the liveness probe), and the first job is not slowed by imports.
    # A Kubernetes-backend worker runs no model: it needs neither torch nor a GPU (it may run the services image).
    from services.registry import repository  # noqa: F401
    from services.tuning.metrics import METRICS

    s = settings()
    extra: dict[str, Any] = {"backend": s.backend}
    if s.backend == "local":
        import torch

        import training.export.artifact  # noqa: F401
        import training.tune  # noqa: F401

        extra.update(cuda=torch.cuda.is_available(), device=s.device)
    else:
        from services.tuning import on_kubernetes  # noqa: F401
    if s.resolved_metrics_port():
        METRICS.watch_registry(_metrics_repository)
        try:
            METRICS.serve(s.metrics_host, s.resolved_metrics_port())
        except OSError as exc:
            logging.getLogger(__name__).error("tuning metrics not served", extra={
                "error": str(exc), "hint": "port in use: set TUNING_METRICS_PORT (0 = off) or another "
                                           "QANCHOR_PORT_BASE"})
    logging.getLogger(__name__).info("tuning worker preloaded", extra={
        **extra, "queue": s.queue or "celery", "model_repository": str(s.resolved_model_repository()),
        "artifact_dir": str(s.resolved_artifact_dir()), "soft_time_limit_s": s.resolved_soft_time_limit_s(),
        "time_limit_s": s.resolved_time_limit_s()})
