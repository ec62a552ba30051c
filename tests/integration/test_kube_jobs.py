"""Tuning jobs on the Kubernetes backend, against a real kube-apiserver + etcd started by the stack manager.

Real processes: etcd, kube-apiserver (RBAC, admission, validation, watches), Redis (Celery broker), the Feast step
(SQLite online store), the registry gRPC server (in-process) and the tuning worker (`python -m services.tuning`
with TUNING_BACKEND=kubernetes, from the services env: it runs no model). The worker authenticates as the
chart's job-backend ServiceAccount, whose Role is rendered from the chart and applied here, so these tests also
prove that Role is enough for the backend and refuses the rest.

There is no kubelet, scheduler or Job controller on this control plane: tests/integration/kube_cluster.py plays
them through the API (pod from the Job's template, the container's command run on this machine, pod and Job
status written through the status subresource). Own port base: QANCHOR_TEST_PORT_BASE + 600.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from services.common.errors import FailedPrecondition, PermissionDenied
from services.common.feast_store import get_store
from services.common.features import load_feature_spec
from services.common.features_online import FeatureWriter
from services.common.files import sha256_file
from services.common.proto.qanchor.v1 import registry_pb2 as pb
from services.common.settings import repo_root
from services.kube.backend import KubeJobBackend
from services.kube.settings import KubeJobSettings
from services.registry.client import RegistryClient
from services.registry.server import create_registry_server
from services.registry.settings import RegistrySettings
from services.stack import Stack
from services.tuning.pod import parse_progress
from tests.integration import kube_cluster as kc
from tests.integration.conftest import integration_settings
from tests.integration.planted import planted_users

pytestmark = pytest.mark.integration

ADMIN = "kube-admin-token"
NAMESPACE = "qanchor-it"
BACKEND_ACCOUNT = "qanchor-job-backend"  # the chart's name for a release called "qanchor"
POD_ACCOUNT = "qanchor"
MODEL_VERSION = "tiny-kube-it"
QUERY = "Does this user like the planted genre?"
N_USERS = 40
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], flow: dict[str, Any], timeout_s: float = 300.0) -> T:
    """Poll until `probe` returns something truthy; on timeout fail with the worker's log (never a timing claim)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        if flow["worker"].poll() is not None:
            break
        time.sleep(0.3)
    pytest.fail(f"{what}: not seen; worker log:\n{flow['log'].read_text(errors='replace')[-4000:]}")


def _helm() -> str:
    run = subprocess.run(["bash", str(repo_root() / "scripts" / "helm_lint.sh"), "--ensure-helm"],
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, f"could not build or find helm: {run.stderr[-2000:]}"
    return run.stdout.strip().splitlines()[-1]


def apply_chart_rbac(api: Any, out: Path) -> list[dict[str, Any]]:
    """Render the chart's job-backend ServiceAccount, Role and RoleBinding for NAMESPACE and create them."""
    from kubernetes import utils

    rendered = subprocess.run(
        [_helm(), "template", "qanchor", str(repo_root() / "helm" / "qanchor"), "--namespace", NAMESPACE,
         "--kube-version", "1.34.3", "--set", "jobs.kubernetes.enabled=true",
         "--show-only", "templates/jobs-serviceaccount.yaml",
         "--show-only", "templates/jobs-role.yaml", "--show-only", "templates/jobs-rolebinding.yaml"],
        capture_output=True, text=True, timeout=300)
    assert rendered.returncode == 0, rendered.stderr
    (out / "rbac.yaml").write_text(rendered.stdout)
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert sorted(d["kind"] for d in docs) == ["Role", "RoleBinding", "ServiceAccount"]
    for doc in docs:
        utils.create_from_dict(api, doc, namespace=NAMESPACE)
    return docs


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    model_python = kc.repo_python(".venv-model")
    if not model_python.exists():
        pytest.skip("no model env (.venv-model): the tuning pod's command runs there; run scripts/setup_env.sh")
    from kubernetes import client

    tmp = tmp_path_factory.mktemp("kube")
    base = int(os.environ.get("QANCHOR_TEST_PORT_BASE", "29000")) + 600
    stack = Stack(integration_settings(tmp / "state", port_base=base))
    stack.up(["redis", "feast", "kube"])
    worker: subprocess.Popen | None = None
    try:
        ep = stack.endpoints()
        admin_kubeconfig = stack.components["kube"].kubeconfig
        admin_backend = KubeJobBackend(KubeJobSettings(kubeconfig=admin_kubeconfig, namespace=NAMESPACE))
        core = client.CoreV1Api(admin_backend.api_client)
        kc.ensure_namespace(core, NAMESPACE, accounts=("default", POD_ACCOUNT))
        rbac = apply_chart_rbac(admin_backend.api_client, tmp)
        backend_kubeconfig = kc.service_account_kubeconfig(core, admin_kubeconfig, NAMESPACE, BACKEND_ACCOUNT,
                                                           tmp / "backend.kubeconfig")

        artifacts = tmp / "artifacts"  # the "artifacts claim": the same path for the worker and the pods here
        spec = load_feature_spec()
        export = subprocess.run([str(model_python), "-m", "training.export", "--preset", "tiny", "--set",
                                 f"input.d_tab={spec.tabular_dim}", "--model-version", MODEL_VERSION,
                                 "--out", str(artifacts / "model_repository")],
                                capture_output=True, text=True, timeout=900)
        assert export.returncode == 0, export.stderr[-2000:]
        rows, labels = planted_users(N_USERS, seed=11, prefix="kube-user", max_events=5)
        FeatureWriter(get_store(ep.feast_config), spec).write(rows)
        labels_csv = artifacts / "labels" / "planted.csv"
        labels_csv.parent.mkdir(parents=True)
        labels_csv.write_text("user_id,label\n" + "".join(f"{u},{y}\n" for u, y in labels.items()))

        broker = ep.redis_url.rsplit("/", 1)[0] + "/1"
        queue = f"kube-it-{uuid.uuid4().hex[:8]}"
        db_url = f"sqlite:///{tmp / 'registry.db'}"
        reg_server, reg_port, _ = create_registry_server(RegistrySettings(
            grpc_port=0, database_url=db_url, admin_token=ADMIN, celery_broker=broker, tuning_queue=queue))
        reg_server.start()
        kube_env = {
            "QANCHOR_KUBE_KUBECONFIG": str(backend_kubeconfig), "QANCHOR_KUBE_NAMESPACE": NAMESPACE,
            "QANCHOR_KUBE_IMAGE": "qanchor-model:it", "QANCHOR_KUBE_SERVICE_ACCOUNT": POD_ACCOUNT,
            "QANCHOR_KUBE_GPUS": "1", "QANCHOR_KUBE_CPU": "2", "QANCHOR_KUBE_MEMORY": "6Gi",
            "QANCHOR_KUBE_NODE_SELECTOR": json.dumps({"nvidia.com/gpu.present": "true"}),
            "QANCHOR_KUBE_TOLERATIONS": json.dumps([{"key": "nvidia.com/gpu", "operator": "Exists",
                                                     "effect": "NoSchedule"}]),
            "QANCHOR_KUBE_TTL_SECONDS_AFTER_FINISHED": "600", "QANCHOR_KUBE_ARTIFACTS_CLAIM": "qanchor-artifacts",
            "QANCHOR_KUBE_ARTIFACTS_MOUNT": str(artifacts),
            "QANCHOR_KUBE_MODEL_REPOSITORY": str(artifacts / "model_repository"), "QANCHOR_KUBE_POLL_S": "1",
        }
        env = {**os.environ, **kube_env, "QANCHOR_STATE_DIR": str(tmp / "state"), "QANCHOR_PORT_BASE": str(base),
               "TUNING_BACKEND": "kubernetes", "TUNING_BROKER_URL": broker, "TUNING_QUEUE": queue,
               "TUNING_DATABASE_URL": db_url, "TUNING_ARTIFACT_DIR": str(artifacts),
               "TUNING_FEATURES_PYTHON": sys.executable, "TUNING_FEAST_CONFIG": str(ep.feast_config),
               "TUNING_PROGRESS_EVERY_S": "0.3", "TUNING_TIME_LIMIT_S": "3600"}
        log_path = tmp / "worker.log"
        with open(log_path, "wb") as log:
            # The services env: a Kubernetes-backend worker needs neither torch nor a GPU.
            worker = subprocess.Popen([sys.executable, "-m", "services.tuning", "-n", f"{queue}@%h"],
                                      cwd=repo_root(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        admin = RegistryClient(f"127.0.0.1:{reg_port}", token=ADMIN, timeout_s=10)
        admin.register_scenario("planted", QUERY)
        yield {"admin": admin, "kube": admin_backend, "core": core, "worker": worker, "log": log_path,
               "tmp": tmp, "artifacts": artifacts, "labels": labels_csv, "model_python": model_python,
               "rbac": rbac, "backend_kubeconfig": backend_kubeconfig,
               "metrics_url": f"http://127.0.0.1:{base + 62}/metrics"}
        admin.close()
        reg_server.stop(0)
        admin_backend.close()
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        stack.down()


def _state(job: pb.TuningJob) -> str:
    return pb.JobState.Name(job.state).removeprefix("JOB_STATE_")


def _k8s_job(flow: dict[str, Any], job_id: str) -> Any:
    name = f"qanchor-tune-{job_id}"
    return wait_for(f"Kubernetes Job {name}", lambda: flow["kube"].get(name) and flow["kube"].read(name), flow)


def _metrics(flow: dict[str, Any]) -> dict[str, float]:
    with urllib.request.urlopen(flow["metrics_url"], timeout=10) as resp:
        text = resp.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_a_tuning_job_runs_as_a_kubernetes_job_and_its_result_lands_in_the_registry(flow) -> None:  # type: ignore
    admin, kube = flow["admin"], flow["kube"]
    started = admin.start_tuning_job("planted", str(flow["labels"]), params={"steps": "6", "batch_size": "16"})
    job = _k8s_job(flow, started.job_id)

    # The Job object: labels (whose job it is), owner annotation, TTL, deadline, resources and scheduling.
    meta, spec = job.metadata, job.spec
    assert meta.namespace == NAMESPACE
    assert meta.labels["qanchor.dev/job-id"] == started.job_id and meta.labels["qanchor.dev/scenario"] == "planted"
    assert meta.labels["app.kubernetes.io/managed-by"] == "qanchor-job-backend"
    assert meta.labels["app.kubernetes.io/component"] == "tuning-job"
    assert meta.annotations["qanchor.dev/submitted-by"].startswith("tuning-worker@")
    assert spec.ttl_seconds_after_finished == 600 and spec.active_deadline_seconds == 3600
    assert spec.backoff_limit == 0 and spec.template.spec.restart_policy == "Never"
    assert [r.action for r in spec.pod_failure_policy.rules] == ["Ignore", "FailJob"]
    pod_spec = spec.template.spec
    container = pod_spec.containers[0]
    assert container.image == "qanchor-model:it"
    assert container.resources.requests == {"cpu": "2", "memory": "6Gi"}
    assert container.resources.limits == {"memory": "6Gi", "nvidia.com/gpu": "1"}
    assert pod_spec.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [(t.key, t.operator, t.effect) for t in pod_spec.tolerations] == [("nvidia.com/gpu", "Exists",
                                                                               "NoSchedule")]
    assert pod_spec.automount_service_account_token is False and pod_spec.service_account_name == POD_ACCOUNT
    assert {v.persistent_volume_claim.claim_name for v in pod_spec.volumes if v.persistent_volume_claim} == {
        "qanchor-artifacts"}
    # CSV labels were snapshotted by the worker (it has Feast) onto the shared volume; the pod reads the .npz.
    labels_arg = Path(container.command[container.command.index("--labels") + 1])
    assert labels_arg == flow["artifacts"] / "snapshots" / f"{started.job_id}.npz" and labels_arg.is_file()
    assert _state(admin.get_tuning_job(started.job_id)) == "RUNNING"

    # The Job controller starts the pod; the worker sees it running.
    pod = kc.start_pod(kube.api_client, NAMESPACE, job)
    wait_for("RUNNING on Kubernetes", lambda: "running as Kubernetes Job" in admin.get_tuning_job(
        started.job_id).message, flow)
    # The kubelet runs the container (here: its command, on this machine).
    result_file = flow["tmp"] / "termination-1.json"
    ran = kc.run_container(pod, result_file, flow["model_python"])
    assert ran.returncode == 0, ran.stderr[-3000:]
    steps = [p for p in map(parse_progress, ran.stdout.splitlines()) if p is not None]
    assert steps and steps[-1][0] == 1.0 and any(m.startswith("step ") for _, m, _ in steps)
    kc.pod_terminated(flow["core"], NAMESPACE, pod["metadata"]["name"], "tune", 0, result_file.read_text())
    kc.job_succeeded(kube.batch, NAMESPACE, job.metadata.name)

    done = wait_for("SUCCEEDED", lambda: (j := admin.get_tuning_job(started.job_id)).state in (
        pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED) and j, flow)
    assert _state(done) == "SUCCEEDED", done.message
    version = {v.version: v for v in admin.list_prompt_versions("planted")}[done.prompt_version]
    assert version.status == pb.PROMPT_STATUS_READY and version.model_version == MODEL_VERSION
    path = Path(version.artifact_uri.removeprefix("file://"))
    assert path.is_relative_to(flow["artifacts"] / "prompts" / "planted")
    assert sha256_file(path) == version.sha256 == json.loads(result_file.read_text())["sha256"]
    metrics = dict(version.metrics)
    assert metrics["n_train"] + metrics["n_val"] == N_USERS and metrics["steps"] == 6
    assert 0.0 <= metrics["auc"] <= 1.0 and 0.0 <= metrics["auc_zero_shot"] <= 1.0
    scraped = _metrics(flow)
    assert scraped['qanchor_tuning_jobs_finished_total{outcome="succeeded"}'] == 1.0
    assert scraped['qanchor_tuning_jobs{state="SUCCEEDED"}'] == 1.0
    assert scraped['qanchor_tuning_job_duration_seconds_count{outcome="succeeded"}'] == 1.0
    flow["succeeded"] = started.job_id


def test_cancelling_deletes_the_kubernetes_job_with_its_pods(flow) -> None:  # type: ignore[no-untyped-def]
    admin, kube = flow["admin"], flow["kube"]
    versions_before = len(admin.list_prompt_versions("planted"))
    started = admin.start_tuning_job("planted", str(flow["labels"]), params={"steps": "6"})
    job = _k8s_job(flow, started.job_id)
    kc.start_pod(kube.api_client, NAMESPACE, job)
    wait_for("RUNNING on Kubernetes", lambda: "running as Kubernetes Job" in admin.get_tuning_job(
        started.job_id).message, flow)

    cancelled = admin.cancel_tuning_job(started.job_id, reason="wrong labels")
    assert _state(cancelled) == "CANCELLED" and "wrong labels" in cancelled.message
    # Foreground propagation: the Job stays, marked for deletion, until the garbage collector removed its pods.
    deleting = wait_for("the Job marked for deletion", lambda: (j := kube.read(job.metadata.name)
                                                                 ).metadata.deletion_timestamp and j, flow)
    assert "foregroundDeletion" in deleting.metadata.finalizers
    assert kube.get(job.metadata.name).phase.value == "CANCELLED"
    wait_for("the cancel counted", lambda: _metrics(flow).get(
        'qanchor_tuning_jobs_finished_total{outcome="cancelled"}') == 1.0, flow)
    assert _state(admin.get_tuning_job(started.job_id)) == "CANCELLED"
    assert len(admin.list_prompt_versions("planted")) == versions_before
    assert _state(admin.cancel_tuning_job(started.job_id)) == "CANCELLED"  # idempotent
    with pytest.raises(FailedPrecondition, match="already SUCCEEDED"):
        admin.cancel_tuning_job(flow["succeeded"])


def test_a_failed_pod_fails_the_job_with_what_the_pod_said(flow) -> None:  # type: ignore[no-untyped-def]
    admin, kube = flow["admin"], flow["kube"]
    started = admin.start_tuning_job("planted", str(flow["labels"]), params={"steps": "6"})
    job = _k8s_job(flow, started.job_id)
    pod = kc.start_pod(kube.api_client, NAMESPACE, job)
    said = "cannot tune on these labels: labels hold a single class"
    kc.pod_terminated(flow["core"], NAMESPACE, pod["metadata"]["name"], "tune", 2, json.dumps({"error": said}))
    kc.job_failed(kube.batch, NAMESPACE, job.metadata.name, "Container tune exited with 2")
    failed = wait_for("FAILED", lambda: (j := admin.get_tuning_job(started.job_id)).state == pb.JOB_STATE_FAILED
                      and j, flow)
    assert "PodFailurePolicy" in failed.message and said in failed.message, failed.message


def test_jobs_are_listed_newest_first_and_filtered_by_state(flow) -> None:  # type: ignore[no-untyped-def]
    jobs = flow["admin"].list_tuning_jobs("planted")
    assert [_state(j) for j in jobs] == ["FAILED", "CANCELLED", "SUCCEEDED"]
    assert all(j.labels_uri == str(flow["labels"]) for j in jobs)
    cancelled = flow["admin"].list_tuning_jobs("planted", states=[pb.JOB_STATE_CANCELLED])
    assert [j.job_id for j in cancelled] == [jobs[1].job_id]


def test_the_charts_role_allows_the_backend_and_refuses_the_rest(flow) -> None:  # type: ignore[no-untyped-def]
    from kubernetes import client

    role = next(d for d in flow["rbac"] if d["kind"] == "Role")
    assert {r for rule in role["rules"] for r in rule["resources"]} == {"jobs", "pods", "pods/log", "services"}
    backend = KubeJobBackend(KubeJobSettings(kubeconfig=flow["backend_kubeconfig"]))
    try:
        assert backend.namespace == NAMESPACE
        assert len(backend.list("app.kubernetes.io/component=tuning-job")) == 3  # list, as the worker did
        core = client.CoreV1Api(backend.api_client)
        for forbidden in (lambda: core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": "x"}}),
                          lambda: core.list_namespaced_config_map(NAMESPACE),
                          lambda: backend.batch.list_namespaced_job("default"),
                          lambda: backend.batch.patch_namespaced_job_status(
                              f"qanchor-tune-{flow['succeeded']}", NAMESPACE, {"status": {"active": 0}})):
            with pytest.raises(client.ApiException) as err:
                forbidden()
            assert err.value.status == 403
        with pytest.raises(PermissionDenied, match="forbidden"):  # the backend's own error says what to grant
            KubeJobBackend(KubeJobSettings(kubeconfig=flow["backend_kubeconfig"], namespace="default")).list(
                "app.kubernetes.io/component=tuning-job")
    finally:
        backend.close()


def test_train_submit_runs_multi_node_pretraining_as_an_indexed_job(flow, monkeypatch, capsys) -> None:  # type: ignore
    from services.cli import __main__ as cli

    kube = flow["kube"]
    monkeypatch.setenv("QANCHOR_KUBE_KUBECONFIG", str(kube.settings.kubeconfig))
    monkeypatch.setenv("QANCHOR_KUBE_NAMESPACE", NAMESPACE)
    monkeypatch.setenv("QANCHOR_KUBE_ARTIFACTS_CLAIM", "qanchor-artifacts")
    monkeypatch.setenv("QANCHOR_KUBE_TOLERATIONS", '[{"key": "nvidia.com/gpu", "operator": "Exists"}]')
    assert cli.main(["train", "submit", "it-1", "--nodes", "2", "--gpus-per-node", "4", "--json", "--",
                     "--config", "smollm2", "--dataset", "ml-1m", "--steps", "100"]) == 0
    submitted = json.loads(capsys.readouterr().out)
    name = "qanchor-pretrain-it-1"
    assert submitted["job"] == name and submitted["indexed"] is True
    job = kube.read(name)
    assert (job.spec.completion_mode, job.spec.completions, job.spec.parallelism) == ("Indexed", 2, 2)
    pod_spec = job.spec.template.spec
    assert pod_spec.subdomain == name and pod_spec.containers[0].resources.limits["nvidia.com/gpu"] == "4"
    command = pod_spec.containers[0].command
    assert f"--rdzv-endpoint={name}-0.{name}:29500" in command and "--nnodes=2" in command
    service = flow["core"].read_namespaced_service(name, NAMESPACE)
    assert service.spec.cluster_ip == "None" and service.spec.publish_not_ready_addresses is True
    assert [(o.kind, o.name, o.uid) for o in service.metadata.owner_references] == [("Job", name, job.metadata.uid)]
    # Submitting the same run again adopts it (one Job, one Service).
    assert cli.main(["train", "submit", "it-1", "--nodes", "2", "--gpus-per-node", "4", "--", "--config",
                     "smollm2", "--dataset", "ml-1m", "--steps", "100"]) == 0
    capsys.readouterr()
    assert kube.read(name).metadata.uid == job.metadata.uid

    # Both ranks run and finish; rank 0 leaves the result in its termination message.
    pods = [kc.start_pod(kube.api_client, NAMESPACE, job, index=i) for i in (0, 1)]
    result = {"checkpoint": "/var/lib/qanchor/artifacts/runs/it-1/checkpoint", "sha256": "ab" * 32,
              "metrics": {"step": 100.0, "val_acc1": 0.31}}
    kc.pod_terminated(flow["core"], NAMESPACE, pods[0]["metadata"]["name"], "train", 0, json.dumps(result))
    kc.pod_terminated(flow["core"], NAMESPACE, pods[1]["metadata"]["name"], "train", 0, "")
    assert cli.main(["train", "status", "it-1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["phase"] == "RUNNING"
    kc.job_succeeded(kube.batch, NAMESPACE, name)
    assert cli.main(["train", "wait", "it-1", "--json"]) == 0
    waited = json.loads(capsys.readouterr().out)
    assert waited["phase"] == "SUCCEEDED" and waited["result"] == result
    assert cli.main(["train", "list"]) == 0
    assert any(line.startswith("it-1") and "SUCCEEDED" in line for line in capsys.readouterr().out.splitlines())
    # No kubelet: logs say why they are not there, and what to do.
    assert cli.main(["train", "logs", "it-1"]) == 1
    assert "not scheduled on a node" in capsys.readouterr().err

    # A second run, on the platform's own event log (the API server takes the read-only claim), cancelled: deleted
    # with foreground propagation.
    monkeypatch.setenv("QANCHOR_KUBE_EVENT_LOG_CLAIM", "qanchor-eventlog")
    assert cli.main(["train", "submit", "it-2", "--gpus-per-node", "1", "--", "--config", "smollm2", "--dataset",
                     "offline"]) == 0
    capsys.readouterr()
    pod_spec = kube.read("qanchor-pretrain-it-2").spec.template.spec
    [claim] = [v.persistent_volume_claim for v in pod_spec.volumes if v.name == "eventlog"]
    assert claim.claim_name == "qanchor-eventlog" and claim.read_only is True
    [mount] = [m for m in pod_spec.containers[0].volume_mounts if m.name == "eventlog"]
    env = {e.name: e.value for e in pod_spec.containers[0].env}
    assert mount.read_only is True and env["QANCHOR_EVENT_LOG_DIR"] == mount.mount_path == "/var/lib/qanchor/eventlog"
    assert cli.main(["train", "cancel", "it-2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"job": "qanchor-pretrain-it-2", "deleted": True}
    assert "foregroundDeletion" in kube.read("qanchor-pretrain-it-2").metadata.finalizers
    assert cli.main(["train", "submit", "Bad_Id", "--", "--config", "x"]) == 1
    assert "run id" in capsys.readouterr().err
