"""Triton Python-backend model `qanchor`: the tensor contract of docs/gateway.md over training.export.runtime.

Runs in the model environment (torch, numpy<2, the repo installed). `initialize` loads every model version listed
in config.pbtxt from `<this version folder>/models/<model_version>/` once (verifying sha256s) into one
`QAnchorRuntime`. A version published into that folder later (`qanchor model publish`) is loaded by the first request
that names it, without a Triton restart or a model-control call (training.export.versions); at most
`max_loaded_versions` are held, the least recently served unloaded first (never the default). `execute`
decodes each request, hands them all to `runtime.serve` (one batched prefix forward for the misses, one batched
suffix forward for all scenarios) and returns one response per request: a malformed request gets its own error,
a bad soft prompt only its scenario's STATUS/ERROR row (style rule 5).

With `max_batch_size: 0` (contract v1, what the gateway sends) Triton hands execute one request at a time; with
`max_batch_size > 0` (contract v2: every tensor carries a leading batch dimension of 1, all inputs ragged) the
dynamic batcher hands it several, and they share forwards. See docs/serving_model.md.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

# The Python-backend stub does not apply PYTHONPATH to its interpreter; the stack sets it to the checkout whose
# `training` package must serve (services/stack/triton.py), so put those entries first by hand. Images that
# pip-install the package leave PYTHONPATH unset and this is a no-op.
for _entry in reversed([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]):
    if _entry not in sys.path:
        sys.path.insert(0, _entry)

# Before torch loads OpenMP (it reads these once): how idle worker threads wait, QANCHOR_CPU_WAIT (passive by
# default: with OpenMP's default spin-wait this stub on a loaded 2-core machine served one scenario in ~19 s instead
# of ~1.5 s, benchmarks/serving/README.md; spin on dedicated cores). training.export.cpu_wait explains both.
from training.export.cpu_wait import apply as _apply_cpu_wait  # noqa: E402  (standard library only)

_apply_cpu_wait()

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from training.export.contract import batched, model_versions, parameter  # noqa: E402  (torch-free)

log = logging.getLogger("qanchor.triton")


def _triton_error(message: str, status: int):
    """A per-request error with the closest Triton code (NOT_FOUND for an unpublished version, INVALID_ARG for a
    malformed request, INTERNAL otherwise); the message carries the exact reason and what to do."""
    name = {3: "INVALID_ARG", 5: "NOT_FOUND"}.get(status, "INTERNAL")
    code = getattr(pb_utils.TritonError, name, None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import torch

        from training.export.artifact import load_model_artifact
        from training.export.runtime import QAnchorRuntime, configure_threads, prepare_for_serving
        from training.export.versions import VersionDirectory

        config = json.loads(args["model_config"])
        threads = configure_threads(int(parameter(config, "torch_threads", "0")))
        self.batched = batched(config)
        device = "cpu"
        if args.get("model_instance_kind") == "GPU" and torch.cuda.is_available():
            device = f"cuda:{args['model_instance_device_id']}"
        root = Path(args["model_repository"]) / args["model_version"] / "models"
        order = model_versions(config)
        if not order:
            raise pb_utils.TritonModelException("config.pbtxt lists no model_versions; re-run python -m "
                                                "training.export")
        loaded = [load_model_artifact(root / v, device=device) for v in order]  # raises on any sha256 mismatch
        # LoRA merged into the base weights (same output, fewer matmuls), stored in the serving dtype: the model
        # config's backbone.compute (auto = bf16 on AMX CPUs and on CUDA; QANCHOR_PRECISION overrides)
        dtypes = {m.model_version: str(prepare_for_serving(m.model)).removeprefix("torch.") for m in loaded}

        def load_published(folder: Path):
            m = load_model_artifact(folder, device=device)  # verifies every sha256 of the manifest first
            prepare_for_serving(m.model)
            return m

        self.versions = VersionDirectory(root, load_published, check=lambda m: self.runtime.check_contract(m))
        self.runtime = QAnchorRuntime(loaded, cache_bytes=int(parameter(config, "cache_bytes", str(1 << 30))),
                                      discover=self.versions,
                                      max_versions=int(parameter(config, "max_loaded_versions", "4")))
        self.contract = self.runtime.contract
        log.info("event=qanchor_ready versions=%s on_disk=%s device=%s dtypes=%s batched=%s cache_bytes=%d "
                 "torch_threads=%d", order, self.versions.on_disk(), device, dtypes, self.batched,
                 self.runtime.cache.max_bytes, threads)

    def _decode(self, request):
        from training.export.runtime import EmbedRequest

        def get(name: str):
            t = pb_utils.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy()

        fields = self.contract.decode(self.contract.inputs, get, self.batched)
        fields["tabular"] = fields["tabular"].astype(np.float32).reshape(-1)
        fields["event_mask"] = {s: m.astype(bool) for s, m in fields["event_mask"].items()}
        return EmbedRequest(**fields)

    def execute(self, requests: list) -> list:
        from training.export.runtime import RequestError

        decoded: list = []
        for request in requests:
            try:
                decoded.append(self._decode(request))
            except Exception as exc:  # this request alone is malformed
                decoded.append(RequestError(f"malformed qanchor request: {exc}"))
        todo = [r for r in decoded if not isinstance(r, RequestError)]
        served = iter(self.runtime.serve(todo)) if todo else iter(())
        results = [r if isinstance(r, RequestError) else next(served) for r in decoded]
        return [self._response(r) for r in results]

    def _response(self, res):
        from training.export.runtime import RequestError

        if isinstance(res, RequestError):
            return pb_utils.InferenceResponse(output_tensors=[], error=_triton_error(str(res), res.status))
        values = {"embedding": res.embedding, "cache_hit": res.cache_hit, "status": res.status,
                  "errors": res.errors, "model_version": res.model_version}
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(t.name, a) for t, a in self.contract.encode(self.contract.outputs, values, self.batched)])

    def finalize(self) -> None:
        log.info("event=qanchor_finalize %s", " ".join(f"{k}={v}" for k, v in self.runtime.stats().items()))
        self.runtime = None
