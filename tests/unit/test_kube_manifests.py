"""The job backend's pure parts: Job/Service manifests, settings validation, status mapping, the pod entry."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.kube.backend import Phase, job_status
from services.kube.entry import last_metrics, write_result
from services.kube.manifests import (ManifestError, PretrainSpec, TuningJobSpec, pretrain_job, tuning_job,
                                     tuning_job_name)
from services.kube.settings import KubeJobSettings
from services.tuning.pod import parse_progress, progress_line

JOB_ID = "0b6c2c9e-3f0a-4c1e-9a43-5f1e2d3c4b5a"


def _settings(**kw: object) -> KubeJobSettings:
    base = dict(image="qanchor-model:t", gpus=2, cpu="3", memory="12Gi", artifacts_claim="art",
                node_selector={"nvidia.com/gpu.present": "true"}, ttl_seconds_after_finished=120,
                tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                service_account="runner", priority_class="batch-low")
    return KubeJobSettings(**{**base, **kw})


def test_tuning_job_manifest() -> None:
    s = _settings()
    job = tuning_job(s, TuningJobSpec(JOB_ID, "planted", "Q?", Path("/var/lib/qanchor/artifacts/s.npz"), "m1",
                                      {"steps": "5"}, "tuning-worker@w1", 7200))
    assert job["metadata"]["name"] == f"qanchor-tune-{JOB_ID}" == tuning_job_name(JOB_ID.upper())
    labels = job["metadata"]["labels"]
    assert labels["qanchor.dev/job-id"] == JOB_ID and labels["app.kubernetes.io/component"] == "tuning-job"
    assert job["spec"]["template"]["metadata"]["labels"] == labels  # the pods carry the same labels
    assert job["metadata"]["annotations"]["qanchor.dev/submitted-by"] == "tuning-worker@w1"
    spec = job["spec"]
    assert (spec["ttlSecondsAfterFinished"], spec["activeDeadlineSeconds"], spec["backoffLimit"]) == (120, 7200, 0)
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "runner"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and pod["priorityClassName"] == "batch-low"
    c = pod["containers"][0]
    # One GPU per tuning pod whatever gpus says: a soft prompt is tuned on one device.
    assert c["resources"] == {"requests": {"cpu": "3", "memory": "12Gi"},
                              "limits": {"memory": "12Gi", "nvidia.com/gpu": "1"}}
    assert c["command"][:3] == ["python", "-m", "services.tuning.pod"]
    assert json.loads(c["command"][c["command"].index("--params") + 1]) == {"steps": "5"}
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["TUNING_ARTIFACT_DIR"] == "/var/lib/qanchor/artifacts" and env["TUNING_DEVICE"] == "auto"
    assert {"name": "artifacts", "mountPath": "/var/lib/qanchor/artifacts"} in c["volumeMounts"]
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    with pytest.raises(ManifestError):
        tuning_job_name("not a uuid/with slash")


def test_pretraining_one_gpu_is_a_plain_job() -> None:
    job, service = pretrain_job(_settings(), PretrainSpec("r1", ["--config", "smollm2"], gpus_per_node=1))
    assert service is None and "completionMode" not in job["spec"]
    cmd = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[:3] == ["python", "-m", "services.kube.entry"]
    assert cmd[cmd.index("--") + 1:] == ["python", "-m", "training.pretrain", "--config", "smollm2", "--out",
                                         "/var/lib/qanchor/artifacts/runs/r1"]


def test_the_event_log_is_mounted_read_only_where_offline_pretraining_looks() -> None:
    """QANCHOR_KUBE_EVENT_LOG_CLAIM: `train submit -- --dataset offline` reads the log in the pod (its default root is
    QANCHOR_EVENT_LOG_DIR), never writes it; without the claim nothing is mounted."""
    job, _ = pretrain_job(_settings(event_log_claim="qanchor-eventlog"),
                          PretrainSpec("r2", ["--dataset", "offline"], gpus_per_node=1))
    pod = job["spec"]["template"]["spec"]
    assert {"name": "eventlog", "persistentVolumeClaim": {"claimName": "qanchor-eventlog", "readOnly": True}} in \
        pod["volumes"]
    c = pod["containers"][0]
    assert {"name": "eventlog", "mountPath": "/var/lib/qanchor/eventlog", "readOnly": True} in c["volumeMounts"]
    env = [e for e in c["env"] if e["name"] == "QANCHOR_EVENT_LOG_DIR"]
    assert env == [{"name": "QANCHOR_EVENT_LOG_DIR", "value": "/var/lib/qanchor/eventlog"}]
    # an explicit QANCHOR_KUBE_ENV entry wins, once
    job, _ = pretrain_job(_settings(event_log_claim="c", event_log_mount=Path("/log"),
                                    env={"QANCHOR_EVENT_LOG_DIR": "/log/sub"}), PretrainSpec("r3", [], gpus_per_node=1))
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert [e["value"] for e in c["env"] if e["name"] == "QANCHOR_EVENT_LOG_DIR"] == ["/log/sub"]
    job, _ = pretrain_job(_settings(), PretrainSpec("r4", [], gpus_per_node=1))
    pod = job["spec"]["template"]["spec"]
    assert "eventlog" not in {v["name"] for v in pod["volumes"]}
    assert "QANCHOR_EVENT_LOG_DIR" not in {e["name"] for e in pod["containers"][0]["env"]}


def test_pretraining_many_gpus_on_one_node_uses_torchrun_standalone() -> None:
    job, service = pretrain_job(_settings(), PretrainSpec("r2", ["--config", "x"], gpus_per_node=4))
    cmd = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert service is None and cmd[cmd.index("--") + 1:][:3] == ["torchrun", "--standalone", "--nproc-per-node=4"]
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"


def test_multi_node_pretraining_is_an_indexed_job_with_a_headless_service() -> None:
    job, service = pretrain_job(_settings(), PretrainSpec("big-1", ["--config", "x"], nodes=3, gpus_per_node=8))
    name = "qanchor-pretrain-big-1"
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == name == service["metadata"]["name"]
    cmd = pod["containers"][0]["command"]
    torchrun = cmd[cmd.index("--") + 1:]
    assert torchrun[:5] == ["torchrun", "--nnodes=3", "--nproc-per-node=8", "--rdzv-backend=c10d",
                            f"--rdzv-endpoint={name}-0.{name}:29500"]
    assert pod["containers"][0]["ports"] == [{"name": "c10d", "containerPort": 29500}]
    svc = service["spec"]
    assert svc["clusterIP"] == "None" and svc["publishNotReadyAddresses"] is True
    assert svc["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    # Any rank exiting non-zero fails the Job at once; drains do not count.
    assert [r["action"] for r in spec["podFailurePolicy"]["rules"]] == ["Ignore", "FailJob"]


@pytest.mark.parametrize("spec,match", [
    (PretrainSpec("Bad_Run", ["--config", "x"]), "run id"),
    (PretrainSpec("r" * 41, ["--config", "x"]), "at most 40"),
    (PretrainSpec("r1", ["--out", "/x"]), "do not pass --out"),
    (PretrainSpec("r1", ["--config", "x"], nodes=2, gpus_per_node=0), "at least one GPU"),
    (PretrainSpec("r1", ["--config", "x"], nodes=0), "nodes must be"),
])
def test_pretraining_refuses_what_it_cannot_run(spec: PretrainSpec, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        pretrain_job(_settings(), spec)


@pytest.mark.parametrize("field,value", [
    ("memory", "16 GB"), ("cpu", "lots"), ("gpus", -1),
    ("tolerations", [{"key": "a", "operater": "Exists"}]), ("tolerations", [{"key": "a", "operator": "In"}]),
    ("node_selector", {"bad key!": "x"}),
])
def test_settings_refuse_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        _settings(**{field: value})


def test_settings_read_json_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QANCHOR_KUBE_NODE_SELECTOR", '{"pool": "a100"}')
    monkeypatch.setenv("QANCHOR_KUBE_TOLERATIONS", '[{"key": "gpu", "operator": "Exists"}]')
    s = KubeJobSettings()
    assert s.node_selector == {"pool": "a100"} and s.tolerations == [{"key": "gpu", "operator": "Exists"}]
    local = KubeJobSettings(artifacts_mount=Path("/mnt/a"), local_artifacts_dir=Path("/srv/a"))
    assert local.to_pod_path(Path("/srv/a/x/y.npz")) == Path("/mnt/a/x/y.npz")
    assert local.to_local_path(Path("/mnt/a/p/q")) == Path("/srv/a/p/q")
    with pytest.raises(ValueError):
        local.to_pod_path(Path("/elsewhere/y.npz"))


def _job(status: dict, deleting: bool = False) -> dict:
    meta = {"name": "j", "uid": "u", "labels": {"a": "b"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"completions": 2}, "status": status}


def _cond(kind: str, **kw: str) -> dict:
    return {"type": kind, "status": "True", **kw}


@pytest.mark.parametrize("status,deleting,phase", [
    ({}, False, Phase.PENDING),
    ({"active": 1}, False, Phase.RUNNING),
    ({"conditions": [_cond("SuccessCriteriaMet"), _cond("Complete")], "succeeded": 2}, False, Phase.SUCCEEDED),
    ({"conditions": [_cond("FailureTarget", reason="PodFailurePolicy")]}, False, Phase.FAILED),
    ({"conditions": [{"type": "Complete", "status": "False"}], "active": 1}, False, Phase.RUNNING),
    ({"active": 1}, True, Phase.CANCELLED),
])
def test_job_status_maps_conditions_to_phases(status: dict, deleting: bool, phase: Phase) -> None:
    s = job_status(_job(status, deleting))
    assert s.phase is phase and s.completions == 2 and s.label("a") == "b"
    assert s.terminal == (phase in (Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED))


def test_failed_status_carries_the_reason() -> None:
    s = job_status(_job({"conditions": [_cond("Failed", reason="DeadlineExceeded", message="too long")]}))
    assert s.message == "DeadlineExceeded: too long"


def test_entry_result_keeps_sha_and_path_within_the_message_limit(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5, "val_acc1": 0.4}\nnot json\n')
    assert last_metrics(metrics) == {"val_acc1": 0.4, "step": 2.0, "loss": 1.5}
    out = tmp_path / "term"
    big = {"checkpoint": "/a/checkpoint", "sha256": "f" * 64, "metrics": {f"m{i}": float(i) for i in range(500)}}
    write_result(big, out)
    data = json.loads(out.read_text())
    assert len(out.read_bytes()) <= 4096 and data["sha256"] == "f" * 64 and data["checkpoint"] == "/a/checkpoint"


def test_progress_lines_round_trip_and_other_lines_are_ignored() -> None:
    line = progress_line(0.5, "step 3/6", {"loss": 0.25})
    assert parse_progress(line) == (0.5, "step 3/6", {"loss": 0.25})
    for other in ("ts=1 level=INFO msg=hello", "{not json", '{"message": "no progress key"}', ""):
        assert parse_progress(other) is None
