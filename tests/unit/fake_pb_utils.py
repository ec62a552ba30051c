"""A stand-in for Triton's `triton_python_backend_utils`, enough to run our Python-backend model files in a unit test
(requests are dicts of numpy arrays). The real server runs them in tests/integration."""
from __future__ import annotations

import types

import numpy as np


class Tensor:
    def __init__(self, name, array):
        self._name, self._a = name, np.asarray(array)

    def name(self):
        return self._name

    def as_numpy(self):
        return self._a


class InferenceResponse:
    def __init__(self, output_tensors=(), error=None):
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
        self.error = error


class TritonError:
    def __init__(self, msg):
        self.msg = msg


def module() -> types.ModuleType:
    m = types.ModuleType("triton_python_backend_utils")
    m.Tensor, m.InferenceResponse, m.TritonError, m.TritonModelException = Tensor, InferenceResponse, TritonError, \
        RuntimeError
    m.get_input_tensor_by_name = lambda req, name: Tensor(name, req[name]) if name in req else None
    m.get_output_config_by_name = lambda cfg, name: next(o for o in cfg["output"] if o["name"] == name)
    m.triton_string_to_numpy = lambda s: {"TYPE_FP16": np.float16, "TYPE_FP32": np.float32}[s]
    return m
