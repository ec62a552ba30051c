"""The tuning job as a plain function: labels -> users' inputs -> serving model -> tune -> artifact -> registry.

    version = run_tuning_job(job, repo, settings, models, progress)   # -> PromptVersionRecord (READY)
    # = tune_to_artifact(...) (no registry: a Kubernetes tuning pod runs just this) + record_outcome(repo, ...)

No Celery here (tasks.py is the thin wrapper), so tests call it directly. Errors a user can fix raise `JobError`
(or the data/artifact errors below) with a message that is written verbatim to the job row.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.common.files import sha256_file
from services.common.validation import validate_scenario_name
from services.registry.domain import JobState, PromptVersionRecord, TuningJobRecord
from services.registry.repository import Repository
from services.tuning.dataset import DatasetError, TuningData, local_path, model_arrays
from services.tuning.settings import TuningSettings

if TYPE_CHECKING:
    from training.config import TuneConfig

log = logging.getLogger(__name__)

# (fraction done 0..1, short message, numbers for update_state meta)
Progress = Callable[[float, str, dict[str, float]], None]
MODELS_SUBDIR = Path("qanchor") / "1" / "models"  # training.export's layout inside the Triton repository


class JobError(RuntimeError):
    """The job cannot run as requested; the message (written to the job row) says what to change."""


def resolve_tune_params(defaults: "TuneConfig", params: dict[str, str]) -> "TuneConfig":
    """The serving model's own `tune` config section (training.config.TuneConfig) with a job's params (strings)
    over it: the same dataclass, so its ranges are checked in one place."""
    from training.config import ConfigError, TuneConfig

    names = {f.name: f.type for f in fields(TuneConfig)}
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise JobError(f"unknown tuning params {unknown}; valid: {sorted(names)}")
    values: dict[str, Any] = {n: getattr(defaults, n) for n in names}
    for key, raw in params.items():
        if names[key] == "str":
            values[key] = raw
            continue
        kind = int if names[key] == "int" else float
        try:
            values[key] = kind(raw)
        except ValueError:
            raise JobError(f"tuning param {key}={raw!r} is not a{'n int' if kind is int else ' number'}") from None
    try:
        return TuneConfig(**values)
    except ConfigError as exc:
        raise JobError(f"tuning params rejected: {exc}") from None


def resolve_model_dir(repository: Path, model_version: str) -> tuple[str, Path]:
    """-> (model version, its serving artifact folder). "" = the default version (first in config.pbtxt)."""
    versions_dir = Path(repository) / MODELS_SUBDIR
    if not model_version:
        from training.export.contract import MODEL_NAME, model_versions, read_model_config

        cfg = Path(repository) / MODEL_NAME / "config.pbtxt"
        listed = model_versions(read_model_config(cfg)) if cfg.is_file() else []
        if not listed:
            raise JobError(f"no model version given and {cfg} lists none; export a model (python -m "
                           "training.export) or pass model_version")
        model_version = listed[0]
    if "/" in model_version or model_version.startswith("."):
        raise JobError(f"model version {model_version!r} is not a valid version name")
    folder = versions_dir / model_version
    if not folder.is_dir():
        have = sorted(p.name for p in versions_dir.iterdir() if p.is_dir()) if versions_dir.is_dir() else []
        raise JobError(f"model version {model_version!r} is not in {versions_dir} (have {have}); export it first "
                       "or set TUNING_MODEL_REPOSITORY to Triton's model repository")
    return model_version, folder


class ModelCache:
    """The last serving model loaded, kept across jobs (loading SmolLM2 takes seconds; a GPU worker reuses it)."""

    def __init__(self, device: str = "auto") -> None:
        self.device = device
        self._key: tuple[str, float] | None = None
        self._loaded: Any = None
        self._lock = threading.Lock()

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def get(self, folder: Path) -> Any:
        from training.export.artifact import load_model_artifact

        manifest = folder / "manifest.json"
        key = (str(folder.resolve()), manifest.stat().st_mtime if manifest.exists() else 0.0)  # re-export = reload
        with self._lock:
            if key != self._key:
                self._loaded = None  # free the old model before loading the next one
                self._loaded = load_model_artifact(folder, device=self.resolved_device())
                self._key = key
            return self._loaded


def snapshot_csv(path: Path, settings: TuningSettings, out: Path) -> Path:
    """Read the CSV's labelled users' features into a snapshot .npz (services env): from the online store, or, for
    labels with an `as_of` column, rebuilt from the event log as of each row's time."""
    python = settings.features_python
    if python is None or not Path(python).exists():
        raise JobError("a CSV labels file needs the users' features from the online store, and this worker has no "
                       "Feast interpreter (TUNING_FEATURES_PYTHON); make a snapshot with python -m "
                       "services.tuning.snapshot in the services image and pass the .npz as labels_uri")
    # the log, encoder and constants are read only for labels as of a time (an `as_of` column)
    cmd = [str(python), "-m", "services.tuning.snapshot", "--labels", str(path), "--out", str(out),
           "--feast-config", str(settings.resolved_feast_config()),
           "--log-root", str(settings.resolved_event_log_dir()), "--triton-url", settings.resolved_triton_url(),
           "--normalisation", str(settings.resolved_normalisation())]
    env = {**os.environ, "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise JobError(f"reading features for {path.name} failed (exit {proc.returncode}): {' | '.join(tail)}")
    return out


def load_job_data(labels_uri: str, settings: TuningSettings, workdir: Path) -> TuningData:
    """A snapshot (.npz) is read as is; a CSV is turned into one through the services env (Feast)."""
    path = local_path(labels_uri)
    if path.suffix == ".npz":
        return TuningData.load(path)
    if path.suffix != ".csv":
        raise JobError(f"labels_uri {labels_uri!r}: give a .csv (user_id,label) or a snapshot .npz")
    return TuningData.load(snapshot_csv(path, settings, workdir / "snapshot.npz"))


def _user_batch(data: TuningData, cfg: Any, device: str) -> Any:
    import torch

    from training.model.inputs import UserBatch

    sources = {s.name: s.k for s in cfg.input.sources}
    vecs, mask, tab = model_arrays(data, sources, cfg.input.d_enc, cfg.input.d_tab)
    return UserBatch({k: torch.from_numpy(v) for k, v in vecs.items()},
                     {k: torch.from_numpy(m) for k, m in mask.items()}, torch.from_numpy(tab)).to(device)


def write_prompt(result: Any, scenario_dir: Path, job_id: str, model_id: str,
                 extra: dict[str, Any]) -> tuple[Path, str]:
    """Save the prompt under <scenario_dir>/<job_id>-<sha12>/ and return (prompt.safetensors path, sha256).

    Content-addressed on purpose: a redelivered job that tunes again never overwrites a file the registry already
    points at (its sha256 would stop matching); identical content lands in the same folder.
    """
    from training.artifacts import save_soft_prompt

    scenario_dir.mkdir(parents=True, exist_ok=True)
    staging = scenario_dir / f".staging-{job_id}-{os.getpid()}-{threading.get_ident()}"
    save_soft_prompt(staging, result, model_id=model_id, extra=extra)
    sha = sha256_file(staging / "prompt.safetensors")
    final = scenario_dir / f"{job_id}-{sha[:12]}"
    if final.exists():
        shutil.rmtree(staging)
    else:
        staging.rename(final)
    return final / "prompt.safetensors", sha


@dataclass(frozen=True)
class TuneOutcome:
    """What a tuning run leaves: the artifact on disk and what the registry records about it."""

    artifact_path: Path
    sha256: str
    metrics: dict[str, float]
    model_version: str

    def to_json(self) -> dict[str, Any]:
        return {"artifact_uri": self.artifact_path.resolve().as_uri(), "sha256": self.sha256,
                "metrics": self.metrics, "model_version": self.model_version}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TuneOutcome":
        try:
            return cls(local_path(str(data["artifact_uri"])), str(data["sha256"]),
                       {k: float(v) for k, v in dict(data["metrics"]).items()}, str(data["model_version"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise JobError(f"the tuning result is incomplete or malformed ({exc!r}): {str(data)[:300]}") from None


def fit_to_memory(data: TuningData, loaded: Any, settings: TuningSettings, seed: int) -> TuningData:
    """`data`, or a stratified seeded sample of it whose prefix caches fit TUNING_MAX_CACHE_MB (the bytes per user
    measured by encoding one user with the job's model and precision). Fewer than TUNING_MIN_USERS fitting is a
    JobError that says what to raise."""
    from training.tune import prefix_bytes_per_user, stratified_sample

    if not settings.max_cache_mb:
        return data
    per_user = prefix_bytes_per_user(loaded.model, _user_batch(data.take([0]), loaded.cfg, str(loaded.model.device)))
    fits = int(settings.max_cache_mb * 2**20 // per_user)
    if len(data.user_ids) <= fits:
        return data
    if fits < settings.min_users:
        raise JobError(f"TUNING_MAX_CACHE_MB={settings.max_cache_mb:g} holds {fits} users' prefix caches "
                       f"({per_user / 2**20:.2f} MiB each), fewer than TUNING_MIN_USERS={settings.min_users}; "
                       "raise TUNING_MAX_CACHE_MB")
    keep = stratified_sample(data.labels, fits, seed)
    log.warning("tuning on a stratified sample: the labelled users' prefix caches exceed TUNING_MAX_CACHE_MB",
                extra={"event": "tune_users_capped", "with_features": len(data.user_ids), "used": len(keep),
                       "max_cache_mb": settings.max_cache_mb, "mib_per_user": round(per_user / 2**20, 4)})
    return data.take(keep)


def tune_to_artifact(job_id: str, scenario: str, query: str, labels_uri: str, model_version: str,
                     params: dict[str, str], settings: TuningSettings, models: ModelCache,
                     progress: Progress) -> TuneOutcome:
    """Labels -> features -> the serving model -> tuned prompt -> artifact folder. No registry access: this is
    also what a Kubernetes tuning pod runs (services.tuning.pod)."""
    from training.tune import tune_soft_prompt

    scenario = validate_scenario_name(scenario)
    with tempfile.TemporaryDirectory(prefix=f"qanchor-tune-{job_id[:8]}-") as tmp:
        progress(0.02, "reading labels and features", {})
        data = load_job_data(labels_uri, settings, Path(tmp))
    n_missing = int(data.meta.get("n_missing", 0))
    if len(data.user_ids) < settings.min_users:
        raise JobError(f"only {len(data.user_ids)} labelled users have features ({n_missing} unknown to the online "
                       f"store); tuning needs at least {settings.min_users}")
    model_version, folder = resolve_model_dir(settings.resolved_model_repository(), model_version)
    progress(0.05, f"loading model {model_version}", {"users": float(len(data.user_ids))})
    loaded = models.get(folder)
    p = resolve_tune_params(loaded.cfg.tune, params)
    n_features = len(data.user_ids)  # the labelled users the store knows (the snapshot's n_labelled - n_missing)
    data = fit_to_memory(data, loaded, settings, p.seed)
    users = _user_batch(data, loaded.cfg, str(loaded.model.device))
    used = (f"{len(data.user_ids)} of {n_features} labelled users with features (a stratified sample: "
            f"TUNING_MAX_CACHE_MB={settings.max_cache_mb:g} holds that many prefix caches; raise it where memory "
            f"allows)" if len(data.user_ids) < n_features else f"{n_features} users")
    progress(0.10, f"tuning {p.steps} steps on {used}", {})

    def on_step(step: int, total: int, stats: dict[str, float]) -> None:
        progress(0.10 + 0.85 * step / total, f"step {step}/{total}", {**stats, "total": float(total)})

    try:
        result = tune_soft_prompt(loaded.model, users, data.labels, query, n_tokens=p.n_tokens,
                                  steps=p.steps, lr=p.lr, tau=p.tau, seed=p.seed,
                                  val_fraction=p.val_fraction, batch_size=p.batch_size,
                                  eval_every=max(1, p.steps // 5), progress=on_step, objective=p.objective,
                                  anchor_weight=p.anchor_weight, min_val_gain=p.min_val_gain,
                                  verdict_fraction=p.verdict_fraction)
    except ValueError as exc:  # tune_soft_prompt's data complaints (one class, too few users per class)
        raise JobError(f"cannot tune on these labels: {exc}") from None
    metrics = {**{k: float(v) for k, v in result.metrics.items()}, "n_missing": float(n_missing),
               "steps": float(p.steps), "n_users": float(len(data.user_ids)),
               "n_labelled": float(n_features + n_missing)}  # as the snapshot's meta counts them
    scenario_dir = settings.resolved_artifact_dir() / "prompts" / scenario
    extra = {"job_id": job_id, "scenario": scenario, "model_version": model_version,
             "params": {f.name: getattr(p, f.name) for f in fields(p)}}
    path, sha = write_prompt(result, scenario_dir, job_id, loaded.source_id, extra)
    return TuneOutcome(path, sha, metrics, model_version)


def record_outcome(repo: Repository, job_id: str, outcome: TuneOutcome) -> PromptVersionRecord:
    """Register the outcome as the job's TUNED prompt version (idempotent per job)."""
    from services.common.errors import FailedPrecondition
    from services.tuning.control import JobCancelled

    path, sha = outcome.artifact_path, outcome.sha256
    try:
        version = repo.complete_tuning_job(job_id, artifact_uri=path.resolve().as_uri(), sha256=sha,
                                           metrics=outcome.metrics, model_version=outcome.model_version)
    except FailedPrecondition:
        job = repo.get_tuning_job(job_id)
        if job.state is JobState.CANCELLED:  # cancelled while it ran: its result is not wanted
            shutil.rmtree(path.parent, ignore_errors=True)
            raise JobCancelled(job_id) from None
        raise
    if version.sha256 != sha:  # an earlier delivery of this job already registered its own artifact
        log.warning("job already completed by an earlier delivery; dropping this run's artifact",
                    extra={"job_id": job_id, "version": version.version, "kept": version.sha256[:12]})
        if path.parent.name != Path(version.artifact_uri).parent.name:
            shutil.rmtree(path.parent, ignore_errors=True)
    log.info("tuning job done", extra={"job_id": job_id, "scenario": version.scenario, "version": version.version,
                                       "auc": round(outcome.metrics.get("auc", float("nan")), 4),
                                       "ks": round(outcome.metrics.get("ks", float("nan")), 4),
                                       "probe_auc": round(outcome.metrics.get("probe_auc", float("nan")), 4),
                                       "probe_auc_zero_shot": round(outcome.metrics.get("probe_auc_zero_shot",
                                                                                        float("nan")), 4),
                                       "model_version": outcome.model_version, "sha256": sha[:12]})
    return version


def run_tuning_job(job: TuningJobRecord, repo: Repository, settings: TuningSettings, models: ModelCache,
                   progress: Progress) -> PromptVersionRecord:
    query = repo.get_scenario(validate_scenario_name(job.scenario)).query_text
    outcome = tune_to_artifact(job.job_id, job.scenario, query, job.labels_uri, job.model_version, job.params,
                               settings, models, progress)
    progress(0.97, "registering prompt version", {})
    return record_outcome(repo, job.job_id, outcome)


__all__ = ["JobError", "DatasetError", "ModelCache", "TuneOutcome", "resolve_tune_params", "resolve_model_dir",
           "run_tuning_job", "tune_to_artifact", "record_outcome", "write_prompt", "load_job_data"]
