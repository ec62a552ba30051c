"""What the missing controllers of the test control plane would do, done through the real API server.

The stack's Kubernetes control plane (services/stack/kube.py) is etcd + kube-apiserver only: no Job controller,
no scheduler, no kubelet, no ServiceAccount or garbage-collection controller. The job backend under test talks to
that API server for real; these helpers play the missing parts the way they would, and only through the API:

- the ServiceAccount controller: `ensure_namespace` creates the namespace's "default" account;
- the Job controller: `start_pod` creates a Job's pod from its template (labels, completion index, owner);
  `job_running`, `job_succeeded`, `job_failed` write the Job's status subresource;
- the kubelet: `run_container` runs the pod's container command on this machine (the image is this checkout,
  `python` is the model env's interpreter, /dev/termination-log is a file) and `pod_terminated` writes the
  pod's status subresource with the exit code and termination message.
"""
from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path
from typing import Any

from kubernetes import client

from services.common.settings import project_pythonpath, repo_root

JOB_NAME = "batch.kubernetes.io/job-name"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ensure_namespace(core: client.CoreV1Api, namespace: str, accounts: tuple[str, ...] = ("default",)) -> None:
    try:
        core.create_namespace({"metadata": {"name": namespace}})
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    for name in accounts:
        try:
            core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
        except client.ApiException as exc:
            if exc.status != 409:
                raise


def start_pod(api: client.ApiClient, namespace: str, job: client.V1Job, index: int = 0) -> dict[str, Any]:
    """Create pod `index` of the Job from its template and report it running (Job active, pod Running)."""
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    template = api.sanitize_for_serialization(job.spec.template)
    name = job.metadata.name
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": f"{name}-{index}-x7k2q",
            "labels": {**template["metadata"].get("labels", {}), JOB_NAME: name, "job-name": name,
                       "batch.kubernetes.io/controller-uid": job.metadata.uid},
            "annotations": {**template["metadata"].get("annotations", {}), COMPLETION_INDEX: str(index)},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job.metadata.uid,
                                 "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": template["spec"],
    }
    created = core.create_namespaced_pod(namespace, pod)
    core.patch_namespaced_pod_status(created.metadata.name, namespace, {"status": {"phase": "Running"}})
    status: dict[str, Any] = {"active": 1}
    if batch.read_namespaced_job_status(name, namespace).status.start_time is None:
        # set once, as the Job controller does: the API server (1.34) rejects any change of an unsuspended Job's
        # startTime, so a second pod started a second later must leave it alone
        status["startTime"] = now()
    batch.patch_namespaced_job_status(name, namespace, {"status": status})
    return api.sanitize_for_serialization(created)


def run_container(pod: dict[str, Any], result_file: Path, python: Path, timeout_s: float = 900
                  ) -> subprocess.CompletedProcess:
    """Run the pod's container command here, with the container's env; the result goes to `result_file`."""
    container = pod["spec"]["containers"][0]
    command = list(container["command"])
    assert command[0] == "python", command
    command[0] = str(python)
    env = {**os.environ, **{e["name"]: e["value"] for e in container.get("env", []) if "value" in e},
           "PYTHONPATH": project_pythonpath(), "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([*command, "--result-file", str(result_file)], capture_output=True, text=True,
                          cwd=repo_root(), env=env, timeout=timeout_s)


def pod_terminated(core: client.CoreV1Api, namespace: str, pod: str, container: str, exit_code: int,
                   message: str) -> None:
    t = now()
    core.patch_namespaced_pod_status(pod, namespace, {"status": {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "containerStatuses": [{"name": container, "image": "qanchor-model", "imageID": "", "ready": False,
                               "restartCount": 0, "state": {"terminated": {
                                   "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                   "message": message, "startedAt": t, "finishedAt": t}}}]}})


def job_succeeded(batch: client.BatchV1Api, namespace: str, name: str) -> None:
    t = now()
    done = {"status": "True", "lastProbeTime": t, "lastTransitionTime": t, "reason": "CompletionsReached",
            "message": "Reached expected number of succeeded pods"}
    batch.patch_namespaced_job_status(name, namespace, {"status": {
        "active": 0, "succeeded": 1, "completionTime": t,
        "conditions": [{"type": "SuccessCriteriaMet", **done}, {"type": "Complete", **done}]}})


def job_failed(batch: client.BatchV1Api, namespace: str, name: str, message: str) -> None:
    t = now()
    why = {"status": "True", "lastProbeTime": t, "lastTransitionTime": t, "reason": "PodFailurePolicy",
           "message": message}
    batch.patch_namespaced_job_status(name, namespace, {"status": {
        "active": 0, "failed": 1, "conditions": [{"type": "FailureTarget", **why}, {"type": "Failed", **why}]}})


def service_account_kubeconfig(core: client.CoreV1Api, admin_kubeconfig: Path, namespace: str, account: str,
                               out: Path) -> Path:
    """A kubeconfig that authenticates as `account` with a fresh token (TokenRequest API)."""
    import yaml

    token = core.create_namespaced_service_account_token(account, namespace, {
        "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600}}).status.token
    config = yaml.safe_load(admin_kubeconfig.read_text())
    config["users"] = [{"name": account, "user": {"token": token}}]
    config["contexts"] = [{"name": account, "context": {"cluster": config["clusters"][0]["name"], "user": account,
                                                        "namespace": namespace}}]
    config["current-context"] = account
    out.write_text(yaml.safe_dump(config))
    out.chmod(0o600)
    return out


def repo_python(env: str) -> Path:
    return repo_root() / env / "bin" / "python"
