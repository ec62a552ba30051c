"""A second, private stack: idempotent `up`, the CLI's status exit codes, and `down` leaving no process and
no listening port (Triton's Python-backend stub included)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import psutil
import pytest
import tritonclient.grpc as grpcclient

from services.stack import Stack
from services.stack.procs import port_open

from conftest import DEFAULT_TEST_PORT_BASE, integration_settings

pytestmark = pytest.mark.integration

# Far enough from the session stack's base that no offset (max +93) overlaps.
PORT_SHIFT = 300


def test_up_twice_then_down_leaves_nothing(tmp_path) -> None:
    base = int(os.environ.get("QANCHOR_TEST_PORT_BASE", DEFAULT_TEST_PORT_BASE)) + PORT_SHIFT
    settings = integration_settings(tmp_path / "state", port_base=base)
    stack = Stack(settings)
    processes = ["kafka", "redis", "triton"]
    ports = [p for name in processes for p in stack.components[name].ports()]
    assert not any(port_open(settings.host, p) for p in ports), "ports of the private stack are taken"
    env = {**os.environ, "QANCHOR_STATE_DIR": str(settings.state_dir), "QANCHOR_PORT_BASE": str(base)}
    cli = [sys.executable, "-m", "services.stack"]
    try:
        first = stack.up(processes)
        assert [r.outcome for r in first] == ["started"] * 3
        pids = {name: stack.record(name).pid for name in processes}
        assert all(port_open(settings.host, p) for p in ports)

        # A model gives Triton a child process (the Python backend stub) that `down` must stop too.
        model = settings.layout.model_repository / "stack_noop"
        (model / "1").mkdir(parents=True)
        (model / "config.pbtxt").write_text(textwrap.dedent("""\
            name: "stack_noop"
            backend: "python"
            max_batch_size: 0
            input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
            output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]
        """))
        (model / "1" / "model.py").write_text(textwrap.dedent("""\
            import triton_python_backend_utils as pb_utils
            class TritonPythonModel:
                def execute(self, requests):
                    return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(
                        r, "X").as_numpy())]) for r in requests]
        """))
        client = grpcclient.InferenceServerClient(stack.endpoints().triton_grpc)
        client.load_model("stack_noop")
        client.close()
        family = {p.pid for name in processes for p in psutil.Process(pids[name]).children(recursive=True)}
        family |= set(pids.values())
        assert len(family) > len(processes)  # at least the stub

        second = stack.up(processes)
        assert [r.outcome for r in second] == ["already healthy"] * 3
        assert {name: stack.record(name).pid for name in processes} == pids

        status = subprocess.run([*cli, "status", *processes], env=env, capture_output=True, text=True, timeout=120)
        assert status.returncode == 0, status.stdout + status.stderr
        for name in processes:
            assert f"{name} " in status.stdout and str(pids[name]) in status.stdout

        down = subprocess.run([*cli, "down"], env=env, capture_output=True, text=True, timeout=180)
        assert down.returncode == 0, down.stdout + down.stderr
    finally:
        stack.down()

    assert [p for p in ports if port_open(settings.host, p)] == []
    alive = [pid for pid in family if psutil.pid_exists(pid)
             and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    assert all(stack.record(name) is None for name in processes)
    after = subprocess.run([*cli, "status", *processes], env=env, capture_output=True, text=True, timeout=120)
    assert after.returncode == 3 and after.stdout.count(" down ") == 3, after.stdout
