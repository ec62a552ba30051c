"""The tuning flow end to end on real processes: registry gRPC server, Redis broker, Feast online store, and the
tuning worker (`python -m services.tuning` in the model env) as a subprocess.

RegisterScenario -> StartTuningJob (gRPC) -> Celery task on Redis -> worker reads the labelled users' features from
Feast, tunes a soft prompt on a real (untrained, tiny) exported serving model, writes the artifact -> GetTuningJob
SUCCEEDED, prompt version READY with metrics, sha256 of the file on disk = the registry's. Redelivered tasks add no
version. Only Redis and the Feast step are started (own port base: QANCHOR_TEST_PORT_BASE + 500).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from celery import Celery

from services.common.feast_store import get_store
from services.common.features import UserFeatures, load_feature_spec
from services.common.features_online import FeatureWriter
from services.common.settings import repo_root
from services.registry.client import RegistryClient
from services.registry.db import Database
from services.registry.domain import JobState
from services.registry.enqueue import TUNE_TASK
from services.registry.repository import Repository
from services.registry.server import create_registry_server
from services.registry.settings import RegistrySettings
from services.stack import Stack
from services.tuning.dataset import TuningData
from services.tuning.snapshot import make_snapshot
from tests.integration.conftest import grpcurl_call, integration_settings
from tests.integration.planted import planted_users as _planted

pytestmark = pytest.mark.integration

ADMIN = "tuning-admin"
N_USERS, STEPS = 48, 15
QUERY = "Does this user like the planted genre?"
MODEL_VERSION = "tiny-tuning-it"


def planted_users(seed: int = 5) -> tuple[list[UserFeatures], dict[str, int]]:
    return _planted(N_USERS, seed)


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    model_python = repo_root() / ".venv-model" / "bin" / "python"
    if not model_python.exists():
        pytest.skip("no model env (.venv-model): the tuning worker runs there; run scripts/setup_env.sh")
    tmp = tmp_path_factory.mktemp("tuning")
    base = int(os.environ.get("QANCHOR_TEST_PORT_BASE", "29000")) + 500
    stack = Stack(integration_settings(tmp / "state", port_base=base))
    stack.up(["redis", "feast"])
    procs: list[subprocess.Popen] = []
    try:
        ep = stack.endpoints()
        spec = load_feature_spec()
        # The serving model, exported as the stack does; d_tab follows the feature schema (sources.yaml).
        repo_dir = tmp / "state" / "model_repository"
        export = subprocess.run([str(model_python), "-m", "training.export", "--preset", "tiny", "--set",
                                 f"input.d_tab={spec.tabular_dim}", "--model-version", MODEL_VERSION,
                                 "--out", str(repo_dir)], capture_output=True, text=True, timeout=600)
        assert export.returncode == 0, export.stderr[-2000:]
        rows, labels = planted_users()
        FeatureWriter(get_store(ep.feast_config), spec).write(rows)
        labels_csv = tmp / "labels.csv"
        extra = {"never-seen-1": 1, "never-seen-2": 0}  # labelled but unknown to the store: dropped, counted
        labels_csv.write_text("user_id,label\n" + "".join(f"{u},{y}\n" for u, y in {**labels, **extra}.items()))

        # The same snapshot the worker makes for a CSV, made here once (Feast is already loaded in this process):
        # later tests pass it as labels_uri, the path the model image takes.
        snapshot = make_snapshot(labels_csv, ep.feast_config, tmp / "snapshot.npz")

        broker = ep.redis_url.rsplit("/", 1)[0] + "/1"
        queue = f"tuning-it-{uuid.uuid4().hex[:8]}"
        db_url = f"sqlite:///{tmp / 'registry.db'}"
        reg_server, reg_port, reg_app = create_registry_server(RegistrySettings(
            grpc_port=0, database_url=db_url, admin_token=ADMIN, celery_broker=broker, tuning_queue=queue))
        reg_server.start()
        env = {**os.environ, "QANCHOR_STATE_DIR": str(tmp / "state"), "QANCHOR_PORT_BASE": str(base),
               "TUNING_BROKER_URL": broker, "TUNING_QUEUE": queue, "TUNING_DATABASE_URL": db_url,
               "TUNING_ARTIFACT_DIR": str(tmp / "artifacts"), "TUNING_MODEL_REPOSITORY": str(repo_dir),
               "TUNING_FEATURES_PYTHON": sys.executable, "TUNING_FEAST_CONFIG": str(ep.feast_config),
               "TUNING_TORCH_THREADS": "1", "TUNING_PROGRESS_EVERY_S": "0.5", "HF_HUB_OFFLINE": "1"}
        log_path = tmp / "worker.log"
        with open(log_path, "wb") as log:
            procs.append(subprocess.Popen([str(model_python), "-m", "services.tuning", "-n", f"{queue}@%h"],
                                          cwd=repo_root(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        client = Celery("tuning-it", broker=broker, backend=broker, set_as_current=False)
        admin = RegistryClient(f"127.0.0.1:{reg_port}", token=ADMIN, timeout_s=10)
        yield {"admin": admin, "celery": client, "queue": queue, "labels": labels_csv, "tmp": tmp,
               "registry_target": f"127.0.0.1:{reg_port}",
               "repo": Repository(Database(db_url)), "worker": procs[0], "log": log_path,
               "rows": rows, "snapshot": snapshot, "snapshot_path": tmp / "snapshot.npz"}
        admin.close()
        reg_server.stop(0)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        stack.down()


def wait_job(flow, job_id: str, timeout_s: float = 240.0) -> tuple[object, list[tuple[str, float]]]:  # type: ignore
    seen: list[tuple[str, float]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = flow["admin"].get_tuning_job(job_id)
        seen.append((_state_name(job.state), job.progress))
        if seen[-1][0] in ("SUCCEEDED", "FAILED"):
            return job, seen
        if flow["worker"].poll() is not None:
            break
        time.sleep(0.3)
    pytest.fail(f"job {job_id} not finished (seen {seen[-3:]}); worker log:\n"
                f"{flow['log'].read_text(errors='replace')[-4000:]}")


def _state_name(value: int) -> str:
    from services.common.proto.qanchor.v1 import registry_pb2 as pb

    return pb.JobState.Name(value).removeprefix("JOB_STATE_")


def test_snapshot_holds_the_stores_features(flow) -> None:  # type: ignore[no-untyped-def]
    snap: TuningData = flow["snapshot"]
    assert snap.meta["n_missing"] == 2 and len(snap.user_ids) == N_USERS
    back = TuningData.load(flow["snapshot_path"])
    for i in (0, N_USERS - 1):
        row = flow["rows"][i]
        j = back.user_ids.index(row.user_id)
        assert back.feature_version[j] == row.feature_version
        np.testing.assert_allclose(back.tabular[j], row.tabular, rtol=1e-6)
        for name, ev in row.sources.items():
            n = len(ev.texts)
            assert back.event_mask[name][j].sum() == n
            np.testing.assert_array_equal(back.event_vecs[name][j][:n], ev.vectors)  # float16 bytes intact


def test_start_tuning_job_produces_a_ready_prompt_version(flow) -> None:  # type: ignore[no-untyped-def]
    admin = flow["admin"]
    admin.register_scenario("planted", QUERY)
    started = admin.start_tuning_job("planted", flow["labels"].as_uri(), params={"steps": str(STEPS),
                                                                                  "batch_size": "16"})
    job, seen = wait_job(flow, started.job_id)
    assert _state_name(job.state) == "SUCCEEDED", job.message
    assert job.prompt_version == 2 and "prompt version 2 ready" in job.message
    assert any(state == "RUNNING" and 0.0 < p < 1.0 for state, p in seen), seen  # progress was reported
    versions = {v.version: v for v in admin.list_prompt_versions("planted")}
    v2 = versions[2]
    assert v2.model_version == MODEL_VERSION  # "" resolved to the repository's default model version
    metrics = dict(v2.metrics)
    assert {"auc", "ks", "auc_zero_shot", "probe_auc", "probe_auc_zero_shot", "n_train", "n_val"} <= set(metrics)
    assert 0.0 <= metrics["probe_auc"] <= 1.0 and 0.0 <= metrics["probe_auc_zero_shot"] <= 1.0
    assert metrics["n_train"] + metrics["n_val"] == N_USERS and metrics["n_missing"] == 2
    assert metrics["n_select"] + metrics["n_verdict"] == metrics["n_val"]  # the default verdict split
    assert metrics["n_labelled"] == N_USERS + 2 and "select_gain" in metrics
    assert 0.0 <= metrics["auc"] <= 1.0 and 0.0 <= metrics["ks"] <= 1.0 and metrics["steps"] == STEPS
    assert dict(job.metrics) == pytest.approx(metrics)
    path = Path(v2.artifact_uri.removeprefix("file://"))
    assert path.is_relative_to(flow["tmp"] / "artifacts" / "prompts" / "planted")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == v2.sha256
    # update_state + the task's result went to the Celery result backend (task id = job id).
    result = flow["celery"].AsyncResult(started.job_id).get(timeout=30)
    assert result["state"] == "SUCCEEDED" and result["sha256"] == v2.sha256 and result["prompt_version"] == 2
    flow["ids"] = started.job_id


def test_redelivered_tasks_add_no_second_version(flow) -> None:  # type: ignore[no-untyped-def]
    admin, celery, queue, repo = flow["admin"], flow["celery"], flow["queue"], flow["repo"]
    before = len(admin.list_prompt_versions("planted"))
    # 1) the finished job's task delivered again: skipped.
    again = celery.send_task(TUNE_TASK, args=[flow["ids"]], queue=queue).get(timeout=60)
    assert again["skipped"] is True and again["state"] == "SUCCEEDED"
    # 2) a job whose worker died mid-run (row left RUNNING, message re-delivered twice): tuned once, one version.
    job = repo.create_tuning_job("planted", str(flow["snapshot_path"]), params={"steps": "5", "batch_size": "16"})
    repo.update_tuning_job(job.job_id, state=JobState.RUNNING, progress=0.3, message="worker lost")
    first = celery.send_task(TUNE_TASK, args=[job.job_id], queue=queue, task_id=job.job_id)
    second = celery.send_task(TUNE_TASK, args=[job.job_id], queue=queue)
    out1, out2 = first.get(timeout=240), second.get(timeout=240)
    assert out1["state"] == "SUCCEEDED" and out2 == {**out2, "skipped": True, "prompt_version": out1["prompt_version"]}
    assert len(admin.list_prompt_versions("planted")) == before + 1
    assert repo.get_tuning_job(job.job_id).state is JobState.SUCCEEDED


def test_bad_labels_fail_the_job_with_a_readable_message(flow) -> None:  # type: ignore[no-untyped-def]
    snap = TuningData.load(flow["snapshot_path"])
    snap.labels[:] = 1
    one_class = snap.save(flow["tmp"] / "one_class.npz")
    job = flow["admin"].start_tuning_job("planted", str(one_class))
    done, _ = wait_job(flow, job.job_id)
    assert _state_name(done.state) == "FAILED"
    assert "single class" in done.message and done.prompt_version == 0


def test_a_job_started_from_grpcurl_applies_its_params(flow, grpcurl) -> None:  # type: ignore[no-untyped-def]
    """An outside client (grpcurl: no deadline, params as a JSON map of strings) starts a probe-objective job with
    the anchor term and min_val_gain -1 (keep the tuned prompt): the worker applies all three; an out-of-range
    value fails the job with what to change."""
    import json

    method = "qanchor.v1.ScenarioRegistry/StartTuningJob"
    params = {"steps": "6", "batch_size": "16", "objective": "probe", "anchor_weight": "0.5", "min_val_gain": "-1"}
    started = grpcurl_call(grpcurl, flow["registry_target"], method,
                           {"scenario": "planted", "labels_uri": str(flow["snapshot_path"]), "params": params}, ADMIN)
    done, _ = wait_job(flow, started.get("job_id", started.get("jobId")))
    assert _state_name(done.state) == "SUCCEEDED", done.message
    metrics = dict(done.metrics)
    assert metrics["kept_zero_shot"] == 0.0 and 1.0 <= metrics["best_step"] <= 6.0 and "probe_auc" in metrics
    assert metrics["val_gain_low"] <= metrics["val_gain_high"]  # the held-out gain's interval, and the message says it
    assert f"held-out AUC gain over the query {metrics['val_gain']:+.3f}, 95% {metrics['val_gain_low']:+.3f}" \
        in done.message, done.message
    assert f"on {int(metrics['n_verdict'])} users" in done.message  # the verdict users only, not all held out
    assert metrics["n_select"] + metrics["n_verdict"] == metrics["n_val"]
    version = {v.version: v for v in flow["admin"].list_prompt_versions("planted")}[done.prompt_version]
    manifest = json.loads(Path(version.artifact_uri.removeprefix("file://")).with_name("manifest.json").read_text())
    assert manifest["n_tokens"] == 6
    assert manifest["extra"]["params"] == {**manifest["extra"]["params"], "objective": "probe", "anchor_weight": 0.5,
                                           "min_val_gain": -1.0}
    bad = grpcurl_call(grpcurl, flow["registry_target"], method,
                       {"scenario": "planted", "labels_uri": str(flow["snapshot_path"]),
                        "params": {"min_val_gain": "2"}}, ADMIN)
    failed, _ = wait_job(flow, bad.get("job_id", bad.get("jobId")))
    assert _state_name(failed.state) == "FAILED" and "-1<=min_val_gain<1" in failed.message, failed.message
    bad = grpcurl_call(grpcurl, flow["registry_target"], method,
                       {"scenario": "planted", "labels_uri": str(flow["snapshot_path"]),
                        "params": {"verdict_fraction": "1"}}, ADMIN)
    failed, _ = wait_job(flow, bad.get("job_id", bad.get("jobId")))
    assert _state_name(failed.state) == "FAILED" and "0<=verdict_fraction<1" in failed.message, failed.message
