"""Triton Inference Server from the `nvidia-pytriton` wheel of the model env, serving a plain model repository.

Triton's Python backend embeds the interpreter it finds, so it must run from the model env (numpy<2):
numpy 2 on its path makes every output come back empty. This module therefore asks the *model* interpreter
where its libpython and pytriton live, and never lets the services env leak into Triton's environment.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from services.common.settings import project_pythonpath
from services.stack.components import Component, StackError
from services.stack.settings import StackSettings

log = logging.getLogger(__name__)

MODEL_ENV_HINT = "the model env is missing or broken: run scripts/setup_env.sh model"
# Asked of the model interpreter; find_spec/metadata avoid importing pytriton or numpy (fast, no side effects).
_PROBE = r"""
import importlib.metadata as md, importlib.util, json, os, sys, sysconfig
spec = importlib.util.find_spec("pytriton")
print(json.dumps({
    "libdir": sysconfig.get_config_var("LIBDIR"),
    "pytriton_dir": list(spec.submodule_search_locations)[0] if spec else None,
    "python_version": "%d.%d" % sys.version_info[:2],
    "numpy": md.version("numpy") if importlib.util.find_spec("numpy") else None,
    "prefix": sys.prefix,
}))
"""


@dataclass(frozen=True)
class ModelEnv:
    """Where the model env keeps what Triton needs."""

    libdir: Path
    pytriton_dir: Path
    python_version: str
    numpy: str | None
    prefix: Path

    @property
    def tritonserver(self) -> Path:
        return self.pytriton_dir / "tritonserver" / "bin" / "tritonserver"

    @property
    def bundled_libs(self) -> Path:
        # auditwheel puts the wheel's shared libraries next to the package.
        return self.pytriton_dir.parent / "nvidia_pytriton.libs"

    @property
    def stub(self) -> Path:
        return self.pytriton_dir / "tritonserver" / "python_backend_stubs" / self.python_version / \
            "triton_python_backend_stub"


def probe_model_env(model_python: Path) -> ModelEnv:
    if not Path(model_python).exists():
        raise StackError("triton", f"model env interpreter {model_python} does not exist", hint=MODEL_ENV_HINT)
    try:
        out = subprocess.run([str(model_python), "-c", _PROBE], capture_output=True, text=True, timeout=60,
                             env=_clean_python_env(os.environ), check=True).stdout
        info = json.loads(out.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        raise StackError("triton", f"could not query the model env ({model_python}): {exc}",
                         hint=MODEL_ENV_HINT) from None
    if not info["pytriton_dir"]:
        raise StackError("triton", f"nvidia-pytriton is not installed in {model_python}", hint=MODEL_ENV_HINT)
    env = ModelEnv(libdir=Path(info["libdir"]), pytriton_dir=Path(info["pytriton_dir"]),
                   python_version=info["python_version"], numpy=info["numpy"], prefix=Path(info["prefix"]))
    if env.numpy and int(env.numpy.split(".")[0]) >= 2:
        raise StackError("triton", f"numpy {env.numpy} in the model env; Triton's Python backend needs numpy<2 "
                         "(numpy 2 makes every output empty)", hint=MODEL_ENV_HINT)
    return env


def _clean_python_env(base: os._Environ | dict[str, str]) -> dict[str, str]:
    # Anything that points an interpreter at the services env (numpy 2) must not reach the model env.
    return {k: v for k, v in base.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}


def triton_env(model_env: ModelEnv, base: dict[str, str], services_prefix: Path | None) -> dict[str, str]:
    """Environment for tritonserver: the model env's bin first on PATH, its libpython and bundled libs loadable."""
    env = _clean_python_env(base)
    model_bin = str(model_env.prefix / "bin")
    drop = {model_bin}
    if services_prefix is not None and services_prefix != model_env.prefix:
        drop.add(str(services_prefix / "bin"))
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p not in drop]
    env["PATH"] = os.pathsep.join([model_bin, *path])
    ld = [str(model_env.libdir), str(model_env.bundled_libs)]
    if env.get("LD_LIBRARY_PATH"):
        ld.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(ld)
    env["VIRTUAL_ENV"] = str(model_env.prefix)
    env["PYTHONPATH"] = project_pythonpath()  # the Python backend imports `training` from this checkout
    # Every torch model in Triton (qanchor, text_encoder): OpenMP threads that spin while idle burn the CPU other
    # models and requests need; on a busy 2-core host that made one SmolLM2 call ~10x slower (docs/serving_model.md).
    # QANCHOR_CPU_WAIT=spin for a host whose cores Triton owns (training/export/cpu_wait.py).
    from training.export.cpu_wait import apply as apply_cpu_wait

    apply_cpu_wait(env)
    return env


def repository_has_models(repo: Path) -> bool:
    """True when some model folder holds a config.pbtxt (then Triton is told to load everything at start)."""
    return repo.is_dir() and any((d / "config.pbtxt").is_file() for d in repo.iterdir() if d.is_dir())


def render_triton_command(settings: StackSettings, model_env: ModelEnv, backends: Path, repo: Path,
                          log_file: Path) -> list[str]:
    host = settings.host
    cmd = [
        str(model_env.tritonserver),
        f"--model-repository={repo}",
        f"--backend-directory={backends}",
        f"--http-address={host}", f"--http-port={settings.port('triton_http')}",
        f"--grpc-address={host}", f"--grpc-port={settings.port('triton_grpc')}",
        f"--metrics-address={host}", f"--metrics-port={settings.port('triton_metrics')}",
        # explicit: clients (the registry, tests) load and unload models at run time without a restart.
        "--model-control-mode=explicit",
        f"--exit-timeout-secs={settings.triton_exit_timeout_s}",
        # CPU machines: no pinned host memory to reserve (avoids a warning and ~256 MB).
        "--pinned-memory-pool-byte-size=0",
        f"--log-file={log_file}",
    ]
    if repository_has_models(repo):
        cmd.append("--load-model=*")
    return cmd


class Triton(Component):
    name = "triton"
    hints = [
        (r"libpython3\.\d+\.so.*cannot open|error while loading shared libraries",
         "a shared library is missing: the model env's LIBDIR or nvidia_pytriton.libs is not loadable; "
         "run scripts/setup_env.sh model"),
        (r"failed to load|UNAVAILABLE: Internal|Poll failed for model",
         "a model in $QANCHOR_STATE_DIR/model_repository failed to load: fix or remove it, then up again"),
        (r"numpy", "Triton's Python backend must see numpy<2: run it only from the model env"),
    ]
    default_hint = "see the full log with `python -m services.stack logs triton -n 200`"

    def __init__(self, settings: StackSettings) -> None:
        super().__init__(settings)
        self._model_env: ModelEnv | None = None

    @property
    def model_env(self) -> ModelEnv:
        if self._model_env is None:
            self._model_env = probe_model_env(self.settings.model_python)
        return self._model_env

    @property
    def backends(self) -> Path:
        return self.workdir / "backends"

    @property
    def http_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port('triton_http')}"

    def ports(self) -> list[int]:
        s = self.settings
        return [s.port("triton_http"), s.port("triton_grpc"), s.port("triton_metrics")]

    def address(self) -> str:
        return f"grpc {self.settings.host}:{self.settings.port('triton_grpc')} http {self.http_url}"

    def prepare(self) -> None:
        self.layout.model_repository.mkdir(parents=True, exist_ok=True)
        self.ensure_backends()

    def ensure_backends(self) -> None:
        """Copy the wheel's backends and put the interpreter-matched Python stub where Triton looks for it."""
        env = self.model_env
        if not env.tritonserver.exists():
            raise StackError(self.name, f"tritonserver not found at {env.tritonserver}", hint=MODEL_ENV_HINT)
        if not env.stub.exists():
            raise StackError(self.name, f"no Python backend stub for Python {env.python_version} in nvidia-pytriton",
                             hint="the model env must use a Python version pytriton ships a stub for (3.8-3.13)")
        target_stub = self.backends / "python" / "triton_python_backend_stub"
        if target_stub.exists() and target_stub.stat().st_size == env.stub.stat().st_size:
            return
        src = env.pytriton_dir / "tritonserver" / "backends"
        shutil.rmtree(self.backends, ignore_errors=True)
        shutil.copytree(src, self.backends)
        shutil.copy2(env.stub, target_stub)
        target_stub.chmod(0o755)

    def command(self) -> list[str]:
        return render_triton_command(self.settings, self.model_env, self.backends, self.layout.model_repository,
                                     self.log_path)

    def env(self) -> dict[str, str]:
        services_prefix = Path(sys.prefix) if sys.prefix != sys.base_prefix else None
        return triton_env(self.model_env, dict(os.environ), services_prefix)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2.0) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False
