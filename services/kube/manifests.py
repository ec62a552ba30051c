"""Pure builders of the Kubernetes objects the job backend creates (plain API dicts, camelCase as in YAML).

    tuning_job(settings, TuningJobSpec(...))     -> a batch/v1 Job running `python -m services.tuning.pod`
    pretrain_job(settings, PretrainSpec(...))    -> (Job, headless Service | None)

One pod and one GPU-or-CPU container per tuning job. Pretraining on more than one GPU runs `torchrun`: on one
node with `--standalone`; on several nodes as an Indexed Job (one pod per node, `completions = parallelism =
nodes`), whose pods find each other through a headless Service (`<job>-<index>.<service>` DNS names, set by the
pod template's `subdomain`) and rendezvous with c10d on pod 0. Every Job: TTL after finish, no retries by
default, fails at once when any pod exits non-zero (a dead rank hangs the others), no API token in its pods.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.kube.settings import KubeJobSettings
from training.data.event_log import EVENT_LOG_DIR_ENV  # where the log's readers look (pyarrow's module, no torch)

PART_OF = "qanchor"
MANAGED_BY = "qanchor-job-backend"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_JOB_ID = "qanchor.dev/job-id"
LABEL_SCENARIO = "qanchor.dev/scenario"
LABEL_RUN = "qanchor.dev/run-id"
ANNOTATION_SUBMITTED_BY = "qanchor.dev/submitted-by"
TUNING_COMPONENT, PRETRAIN_COMPONENT = "tuning-job", "pretrain-job"
STATE_DIR = "/var/lib/qanchor"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
RUN_ID_MAX = 40  # qanchor-pretrain-<run>-<index> must stay a DNS label (63) for the pods' hostnames


class ManifestError(ValueError):
    """The job cannot be described as asked; the message says what to change."""


def base_labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "qanchor", "app.kubernetes.io/part-of": PART_OF,
            "app.kubernetes.io/managed-by": MANAGED_BY, LABEL_COMPONENT: component}


def selector(component: str, key: str, value: str) -> str:
    """Label selector of one submitted job's objects (what `list` and `logs` look for)."""
    return f"{LABEL_COMPONENT}={component},{key}={value}"


def label_value(text: str) -> str:
    """A label value from free text: 63 chars of [A-Za-z0-9-_.], starting and ending alphanumeric."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:63].strip("-_.")
    return cleaned or "none"


def _resources(s: KubeJobSettings, gpus: int) -> dict[str, Any]:
    limits: dict[str, str] = {"memory": s.memory}
    if gpus:
        limits[s.gpu_resource] = str(gpus)  # extended resources: requests default to limits
    return {"requests": {"cpu": s.cpu, "memory": s.memory}, "limits": limits}


def _pod_spec(s: KubeJobSettings, container: dict[str, Any]) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}},
                                     {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "shm", "mountPath": "/dev/shm"}]
    if s.artifacts_claim:
        volumes.append({"name": "artifacts", "persistentVolumeClaim": {"claimName": s.artifacts_claim}})
        mounts.append({"name": "artifacts", "mountPath": str(s.artifacts_mount)})
    own_env: dict[str, str] = {}
    if s.event_log_claim:  # read only: the eventlog pod is the log's one writer
        volumes.append({"name": "eventlog", "persistentVolumeClaim": {"claimName": s.event_log_claim,
                                                                      "readOnly": True}})
        mounts.append({"name": "eventlog", "mountPath": str(s.event_log_mount), "readOnly": True})
        own_env[EVENT_LOG_DIR_ENV] = str(s.event_log_mount)
    container.update({
        "image": s.image, "imagePullPolicy": s.image_pull_policy,
        # The result (artifact, sha256, metrics) travels back in the termination message: no API or database
        # credentials in the pod. FallbackToLogsOnError: a crash still leaves its last log lines there.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": mounts,
    })
    extra = {**own_env, **s.env}  # QANCHOR_KUBE_ENV wins: one entry per name
    container["env"] = [*container.get("env", []), *({"name": k, "value": v} for k, v in sorted(extra.items()))]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # the pods never call the API
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    }
    if s.service_account:
        spec["serviceAccountName"] = s.service_account
    if s.node_selector:
        spec["nodeSelector"] = dict(s.node_selector)
    if s.tolerations:
        spec["tolerations"] = [dict(t) for t in s.tolerations]
    if s.priority_class:
        spec["priorityClassName"] = s.priority_class
    return spec


def _job(s: KubeJobSettings, name: str, labels: dict[str, str], annotations: dict[str, str],
         pod: dict[str, Any], active_deadline_s: int | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "backoffLimit": s.backoff_limit,
        "ttlSecondsAfterFinished": s.ttl_seconds_after_finished,
        "podFailurePolicy": {"rules": [
            # Node drains and spot reclaims do not use up the retries ...
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            # ... but a container that exits non-zero fails the whole Job at once (the other ranks would hang).
            {"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [0]}},
        ]},
        "template": {"metadata": {"labels": dict(labels), "annotations": dict(annotations)}, "spec": pod},
    }
    if active_deadline_s:
        spec["activeDeadlineSeconds"] = int(active_deadline_s)
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": dict(labels), "annotations": dict(annotations)}, "spec": spec}


# --- tuning --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TuningJobSpec:
    job_id: str                 # the registry's tuning job id (a UUID): names the Job, so a resubmit adopts it
    scenario: str
    query: str
    labels_path: Path           # as the pod sees it (on the artifacts volume)
    model_version: str
    params: dict[str, str] = field(default_factory=dict)
    submitted_by: str = ""
    active_deadline_s: int | None = None  # the hard time limit, enforced by the Job controller


def tuning_job_name(job_id: str) -> str:
    name = f"qanchor-tune-{job_id.lower()}"
    if len(name) > 63 or not _DNS_LABEL.match(name):
        raise ManifestError(f"tuning job id {job_id!r} does not make a valid Job name")
    return name


def tuning_job(s: KubeJobSettings, spec: TuningJobSpec) -> dict[str, Any]:
    labels = {**base_labels(TUNING_COMPONENT), LABEL_JOB_ID: spec.job_id, LABEL_SCENARIO: label_value(spec.scenario)}
    annotations = {ANNOTATION_SUBMITTED_BY: spec.submitted_by or "unknown", "qanchor.dev/labels": str(spec.labels_path)}
    command = ["python", "-m", "services.tuning.pod", "--job-id", spec.job_id, "--scenario", spec.scenario,
               "--query", spec.query, "--labels", str(spec.labels_path), "--model-version", spec.model_version,
               "--params", json.dumps(spec.params, sort_keys=True)]
    env = [{"name": "QANCHOR_STATE_DIR", "value": STATE_DIR}, {"name": "HOME", "value": "/tmp"},
           {"name": "HF_HUB_OFFLINE", "value": "1"},
           {"name": "TUNING_ARTIFACT_DIR", "value": str(s.artifacts_mount)},
           {"name": "TUNING_MODEL_REPOSITORY", "value": str(s.model_repository)},
           # auto = the GPU the pod was given, else the CPU (a CPU pod, or a GPU node whose driver failed).
           {"name": "TUNING_DEVICE", "value": "auto"}]
    container = {"name": "tune", "command": command, "env": env, "resources": _resources(s, min(s.gpus, 1))}
    return _job(s, tuning_job_name(spec.job_id), labels, annotations, _pod_spec(s, container), spec.active_deadline_s)


# --- pretraining ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PretrainSpec:
    run_id: str                 # DNS label; names the Job, the Service and the output folder runs/<run_id>
    train_args: list[str]       # arguments of `python -m training.pretrain`, without --out
    nodes: int = 1
    gpus_per_node: int = 1
    submitted_by: str = ""
    active_deadline_s: int | None = None


def pretrain_job_name(run_id: str) -> str:
    if not _DNS_LABEL.match(run_id) or len(run_id) > RUN_ID_MAX:
        raise ManifestError(f"run id {run_id!r}: use lowercase letters, digits and '-', at most {RUN_ID_MAX} "
                            "characters, starting and ending with a letter or digit (e.g. pretrain-2)")
    return f"qanchor-pretrain-{run_id}"


def pretrain_command(s: KubeJobSettings, spec: PretrainSpec, name: str, out: Path) -> list[str]:
    """What the container runs: the result wrapper around training.pretrain, under torchrun when > 1 GPU."""
    if "--out" in spec.train_args or any(a.startswith("--out=") for a in spec.train_args):
        raise ManifestError("do not pass --out: the run writes to runs/<run id> on the artifacts volume")
    train = ["-m", "training.pretrain", *spec.train_args, "--out", str(out)]
    if spec.nodes == 1 and spec.gpus_per_node <= 1:
        inner = ["python", *train]
    elif spec.nodes == 1:
        inner = ["torchrun", "--standalone", f"--nproc-per-node={spec.gpus_per_node}", *train]
    else:
        inner = ["torchrun", f"--nnodes={spec.nodes}", f"--nproc-per-node={max(spec.gpus_per_node, 1)}",
                 "--rdzv-backend=c10d", f"--rdzv-endpoint={name}-0.{name}:{s.rendezvous_port}",
                 f"--rdzv-id={name}", "--max-restarts=0", *train]
    return ["python", "-m", "services.kube.entry", "--checkpoint", str(out / "checkpoint"),
            "--metrics", str(out / "metrics.jsonl"), "--", *inner]


def pretrain_job(s: KubeJobSettings, spec: PretrainSpec) -> tuple[dict[str, Any], dict[str, Any] | None]:
    if spec.nodes < 1 or spec.gpus_per_node < 0:
        raise ManifestError("nodes must be >= 1 and gpus per node >= 0")
    if spec.nodes > 1 and spec.gpus_per_node < 1:
        raise ManifestError("multi-node pretraining needs at least one GPU per node (--gpus-per-node)")
    name = pretrain_job_name(spec.run_id)
    labels = {**base_labels(PRETRAIN_COMPONENT), LABEL_RUN: spec.run_id}
    annotations = {ANNOTATION_SUBMITTED_BY: spec.submitted_by or "unknown",
                   "qanchor.dev/command": shlex.join(spec.train_args)}
    out = s.artifacts_mount / "runs" / spec.run_id
    env = [{"name": "QANCHOR_STATE_DIR", "value": STATE_DIR}, {"name": "HOME", "value": "/tmp"},
           {"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "QANCHOR_RUN_ID", "value": spec.run_id},
           {"name": "TUNING_ARTIFACT_DIR", "value": str(s.artifacts_mount)}]
    container: dict[str, Any] = {"name": "train", "command": pretrain_command(s, spec, name, out), "env": env,
                                 "resources": _resources(s, spec.gpus_per_node)}
    pod = _pod_spec(s, container)
    job = _job(s, name, labels, annotations, pod, spec.active_deadline_s)
    if spec.nodes == 1:
        return job, None
    container["ports"] = [{"name": "c10d", "containerPort": s.rendezvous_port}]
    pod["subdomain"] = name  # pods resolve as <name>-<index>.<name>: the rendezvous endpoint is pod 0
    job["spec"].update(completionMode="Indexed", completions=spec.nodes, parallelism=spec.nodes)
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {"clusterIP": "None", "selector": {LABEL_COMPONENT: PRETRAIN_COMPONENT, LABEL_RUN: spec.run_id},
                 # Ranks rendezvous before any readiness: their DNS records must exist from the start.
                 "publishNotReadyAddresses": True,
                 "ports": [{"name": "c10d", "port": s.rendezvous_port, "targetPort": s.rendezvous_port}]},
    }
    return job, service


def owned_by(obj: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """`obj` with an ownerReference to the created `job` (needs its uid): deleted with the Job."""
    meta = job["metadata"]
    obj["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                           "uid": meta["uid"], "controller": False}]
    return obj
