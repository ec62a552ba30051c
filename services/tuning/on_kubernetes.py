"""A registry tuning job run as a Kubernetes Job (TUNING_BACKEND=kubernetes): the worker creates, watches and,
on cancellation or the soft time limit, deletes it; it records the result in the registry. The pod runs
`python -m services.tuning.pod` (tune_to_artifact, no registry access) on a GPU node.

    labels CSV -> snapshot .npz on the artifacts volume (this worker has Feast) -> Job qanchor-tune-<job id>
      -> watch: PENDING -> RUNNING (progress from the pod's log lines) -> SUCCEEDED
      -> the pod's termination message {artifact_uri, sha256, metrics, model_version}
      -> sha256 checked on the shared volume -> registry.complete_tuning_job

The Job is named after the registry job id, so a redelivered task adopts the running Job instead of starting
a second one. Its hard limit is the Job's activeDeadlineSeconds (the Job controller stops the pod).
"""
from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from services.common.files import sha256_file
from services.common.errors import QAnchorError
from services.common.validation import validate_scenario_name
from services.kube.backend import KubeJobBackend, Phase
from services.kube.manifests import TuningJobSpec, tuning_job
from services.kube.settings import KubeJobSettings
from services.registry.domain import JobState, PromptVersionRecord, TuningJobRecord
from services.registry.repository import Repository
from services.tuning.control import JobCancelled, JobControl, TimeLimitExceeded
from services.tuning.dataset import local_path
from services.tuning.jobs import JobError, Progress, TuneOutcome, record_outcome, snapshot_csv
from services.tuning.pod import parse_progress
from services.tuning.settings import TuningSettings

log = logging.getLogger(__name__)


def kube_settings_for(settings: TuningSettings, kube: KubeJobSettings | None = None) -> KubeJobSettings:
    """QANCHOR_KUBE_* settings, with this worker's artifacts dir as the local view of the pods' volume."""
    kube = kube or KubeJobSettings()
    if kube.local_artifacts_dir is None:
        kube = kube.model_copy(update={"local_artifacts_dir": settings.resolved_artifact_dir()})
    return kube


def prepare_labels(job: TuningJobRecord, settings: TuningSettings, kube: KubeJobSettings) -> Path:
    """The labels as the pod will read them: a snapshot .npz on the artifacts volume (pod path)."""
    path = local_path(job.labels_uri)
    if path.suffix == ".csv":
        out = settings.resolved_artifact_dir() / "snapshots" / f"{job.job_id}.npz"
        out.parent.mkdir(parents=True, exist_ok=True)
        path = snapshot_csv(path, settings, out)
    elif path.suffix != ".npz":
        raise JobError(f"labels_uri {job.labels_uri!r}: give a .csv (user_id,label) or a snapshot .npz")
    if not path.is_file():
        raise JobError(f"labels file {path} not found; put it on the artifacts volume ({kube.local_artifacts_dir})")
    try:
        return kube.to_pod_path(path)
    except ValueError:
        raise JobError(f"{path} is not on the artifacts volume ({kube.local_artifacts_dir}): the tuning pod could "
                       "not read it; copy it there (e.g. <artifacts>/labels/) and pass that path") from None


class LogFollower:
    """Follows the pod's log in a thread and keeps its newest progress line. Best effort: without a kubelet (or
    before the pod runs) logs are unavailable and progress comes from the Job status alone."""

    def __init__(self, backend: KubeJobBackend, name: str, retry_s: float) -> None:
        self.backend, self.name, self.retry_s = backend, name, retry_s
        self.latest: tuple[float, str, dict[str, float]] | None = None
        self.unavailable = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"logs-{name}", daemon=True)

    def start(self) -> None:
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for line in self.backend.stream_logs(self.name):
                    parsed = parse_progress(line)
                    if parsed is not None:
                        self.latest = parsed
                    if self._stop.is_set():
                        return
                return  # the container ended
            except QAnchorError as exc:
                if str(exc) != self.unavailable:
                    log.info("pod logs not available (yet)", extra={"job": self.name, "reason": str(exc)[:200]})
                self.unavailable = str(exc)
            self._stop.wait(self.retry_s)


def run_on_kubernetes(job: TuningJobRecord, repo: Repository, settings: TuningSettings, backend: KubeJobBackend,
                      progress: Progress, control: JobControl,
                      on_submitted: Callable[[str], None] | None = None) -> PromptVersionRecord:
    kube = backend.settings
    scenario = validate_scenario_name(job.scenario)
    query = repo.get_scenario(scenario).query_text
    progress(0.02, "preparing labels for the Kubernetes Job", {})
    labels = prepare_labels(job, settings, kube)
    spec = TuningJobSpec(job_id=job.job_id, scenario=scenario, query=query, labels_path=labels,
                         model_version=job.model_version, params=dict(job.params),
                         submitted_by=f"tuning-worker@{socket.gethostname()}",
                         active_deadline_s=settings.resolved_time_limit_s())
    status = backend.submit(tuning_job(kube, spec))
    name = status.name
    if on_submitted:
        on_submitted(name)
    where = f"Kubernetes Job {backend.namespace}/{name}"
    progress(0.05, f"{where} submitted", {})
    follower = LogFollower(backend, name, retry_s=kube.poll_s)
    try:
        for status in backend.watch(name, tick_s=kube.poll_s):
            control.check()
            if status.phase is Phase.RUNNING:
                follower.start()
                if follower.latest is not None:
                    fraction, message, stats = follower.latest
                    progress(0.08 + 0.87 * min(max(fraction, 0.0), 1.0), f"{message} ({where})", stats)
                else:
                    progress(0.08, f"running as {where}", {})
            elif status.phase is Phase.PENDING:
                progress(0.05, f"{where} waiting for a node", {})
            if status.terminal:
                break
    except (JobCancelled, TimeLimitExceeded):
        backend.cancel(name)  # delete with its pods; the registry row says why
        raise
    finally:
        follower.stop()
    if status.phase is Phase.CANCELLED:
        if repo.get_tuning_job(job.job_id).state is JobState.CANCELLED:
            raise JobCancelled(job.job_id)
        raise JobError(f"{where} was deleted before it finished (by someone else, or by its TTL); start a new job")
    if status.phase is Phase.FAILED:
        said = backend.failure_messages(name)
        raise JobError(f"{where} failed: {status.message or 'no reason given'}"
                       + (f"; {said[-1]}" if said else f"; see kubectl -n {backend.namespace} logs job/{name}"))
    data = backend.result(name)
    if "error" in data:
        raise JobError(f"{where}: {data['error']}")
    outcome = TuneOutcome.from_json(data)
    local = kube.to_local_path(outcome.artifact_path)
    if not local.is_file():
        raise JobError(f"{where} wrote {outcome.artifact_path}, which this worker cannot see at {local}: mount the "
                       "same artifacts volume (QANCHOR_KUBE_ARTIFACTS_CLAIM, TUNING_ARTIFACT_DIR)")
    if sha256_file(local) != outcome.sha256:
        raise JobError(f"{where} reported sha256 {outcome.sha256[:12]}... but {local} hashes differently; the "
                       "artifact was changed or is incomplete: start a new job")
    progress(0.97, "registering prompt version", {})
    return record_outcome(repo, job.job_id, outcome)
