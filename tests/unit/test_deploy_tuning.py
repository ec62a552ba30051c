"""Tuning worker and training entry points as docker-compose.yml and the Helm chart start them, checked offline.

What these guard (docs/deploy.md, docs/tuning.md):
- the worker starts with `python -m services.tuning` (threads pool, one slot), never `--pool=solo`, which is deaf
  to `celery inspect ping` (the healthcheck / liveness probe) while a job runs;
- it consumes the queue the registry's `send_task` publishes to;
- it sees Triton's model repository read-only at TUNING_MODEL_REPOSITORY (it tunes against the served weights);
- every `python -m <module> --flag` the deployment files run names a module with a `__main__` entry point and
  flags its argument parser declares (the chart once defaulted to `training.tune`, which has none).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from test_deploy_helm import VALUES, _by, _docs, _template, needs_helm
from test_deploy_helpers import REPO, env_dict, interpolate

MODEL_REPOSITORY = "/var/lib/qanchor/model_repository"


@pytest.fixture(scope="module")
def services() -> dict[str, dict]:
    return interpolate(yaml.safe_load((REPO / "docker-compose.yml").read_text()))["services"]


def _entry_point_flags(module: str) -> set[str]:
    """Flags declared by `python -m module`'s argparse parser (module file or package __main__)."""
    path = REPO / Path(*module.split("."))
    source_file = path / "__main__.py" if path.is_dir() else path.with_suffix(".py")
    assert source_file.is_file(), f"{module}: no {source_file.relative_to(REPO)}"
    source = source_file.read_text()
    assert 'if __name__ == "__main__"' in source, f"python -m {module} would import and exit without running"
    return set(re.findall(r'add_argument\(\s*"(--[a-z0-9-]+)"', source))


def _check_python_m(argv: list[str]) -> str:
    assert argv[:2] == ["python", "-m"], argv
    module, flags = argv[2], {a.split("=")[0] for a in argv[3:] if a.startswith("--")}
    unknown = flags - _entry_point_flags(module)
    assert not unknown, f"python -m {module}: {sorted(unknown)} are not options of its parser"
    return module


def _worker_argv(env: dict[str, str], extra: list[str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The `celery worker` argv `python -m services.tuning` builds from this environment (the real function)."""
    from services.tuning.__main__ import worker_argv
    from services.tuning.settings import TuningSettings

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return worker_argv(TuningSettings(), extra)


def _option(argv: list[str], name: str) -> str:
    return argv[len(argv) - 1 - argv[::-1].index(name) + 1]  # last one wins in Celery's parser


# --- docker-compose.yml ------------------------------------------------------------------------------------------

def test_compose_worker_runs_the_threads_pool_on_the_registry_queue(services: dict,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    worker = services["tuning-worker"]
    command = list(worker["command"])
    assert command[:3] == ["python", "-m", "services.tuning"]
    assert not any("solo" in part for part in command)
    argv = _worker_argv(env_dict(worker["environment"]), command[3:], monkeypatch)
    assert "--pool=threads" in argv and "--concurrency=1" in argv
    registry_queue = env_dict(services["registry"]["environment"])["REGISTRY_TUNING_QUEUE"]
    assert registry_queue and _option(argv, "-Q") == registry_queue
    # The healthcheck pings the node name the worker registers under.
    hostname = next(a for a in argv if a.startswith("--hostname="))
    node = hostname.split("=", 1)[1].replace("%h", "$HOSTNAME")
    assert f"-d {node} " in " ".join(worker["healthcheck"]["test"])


def test_compose_worker_mounts_the_triton_model_repository_read_only(services: dict) -> None:
    env = env_dict(services["tuning-worker"]["environment"])
    assert env["TUNING_MODEL_REPOSITORY"] == MODEL_REPOSITORY
    mounts = {v.split(":")[1]: v.split(":") for v in services["tuning-worker"]["volumes"]}
    assert mounts[MODEL_REPOSITORY][0] == "model-repository" and mounts[MODEL_REPOSITORY][2:] == ["ro"]
    # The same named volume model-export writes and Triton serves from.
    for name in ("model-export", "triton"):
        assert f"model-repository:{MODEL_REPOSITORY}" in " ".join(services[name]["volumes"]), name
    assert services["tuning-worker"]["depends_on"]["model-export"]["condition"] == "service_completed_successfully"


def test_compose_model_export_names_a_model_source(services: dict) -> None:
    command = list(services["model-export"]["command"])
    assert _check_python_m(command) == "training.export"
    # training.export requires exactly one source; ingest needs the text_encoder model too.
    assert ("--preset" in command) != ("--checkpoint" in command)
    assert "--text-encoder" in command
    assert "--model-version" in command  # a stable name across re-exports (the file hash is not reproducible)


# --- Helm chart --------------------------------------------------------------------------------------------------

def test_chart_default_commands_are_real_entry_points() -> None:
    export = VALUES["triton"]["export"]
    assert _check_python_m(export["command"] + export["args"]) == "training.export"
    job = VALUES["jobs"]["tuning"]
    assert _check_python_m(job["command"] + job["args"]) == "training.pretrain"
    assert "--out" in job["args"]  # pretrain requires it
    standalone = yaml.safe_load((REPO / "helm" / "jobs" / "pretrain-job.yaml").read_text())
    container = standalone["spec"]["template"]["spec"]["containers"][0]
    assert _check_python_m(container["command"] + container["args"]) == "training.pretrain"


@needs_helm
def test_chart_worker_runs_the_threads_pool_and_sees_the_served_model(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = _docs()
    pod = _by(docs, "Deployment", "qanchor-tuning-worker")["spec"]["template"]["spec"]
    worker = pod["containers"][0]
    assert worker["command"][:3] == ["python", "-m", "services.tuning"]
    assert not any("solo" in part for part in worker["command"])
    env = {e["name"]: e["value"] for e in worker["env"] if "value" in e}
    argv = _worker_argv({k: v for k, v in env.items() if k.startswith("TUNING_")}, worker["command"][3:],
                        monkeypatch)
    assert "--pool=threads" in argv
    registry = _by(docs, "Deployment", "qanchor-registry")["spec"]["template"]["spec"]["containers"][0]
    registry_env = {e["name"]: e.get("value") for e in registry["env"]}
    assert _option(argv, "-Q") == registry_env["REGISTRY_TUNING_QUEUE"] == env["TUNING_QUEUE"]
    # The liveness probe pings the node name the worker registers under.
    assert "--hostname=worker@%h" in argv and "-d worker@$(hostname)" in worker["livenessProbe"]["exec"]["command"][-1]
    assert env["TUNING_MODEL_REPOSITORY"] == MODEL_REPOSITORY
    mount = next(m for m in worker["volumeMounts"] if m["mountPath"] == MODEL_REPOSITORY)
    assert mount["readOnly"] is True
    # Its repository is filled by Triton's own export step: same image, command, args and inputs.
    triton = _by(docs, "Deployment", "qanchor-triton")["spec"]["template"]["spec"]
    (worker_init,) = pod["initContainers"]
    (triton_init,) = triton["initContainers"]
    assert worker_init == triton_init
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mount["name"]]


@needs_helm
def test_chart_export_args_reach_both_pods() -> None:
    args = ["--only", "--text-encoder", "--checkpoint", "/var/lib/qanchor/artifacts/runs/pretrain-1/checkpoint",
            "--model-version=pretrain-1"]
    docs = _docs("--set-json", f"triton.export.args={json.dumps(args)}")
    for name in ("qanchor-triton", "qanchor-tuning-worker"):
        (init,) = _by(docs, "Deployment", name)["spec"]["template"]["spec"]["initContainers"]
        assert init["args"] == args, name


@needs_helm
def test_chart_job_is_pretraining_with_a_run_folder_per_run() -> None:
    docs = _docs("--set", "jobs.tuning.enabled=true", "--set", "jobs.tuning.runId=pt-7")
    container = _by(docs, "Job", "qanchor-tuning-job-pt-7")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "training.pretrain"]
    out = container["args"][container["args"].index("--out") + 1]
    # Kubernetes expands $(VAR) in args from the container's env.
    assert out == "/var/lib/qanchor/artifacts/runs/$(QANCHOR_RUN_ID)"
    assert {"name": "QANCHOR_RUN_ID", "value": "pt-7"} in container["env"]


@needs_helm
def test_chart_refuses_a_training_tune_job() -> None:
    run = _template("--set", "jobs.tuning.enabled=true",
                    "--set-json", 'jobs.tuning.command=["python","-m","training.tune"]', check=False)
    assert run.returncode != 0
    assert "no command-line entry point" in run.stderr and "training.pretrain" in run.stderr, run.stderr


@needs_helm
def test_chart_refuses_an_unpinned_model_version_while_the_worker_exports_too() -> None:
    unpinned = '["--only","--checkpoint","/var/lib/qanchor/artifacts/runs/pretrain-1/checkpoint"]'
    run = _template("--set-json", f"triton.export.args={unpinned}", check=False)
    assert run.returncode != 0
    assert "has no --model-version" in run.stderr, run.stderr
    # Without the worker there is one export per pod and nothing to agree on.
    assert _template("--set-json", f"triton.export.args={unpinned}", "--set", "tuningWorker.enabled=false").stdout
