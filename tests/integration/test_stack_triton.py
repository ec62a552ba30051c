"""Triton of the local stack: a Python-backend model written into the served repository, loaded at run time
(explicit mode), called over gRPC, numbers compared with numpy; the backend runs the model env's numpy<2."""
from __future__ import annotations

import json
import shutil
import textwrap
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from services.stack import Endpoints

pytestmark = pytest.mark.integration

CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 0
input [
  {{ name: "A" data_type: TYPE_FP32 dims: [ -1 ] }},
  {{ name: "B" data_type: TYPE_FP32 dims: [ -1 ] }}
]
output [
  {{ name: "SUM" data_type: TYPE_FP32 dims: [ -1 ] }},
  {{ name: "DIFF" data_type: TYPE_FP32 dims: [ -1 ] }},
  {{ name: "NUMPY_VERSION" data_type: TYPE_STRING dims: [ 1 ] }}
]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""

MODEL = textwrap.dedent('''\
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            self.version = np.array([np.__version__.encode()], dtype=np.object_)

        def execute(self, requests):
            responses = []
            for request in requests:
                a = pb_utils.get_input_tensor_by_name(request, "A").as_numpy()
                b = pb_utils.get_input_tensor_by_name(request, "B").as_numpy()
                if a.shape != b.shape:  # a bad request fails alone, never the whole batch
                    responses.append(pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"A and B differ in shape: {a.shape} vs {b.shape}")))
                    continue
                responses.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("SUM", (a + b).astype(np.float32)),
                    pb_utils.Tensor("DIFF", (a - b).astype(np.float32)),
                    pb_utils.Tensor("NUMPY_VERSION", self.version),
                ]))
            return responses
''')


def write_model(repo: Path, name: str) -> Path:
    folder = repo / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(CONFIG.format(name=name))
    (folder / "1" / "model.py").write_text(MODEL)
    return folder


def _inputs(a: np.ndarray, b: np.ndarray) -> list[grpcclient.InferInput]:
    inputs = []
    for name, arr in (("A", a), ("B", b)):
        inp = grpcclient.InferInput(name, list(arr.shape), "FP32")
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return inputs


@pytest.fixture
def add_sub_model(stack: Endpoints):
    name = f"stack_add_sub_{uuid.uuid4().hex[:6]}"
    folder = write_model(stack.model_repository, name)
    client = grpcclient.InferenceServerClient(stack.triton_grpc)
    yield client, name
    try:
        client.unload_model(name)
    finally:
        client.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_server_ready_over_both_protocols(stack: Endpoints) -> None:
    # tritonclient's HTTP extra (geventhttpclient) is not in the services env; the HTTP API is plain JSON.
    with urllib.request.urlopen(f"http://{stack.triton_http}/v2/health/ready", timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(f"http://{stack.triton_http}/v2", timeout=5) as resp:
        http_meta = json.load(resp)
    client = grpcclient.InferenceServerClient(stack.triton_grpc)
    assert client.is_server_live() and client.is_server_ready()
    grpc_meta = client.get_server_metadata()
    assert grpc_meta.version == http_meta["version"] and grpc_meta.version.startswith("2.")
    client.close()


def test_load_call_unload_python_backend_model(add_sub_model) -> None:
    client, name = add_sub_model
    assert not client.is_model_ready(name)
    client.load_model(name)
    assert client.is_model_ready(name)

    rng = np.random.default_rng(7)
    a = rng.standard_normal(257).astype(np.float32)
    b = rng.standard_normal(257).astype(np.float32)
    result = client.infer(name, _inputs(a, b))
    np.testing.assert_array_equal(result.as_numpy("SUM"), a + b)
    np.testing.assert_array_equal(result.as_numpy("DIFF"), a - b)
    # The backend must run the model env's numpy (<2): numpy 2 there makes every output empty.
    backend_numpy = result.as_numpy("NUMPY_VERSION")[0].decode()
    assert int(backend_numpy.split(".")[0]) < 2, backend_numpy

    with pytest.raises(InferenceServerException, match="differ in shape"):
        client.infer(name, _inputs(a, b[:10]))
    # ...and the model still serves afterwards.
    again = client.infer(name, _inputs(b, a))
    np.testing.assert_array_equal(again.as_numpy("DIFF"), b - a)

    client.unload_model(name)
    assert not client.is_model_ready(name)
