"""The model image's Triton recipe, run for real on the model env: docker/triton-backends.sh assembles the backend
directory exactly as docker/model.Dockerfile does, and docker/triton-entrypoint.sh starts the bundled tritonserver
with the contract ports on a one-model repository. Checks: ready, one inference through the Python backend (so
the stub, libpython and numpy<2 line up), clean exit on SIGTERM.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL_PY = REPO / ".venv-model" / "bin" / "python"

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not MODEL_PY.exists(), reason="model env missing: run scripts/setup_env.sh model")]

CONFIG = """name: "double"
backend: "python"
max_batch_size: 0
input [{ name: "X", data_type: TYPE_FP32, dims: [ -1 ] }]
output [{ name: "Y", data_type: TYPE_FP32, dims: [ -1 ] }]
instance_group [{ kind: KIND_CPU, count: 1 }]
"""
MODEL = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            y = pb_utils.Tensor("Y", (x * 2).astype(np.float32))
            out.append(pb_utils.InferenceResponse(output_tensors=[y]))
        return out
"""


def _free_base() -> int:
    """A port base whose +0..+2 are free (the contract puts Triton HTTP/gRPC/metrics there)."""
    for base in range(int(os.environ.get("QANCHOR_TEST_DEPLOY_PORT_BASE", 31500)), 32500, 10):
        with socket.socket() as s0, socket.socket() as s1, socket.socket() as s2:
            try:
                for i, s in enumerate((s0, s1, s2)):
                    s.bind(("127.0.0.1", base + i))
                return base
            except OSError:
                continue
    pytest.skip("no free port base between 31500 and 32500")


def _model_env() -> tuple[str, dict[str, str]]:
    info = subprocess.run([str(MODEL_PY), "-c", "import sysconfig;print(sysconfig.get_paths()['purelib']);"
                           "print(sysconfig.get_config_var('LIBDIR'))"], capture_output=True, text=True, check=True)
    site, libdir = info.stdout.split()
    env = dict(os.environ)
    # As the image's ENV: interpreter LIBDIR (libpython for the stub) + the wheel's vendored libraries; the model
    # env's bin first on PATH so the stub's Python finds the env's packages (numpy<2).
    env["LD_LIBRARY_PATH"] = f"{libdir}:{site}/nvidia_pytriton.libs"
    env["PATH"] = f"{MODEL_PY.parent}:{env['PATH']}"
    return site, env


def test_backend_recipe_and_entrypoint_serve_a_python_model(tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient

    site, env = _model_env()
    backends = tmp_path / "opt" / "backends"
    run = subprocess.run(["bash", str(REPO / "docker" / "triton-backends.sh"), site, str(backends)],
                         env={**env, "QANCHOR_TRITON_PYTHON": str(MODEL_PY)}, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert (backends / "python" / "triton_python_backend_stub").is_file()

    bindir = tmp_path / "bin"  # the image's /usr/local/bin/tritonserver symlink
    bindir.mkdir()
    (bindir / "tritonserver").symlink_to(Path(site) / "pytriton" / "tritonserver" / "bin" / "tritonserver")
    repo = tmp_path / "model_repository"
    (repo / "double" / "1").mkdir(parents=True)
    (repo / "double" / "config.pbtxt").write_text(CONFIG)
    (repo / "double" / "1" / "model.py").write_text(MODEL)

    base = _free_base()
    env.update(PATH=f"{bindir}:{env['PATH']}", QANCHOR_PORT_BASE=str(base), QANCHOR_TRITON_MODEL_REPOSITORY=str(repo),
               QANCHOR_TRITON_BACKEND_DIR=str(backends), QANCHOR_TRITON_PINNED_MEMORY_BYTES="0",
               QANCHOR_TRITON_EXIT_TIMEOUT_S="5")
    log = (tmp_path / "triton.log").open("w")
    proc = subprocess.Popen(["bash", str(REPO / "docker" / "triton-entrypoint.sh")], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{base + 1}")
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "triton.log").read_text()[-3000:]
            try:
                if client.is_model_ready("double"):
                    break
            except Exception:  # server still starting
                pass
            assert time.monotonic() < deadline, (tmp_path / "triton.log").read_text()[-3000:]
            time.sleep(0.5)
        x = np.array([1.0, 2.5, -3.0], dtype=np.float32)
        inp = grpcclient.InferInput("X", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("double", [inp]).as_numpy("Y")
        np.testing.assert_array_equal(result, x * 2)  # empty outputs here would mean numpy 2 in the stub's env
        client.close()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the entrypoint exec'd tritonserver: it gets the signal itself
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        log.close()
    assert rc == 0, (tmp_path / "triton.log").read_text()[-3000:]
