"""Tuning worker settings (env prefix TUNING_), built once in __main__ (or lazily by `celery -A services.tuning.app`).

The names TUNING_BROKER_URL, TUNING_DATABASE_URL and TUNING_ARTIFACT_DIR are the ones docker-compose.yml and the
Helm chart set; keep them stable.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings, repo_root


def _services_python() -> Path | None:
    # The local checkout's services env can read Feast; containers have none (they tune from snapshots).
    candidate = repo_root() / ".venv" / "bin" / "python"
    return candidate if candidate.exists() else None


class TuningSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TUNING_", extra="ignore", frozen=True)

    # Celery broker the registry publishes to (REGISTRY_CELERY_BROKER); None = the local stack's Redis, db 1.
    broker_url: str | None = None
    # Where update_state progress and task results go; None = same as the broker.
    result_backend: str | None = None
    # Queue to consume (the registry's REGISTRY_TUNING_QUEUE); None = Celery's default queue "celery".
    queue: str | None = None
    # The registry database (REGISTRY_DATABASE_URL): tasks carry only a job id and re-read the job row.
    database_url: str | None = None
    # Root of written artifacts; prompts go to <artifact_dir>/prompts/<scenario>/<job_id>-<sha12>/. Triton must
    # see the same path (shared volume), because the registry stores the absolute file:// URI.
    artifact_dir: Path | None = None
    # Triton model repository holding the serving model versions (training.export writes it): the worker tunes
    # against exactly the weights Triton serves.
    model_repository: Path | None = None
    # Interpreter with Feast (the services env) used to read labelled users' features for a CSV labels file;
    # None = only feature snapshots (.npz) are accepted (the model image has no Feast).
    features_python: Path | None = Field(default_factory=_services_python)
    # feature_store.yaml for that read; None = $QANCHOR_STATE_DIR/feast/feature_store.yaml.
    feast_config: Path | None = None
    # Labels as of a time (an `as_of` column in the CSV) read the users' events from the offline event log instead
    # and rebuild their rows as ingest did, which needs what ingest had: the log (None = QANCHOR_EVENT_LOG_DIR, else
    # $QANCHOR_STATE_DIR/eventlog), Triton's text encoder (None = the local stack's Triton, QANCHOR_PORT_BASE+1) and
    # the served model's normalisation constants (ingest's INGEST_NORMALISATION; None = normalisation.json in the
    # model repository's qanchor folder, where the stack exports it).
    event_log_dir: Path | None = None
    triton_url: str | None = None
    normalisation: Path | None = None
    # Longest job expected, seconds. Redis re-delivers an unacked task after the visibility timeout, which is
    # set above this so a running job is never handed to a second worker.
    max_job_s: int = 4 * 3600
    # torch device: "auto" = cuda when available, else cpu.
    device: str = "auto"
    # torch intra-op threads; 0 = torch's default (all cores).
    torch_threads: int = 0
    # Seconds between progress writes to the job row (every step would hammer the database on a GPU).
    progress_every_s: float = 2.0
    # Fewest labelled users with features a job accepts (AUC on a handful of users is noise).
    min_users: int = 8
    # Memory for the labelled users' prefix caches, MiB (the frozen prefix is encoded once and kept for every
    # step: ~3.7 MB per user in fp32, half in bf16, with the default model). A job with more labelled users than fit
    # tunes on a stratified, seeded sample of them and says so (message, metrics n_users / n_labelled); 0 = no cap.
    max_cache_mb: float = Field(default=8192, ge=0)
    # Where a job runs: "local" = in this worker (torch, the GPU it has); "kubernetes" = as a Kubernetes Job per
    # tuning job, created, watched and cancelled by this worker (services/kube, QANCHOR_KUBE_* settings); the
    # worker itself then needs neither torch nor a GPU.
    backend: Literal["local", "kubernetes"] = "local"
    # Soft time limit, seconds: the job fails ("time limit") at its next progress step after this; a Kubernetes
    # Job is deleted. Hard limit: a local job still running is failed and the worker process exits (its
    # supervisor restarts it: the threads pool cannot stop a thread); a Kubernetes Job gets it as
    # activeDeadlineSeconds. Celery's own task_soft_time_limit/task_time_limit are set to the same values (they
    # act only in a prefork pool).
    # None = derived from max_job_s: soft = 7/8 of it, hard = max_job_s.
    soft_time_limit_s: int | None = None
    time_limit_s: int | None = None
    # /metrics (Prometheus) of the worker: jobs by state, durations. Port None = QANCHOR_PORT_BASE+62, 0 = off.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None

    @model_validator(mode="after")
    def _limits(self) -> "TuningSettings":
        soft, hard = self.resolved_soft_time_limit_s(), self.resolved_time_limit_s()
        if not 0 < soft < hard:
            raise ValueError(f"need 0 < soft time limit ({soft} s) < hard time limit ({hard} s): the soft limit lets "
                             "a job fail cleanly before the hard one (TUNING_SOFT_TIME_LIMIT_S, TUNING_TIME_LIMIT_S)")
        if hard > self.max_job_s:
            raise ValueError(f"TUNING_TIME_LIMIT_S ({hard}) exceeds TUNING_MAX_JOB_S ({self.max_job_s}), which sets "
                             "the broker's visibility timeout: raise TUNING_MAX_JOB_S too")
        return self

    def resolved_time_limit_s(self) -> int:
        return self.time_limit_s or self.max_job_s

    def resolved_soft_time_limit_s(self) -> int:
        return self.soft_time_limit_s or self.resolved_time_limit_s() * 7 // 8

    def resolved_metrics_port(self) -> int:
        return self.port("tuning_metrics") if self.metrics_port is None else self.metrics_port

    def resolved_broker_url(self) -> str:
        return self.broker_url or f"redis://127.0.0.1:{self.port('redis')}/1"

    def resolved_result_backend(self) -> str:
        return self.result_backend or self.resolved_broker_url()

    def resolved_database_url(self) -> str:
        # Same default as the registry (RegistrySettings.resolved_database_url), so a local stack needs no setup.
        return self.database_url or f"sqlite:///{self.state_dir / 'registry' / 'registry.db'}"

    def resolved_artifact_dir(self) -> Path:
        return Path(self.artifact_dir or self.state_dir / "artifacts")

    def resolved_model_repository(self) -> Path:
        return Path(self.model_repository or self.state_dir / "model_repository")

    def resolved_feast_config(self) -> Path:
        return Path(self.feast_config or self.state_dir / "feast" / "feature_store.yaml")

    def resolved_event_log_dir(self) -> Path:
        from services.eventlog.settings import EventLogSettings  # where the eventlog service writes: one rule

        return Path(self.event_log_dir or EventLogSettings().resolved_root())

    def resolved_triton_url(self) -> str:
        return self.triton_url or f"127.0.0.1:{self.port('triton_grpc')}"

    def resolved_normalisation(self) -> Path:
        return Path(self.normalisation or self.resolved_model_repository() / "qanchor" / "normalisation.json")

    @property
    def visibility_timeout_s(self) -> int:
        return int(self.max_job_s * 1.5) + 600
