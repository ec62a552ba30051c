"""The Kubernetes job backend: submit, watch, stream logs, read the result, cancel. Talks to a real API server.

    backend = KubeJobBackend(KubeJobSettings())
    status = backend.submit(job_manifest, service_manifest)    # 409 AlreadyExists -> the existing Job is adopted
    for status in backend.watch(status.name):                  # on every change, and every `poll_s` at least
        if status.terminal: break
    backend.result(status.name)                                 # the pod's termination message (JSON)
    backend.cancel(status.name)                                 # delete, propagationPolicy=Foreground

What the backend needs from RBAC (the chart's Role): jobs create/get/list/watch/delete, pods get/list/watch,
pods/log get, services create/get (only for multi-node pretraining). Nothing else, in one namespace.
Errors are services.common.errors exceptions whose message says what to do (e.g. which permission is missing).
"""
from __future__ import annotations

import enum
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from services.common.errors import (FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, QAnchorError,
                                    Unauthenticated, Unavailable)
from services.kube.manifests import owned_by
from services.kube.settings import KubeJobSettings

log = logging.getLogger(__name__)

IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"          # set on its pods by the Job controller
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
PROPAGATION = "Foreground"  # the Job stays visible (deletionTimestamp set) until its pods are gone


class Phase(str, enum.Enum):
    PENDING = "PENDING"      # created, no pod running yet (queued for a GPU, pulling the image)
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"  # being deleted, or gone

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED)


@dataclass(frozen=True)
class JobStatus:
    name: str
    phase: Phase
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    completions: int = 1
    message: str = ""
    uid: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    created: datetime | None = None
    started: datetime | None = None
    finished: datetime | None = None

    @property
    def terminal(self) -> bool:
        return self.phase.terminal

    def label(self, key: str) -> str:
        return dict(self.labels).get(key, "")


def _get(obj: Any, *path: str) -> Any:
    """obj.a.b or obj["a"]["b"] (client models and plain dicts alike); None when any step is missing."""
    for key in path:
        if obj is None:
            return None
        obj = obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
    return obj


def job_status(job: Any) -> JobStatus:
    """The backend's view of a batch/v1 Job object (a client model or the API's JSON as a dict)."""
    meta, status = _get(job, "metadata"), _get(job, "status")
    name = _get(meta, "name") or ""
    conditions = {(_get(c, "type")): c for c in (_get(status, "conditions") or []) if _get(c, "status") == "True"}
    message = ""
    if _get(meta, "deletion_timestamp") or _get(meta, "deletionTimestamp"):
        phase, message = Phase.CANCELLED, "deleted (cancelled); its pods are being removed"
    elif "Complete" in conditions or "SuccessCriteriaMet" in conditions:
        phase = Phase.SUCCEEDED
    elif "Failed" in conditions or "FailureTarget" in conditions:
        c = conditions.get("Failed") or conditions["FailureTarget"]
        phase, message = Phase.FAILED, f"{_get(c, 'reason') or 'Failed'}: {_get(c, 'message') or ''}".strip(": ")
    elif (_get(status, "active") or 0) > 0 or (_get(status, "ready") or 0) > 0:
        phase = Phase.RUNNING
    else:
        phase = Phase.PENDING
    spec = _get(job, "spec")
    return JobStatus(
        name=name, phase=phase, active=_get(status, "active") or 0, succeeded=_get(status, "succeeded") or 0,
        failed=_get(status, "failed") or 0, completions=_get(spec, "completions") or 1, message=message,
        uid=_get(meta, "uid") or "", labels=tuple(sorted((_get(meta, "labels") or {}).items())),
        created=_get(meta, "creation_timestamp"), started=_get(status, "start_time"),
        finished=_get(status, "completion_time"),
    )


def _api_error(exc: Any, action: str) -> QAnchorError:
    """An ApiException as a typed error whose message says what to do next."""
    status = getattr(exc, "status", 0)
    try:
        detail = json.loads(exc.body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        detail = getattr(exc, "reason", "") or str(exc)
    if status == 401:
        return Unauthenticated(f"{action}: the API server rejected the credentials ({detail}); check the kubeconfig "
                               "or the pod's ServiceAccount token (QANCHOR_KUBE_KUBECONFIG)")
    if status == 403:
        return PermissionDenied(f"{action}: forbidden ({detail}); grant it in the namespace's Role (the chart's "
                                "jobs Role, docs/jobs.md) or use another namespace")
    if status == 404:
        return NotFound(f"{action}: not found ({detail})")
    if status == 409:
        return FailedPrecondition(f"{action}: conflict ({detail})")
    if status in (400, 422):
        return InvalidArgument(f"{action}: the API server refused the object ({detail})")
    if status == 0 or status >= 500:
        return Unavailable(f"{action}: the API server is unreachable or failing ({detail or exc}); retry, or check "
                           "QANCHOR_KUBE_KUBECONFIG and the cluster")
    return FailedPrecondition(f"{action}: HTTP {status} ({detail})")


def _kubeconfig_candidates(settings: KubeJobSettings) -> list[Path]:
    env = os.environ.get("KUBECONFIG", "")
    paths = [Path(p) for p in env.split(os.pathsep) if p] or [Path.home() / ".kube" / "config"]
    return [*paths, Path(settings.state_dir) / "kube" / "kubeconfig"]


def connect(settings: KubeJobSettings) -> tuple[Any, str]:
    """(kubernetes.client.ApiClient, namespace) from the settings; see KubeJobSettings.kubeconfig."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    cfg = client.Configuration()
    namespace = settings.namespace
    try:
        if settings.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=cfg)
            if namespace is None and IN_CLUSTER_NAMESPACE.is_file():
                namespace = IN_CLUSTER_NAMESPACE.read_text().strip()
        else:
            path = settings.kubeconfig or next((p for p in _kubeconfig_candidates(settings) if p.is_file()), None)
            if path is None:
                raise FailedPrecondition(
                    "no Kubernetes credentials: set QANCHOR_KUBE_KUBECONFIG (or KUBECONFIG) to a kubeconfig, run "
                    "inside a pod with a ServiceAccount token, or start the local control plane with "
                    "`qanchor stack up kube`")
            config.load_kube_config(config_file=str(path), context=settings.context, client_configuration=cfg)
            if namespace is None:
                _, active = config.list_kube_config_contexts(config_file=str(path))
                if settings.context:
                    contexts, _ = config.list_kube_config_contexts(config_file=str(path))
                    active = next((c for c in contexts if c["name"] == settings.context), active)
                namespace = (active or {}).get("context", {}).get("namespace")
    except ConfigException as exc:
        raise FailedPrecondition(f"cannot load Kubernetes credentials: {exc}; check QANCHOR_KUBE_KUBECONFIG") from None
    return client.ApiClient(cfg), namespace or "default"


class KubeJobBackend:
    def __init__(self, settings: KubeJobSettings, api_client: Any = None, namespace: str | None = None) -> None:
        from kubernetes import client

        self.settings = settings
        if api_client is None:
            api_client, default_ns = connect(settings)
            namespace = namespace or default_ns
        self.api_client = api_client
        self.namespace = namespace or settings.namespace or "default"
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)

    def close(self) -> None:
        self.api_client.close()

    def __enter__(self) -> KubeJobBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, action: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            raise _api_error(exc, action) from None
        except (HTTPError, OSError) as exc:
            raise Unavailable(f"{action}: cannot reach the API server ({exc}); check QANCHOR_KUBE_KUBECONFIG and "
                              "that the cluster (or `qanchor stack up kube`) is running") from None

    # --- submit ------------------------------------------------------------------------------------------------

    def submit(self, job: dict[str, Any], service: dict[str, Any] | None = None) -> JobStatus:
        """Create the Job (and its headless Service, owned by the Job). An existing Job of the same name that
        this backend created for the same job id is adopted (a redelivered task must not start a second run)."""
        name = job["metadata"]["name"]
        try:
            created = self._call(f"create Job {self.namespace}/{name}", self.batch.create_namespaced_job,
                                 self.namespace, job)
            log.info("kubernetes job created", extra={"job": name, "namespace": self.namespace})
        except FailedPrecondition:  # 409: it exists
            created = self._call(f"read Job {self.namespace}/{name}", self.batch.read_namespaced_job, name,
                                 self.namespace)
            want = job["metadata"]["labels"]
            have = created.metadata.labels or {}
            if any(have.get(k) != v for k, v in want.items()):
                raise FailedPrecondition(f"a Job named {name} already exists in {self.namespace} and was not made "
                                         "for this run; delete it or pick another run id") from None
            log.info("kubernetes job exists; adopted", extra={"job": name, "namespace": self.namespace})
        status = job_status(created)
        if service is not None:
            body = owned_by(service, {"metadata": {"name": name, "uid": status.uid}})
            try:
                self._call(f"create Service {self.namespace}/{name}", self.core.create_namespaced_service,
                           self.namespace, body)
            except FailedPrecondition:
                pass  # created by an earlier submit of this run
        return status

    # --- read --------------------------------------------------------------------------------------------------

    def get(self, name: str) -> JobStatus | None:
        try:
            return job_status(self._call(f"read Job {self.namespace}/{name}", self.batch.read_namespaced_job, name,
                                         self.namespace))
        except NotFound:
            return None

    def read(self, name: str) -> Any:
        """The Job object itself (kubernetes.client.V1Job)."""
        return self._call(f"read Job {self.namespace}/{name}", self.batch.read_namespaced_job, name, self.namespace)

    def list(self, label_selector: str) -> list[JobStatus]:
        jobs = self._call(f"list Jobs in {self.namespace}", self.batch.list_namespaced_job, self.namespace,
                          label_selector=label_selector)
        return sorted((job_status(j) for j in jobs.items), key=lambda s: s.created or datetime.min, reverse=True)

    def pods(self, name: str) -> list[Any]:
        pods = self._call(f"list pods of Job {name}", self.core.list_namespaced_pod, self.namespace,
                          label_selector=f"{JOB_NAME_LABEL}={name}")
        return sorted(pods.items, key=lambda p: ((p.metadata.annotations or {}).get(COMPLETION_INDEX, ""),
                                                 p.metadata.creation_timestamp or datetime.min))

    def watch(self, name: str, tick_s: float | None = None) -> Iterator[JobStatus]:
        """The Job's status: now, on every change (a real watch), and again every `tick_s` without a change, so
        the caller can check cancellation and time limits. Ends after a terminal status (or the Job's deletion)."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        tick = max(1, int(tick_s or self.settings.poll_s))
        job = self.read(name)
        last = job_status(job)
        yield last
        if last.terminal:
            return
        version = job.metadata.resource_version
        while True:
            w = watch.Watch()
            try:
                for event in w.stream(self.batch.list_namespaced_job, self.namespace,
                                      field_selector=f"metadata.name={name}", resource_version=version,
                                      timeout_seconds=tick, _request_timeout=tick + 30):
                    obj = event["object"]
                    if event["type"] == "DELETED":
                        yield JobStatus(name=name, phase=Phase.CANCELLED, message="deleted", uid=last.uid,
                                        labels=last.labels)
                        return
                    version = obj.metadata.resource_version
                    last = job_status(obj)
                    yield last
                    if last.terminal:
                        return
            except ApiException as exc:
                if exc.status != 410:  # 410 Gone: our resource version is too old; re-read and watch again
                    raise _api_error(exc, f"watch Job {self.namespace}/{name}") from None
                current = self.get(name)
                if current is None:
                    yield JobStatus(name=name, phase=Phase.CANCELLED, message="deleted", uid=last.uid,
                                    labels=last.labels)
                    return
                version, last = None, current
            finally:
                w.stop()
            yield last  # a tick without change

    def stream_logs(self, name: str, index: int = 0, follow: bool = True) -> Iterator[str]:
        """Log lines of the Job's pod `index` (the newest attempt). Needs a kubelet: on a control plane without
        nodes the API server has no kubelet to ask, and this raises FailedPrecondition saying so."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        pods = [p for p in self.pods(name)
                if (p.metadata.annotations or {}).get(COMPLETION_INDEX, "0") == str(index)]
        if not pods:
            raise FailedPrecondition(f"Job {name} has no pod {index} yet; wait until it is scheduled")
        pod = pods[-1].metadata.name
        if not pods[-1].spec.node_name:
            raise FailedPrecondition(f"pod {pod} is not scheduled on a node yet; its logs exist once it runs")
        w = watch.Watch()
        try:
            yield from w.stream(self.core.read_namespaced_pod_log, pod, self.namespace, follow=follow)
        except ApiException as exc:
            raise _api_error(exc, f"read the log of pod {pod}") from None
        finally:
            w.stop()

    def result(self, name: str) -> dict[str, Any]:
        """The JSON a succeeded pod left in its termination message (pod index 0 for an Indexed Job)."""
        for pod in self.pods(name):
            if (pod.metadata.annotations or {}).get(COMPLETION_INDEX, "0") != "0":
                continue
            for cs in (pod.status.container_statuses or []) if pod.status else []:
                term = cs.state.terminated if cs.state else None
                if term is not None and term.exit_code == 0 and term.message:
                    try:
                        return json.loads(term.message)
                    except ValueError:
                        raise FailedPrecondition(f"pod {pod.metadata.name} of Job {name} left a termination "
                                                 f"message that is not JSON: {term.message[:200]!r}") from None
        raise FailedPrecondition(f"Job {name} has no succeeded pod with a result message; see its pods' logs "
                                 f"(kubectl -n {self.namespace} logs job/{name})")

    def failure_messages(self, name: str) -> list[str]:
        """What the Job's failed containers said: their termination messages (an error JSON, or the last log
        lines when the container wrote none), newest attempt last."""
        out = []
        for pod in self.pods(name):
            for cs in (pod.status.container_statuses or []) if pod.status else []:
                term = cs.state.terminated if cs.state else None
                if term is not None and term.exit_code != 0:
                    text = (term.message or "").strip()
                    try:
                        text = str(json.loads(text).get("error", text))
                    except (ValueError, AttributeError):
                        pass
                    out.append(f"pod {pod.metadata.name} exited {term.exit_code}"
                               f"{' (' + term.reason + ')' if term.reason else ''}{': ' + text if text else ''}")
        return out

    # --- cancel ------------------------------------------------------------------------------------------------

    def cancel(self, name: str) -> bool:
        """Delete the Job with its pods (foreground propagation); False when it was already gone."""
        from kubernetes import client

        try:
            self._call(f"delete Job {self.namespace}/{name}", self.batch.delete_namespaced_job, name,
                       self.namespace, body=client.V1DeleteOptions(propagation_policy=PROPAGATION))
        except NotFound:
            return False
        log.info("kubernetes job deleted", extra={"job": name, "namespace": self.namespace,
                                                  "propagation": PROPAGATION})
        return True
