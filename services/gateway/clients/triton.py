"""tritonclient (gRPC) adapter for the `qanchor` model: one request per user with all of its scenarios.

Builds the tensors of the one tensor contract (training.export.contract, docs/gateway.md) from `UserFeatures` with the
shared numpy builder (`services.common.features.build_user_batch_arrays`), sends every request of a call
concurrently with `async_infer`, and bounds the whole wait by the caller's remaining deadline.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from services.common.errors import DeadlineExceeded, Internal, NotFound, QAnchorError, Unavailable
from services.common.features import FeatureSpec, build_user_batch_arrays
from services.gateway.core import ModelRequest, ModelResult
from training.export.contract import ZERO_SHOT, Contract, batched, model_versions
from training.export.versions import UNKNOWN_MODEL_VERSION

log = logging.getLogger("qanchor.gateway.triton")
# The reply's tensors (names, datatypes, which are optional) do not depend on the feature schema.
REPLY = Contract(sources=(), d_enc=0, d_tab=0).outputs


def request_values(req: ModelRequest, spec: FeatureSpec) -> dict[str, object]:
    """The contract's request fields for one user with all of its scenarios."""
    arrays = build_user_batch_arrays([req.user], spec)
    return {
        "user_id": req.user.user_id,
        "feature_version": req.user.feature_version if req.user.found else 0,
        "model_version": req.model_version,
        # Feast stores float16; the contract sends FP16, which halves the bytes and loses nothing.
        "event_vecs": {s.name: arrays.event_vecs[s.name][0] for s in spec.sources},  # [K, d] per source
        "event_mask": {s.name: arrays.event_mask[s.name][0] for s in spec.sources},  # [K]
        "tabular": arrays.tabular[0],  # [D_tab]
        "scenarios": req.scenarios,
        "queries": req.query_texts,
        "prompt_versions": [ZERO_SHOT if p is None else str(p.version) for p in req.prompts],
        "prompt_artifacts": ["" if p is None else p.artifact_uri for p in req.prompts],
        "prompt_shas": ["" if p is None else p.sha256 for p in req.prompts],
    }


def build_inputs(req: ModelRequest, spec: FeatureSpec, batched: bool = False,
                 contract: Contract | None = None) -> list[tgrpc.InferInput]:
    """The request's tensors; `batched` (contract v2) adds the leading batch dimension of 1 to each."""
    contract = contract or Contract.for_feature_spec(spec)
    inputs = []
    for t, value in contract.encode(contract.inputs, request_values(req, spec), batched):
        inp = tgrpc.InferInput(t.name, list(value.shape), t.datatype)
        inp.set_data_from_numpy(value)
        inputs.append(inp)
    return inputs


def parse_result(result: tgrpc.InferResult, n_scenarios: int, requested_model: str,
                 batched: bool = False) -> ModelResult:
    try:
        out = Contract.decode(REPLY, result.as_numpy, batched)
    except ValueError as exc:
        raise Internal(f"model reply is incomplete ({exc}); the model does not follow docs/gateway.md") from None
    emb = out["embedding"]
    if emb.ndim != 2 or emb.shape[0] != n_scenarios:
        raise Internal(f"model returned EMBEDDING of shape {list(emb.shape)}, "
                       f"expected [{n_scenarios}, D]; the model does not follow docs/gateway.md")
    return ModelResult(
        embeddings=emb.astype(np.float32, copy=False),
        cache_hit=bool(out["cache_hit"]),
        status=[int(x) for x in out["status"]] if out["status"] is not None else [0] * n_scenarios,
        errors=out["errors"] or [""] * n_scenarios,
        model_version=out["model_version"] or requested_model,
    )


def _text(x: object) -> str:
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)


class TritonModelClient:
    """Implements `services.gateway.core.ModelClient` over tritonclient gRPC."""

    def __init__(self, url: str, spec: FeatureSpec, model_name: str = "qanchor") -> None:
        self.url = url
        self.spec = spec
        self.model_name = model_name
        self.contract = Contract.for_feature_spec(spec)
        self._client = tgrpc.InferenceServerClient(url=url)
        # Contract v1 or v2 (leading batch dimension, Triton's dynamic batcher): read from the model's config on
        # first use and again at every readiness check, so a reload that switches contracts is picked up.
        self._batched: bool | None = None

    def _is_batched(self, timeout_s: float) -> bool:
        if self._batched is None:
            cfg = self._client.get_model_config(self.model_name, as_json=True, client_timeout=max(timeout_s, 0.05))
            self._batched = batched(cfg)
        return self._batched

    def _inputs(self, req: ModelRequest) -> list[tgrpc.InferInput]:
        return build_inputs(req, self.spec, bool(self._batched), self.contract)

    def _parse(self, result: tgrpc.InferResult, req: ModelRequest) -> ModelResult:
        return parse_result(result, len(req.scenarios), req.model_version, bool(self._batched))

    def infer(self, requests: Sequence[ModelRequest], timeout_s: float) -> list[ModelResult | QAnchorError]:
        try:
            self._is_batched(timeout_s)
        except InferenceServerException as exc:
            return [self._error(exc)] * len(requests)
        if len(requests) == 1:
            # Blocking call for the common case: grpc's future API starts a channel spin thread whenever no
            # other call is in flight, which cost ~5 ms per call on a 2-core machine (profiled).
            return [self._infer_one(requests[0], timeout_s)]
        return self._infer_many(requests, timeout_s)

    def _infer_one(self, req: ModelRequest, timeout_s: float) -> ModelResult | QAnchorError:
        try:
            result = self._client.infer(self.model_name, self._inputs(req), client_timeout=timeout_s)
            return self._parse(result, req)
        except InferenceServerException as exc:
            return self._error(exc)
        except QAnchorError as exc:
            return exc

    def _infer_many(self, requests: Sequence[ModelRequest], timeout_s: float) -> list[ModelResult | QAnchorError]:
        outcomes: list[ModelResult | QAnchorError | None] = [None] * len(requests)
        done = threading.Event()
        pending = [len(requests)]
        lock = threading.Lock()

        def finish(i: int, outcome: ModelResult | QAnchorError) -> None:
            outcomes[i] = outcome
            with lock:
                pending[0] -= 1
                if pending[0] == 0:
                    done.set()

        for i, req in enumerate(requests):
            def callback(result: tgrpc.InferResult | None, error: InferenceServerException | None,
                         i: int = i, req: ModelRequest = req) -> None:
                try:
                    if error is not None:
                        finish(i, self._error(error))
                    else:
                        finish(i, self._parse(result, req))
                except QAnchorError as exc:
                    finish(i, exc)
                except Exception as exc:  # a callback that raises would leave the call waiting forever
                    finish(i, Internal(f"cannot read the model's reply: {exc!r}"))

            try:
                self._client.async_infer(self.model_name, self._inputs(req), callback,
                                         outputs=None, client_timeout=timeout_s)
            except InferenceServerException as exc:
                finish(i, self._error(exc))
        # Callbacks carry the client_timeout; the extra second only guards against a lost callback.
        if not done.wait(timeout_s + 1.0):
            raise DeadlineExceeded(f"model server {self.url} did not answer within {timeout_s * 1000:.0f} ms")
        return [o if o is not None else Internal("no model outcome") for o in outcomes]

    def _error(self, exc: InferenceServerException) -> QAnchorError:
        status = str(exc.status() or "")
        message = exc.message() if hasattr(exc, "message") else str(exc)
        if "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in str(message):
            return DeadlineExceeded(f"the model did not answer before the deadline ({message}); retry with a "
                                    "longer deadline")
        if "UNAVAILABLE" in status:
            return Unavailable(f"model server {self.url} is unreachable ({message}); retry with backoff")
        if UNKNOWN_MODEL_VERSION in str(message):  # the model answered: this version is not published there
            return NotFound(f"{message} (model server {self.url})")
        if "NOT_FOUND" in status or "unknown model" in str(message).lower():
            return Unavailable(f"model {self.model_name!r} is not loaded on {self.url} ({message}); check the "
                               "model repository and the Triton log")
        log.error("event=triton_error status=%s message=%r", status, message)
        return Internal(f"model server error {status}: {message}")

    def known_model_versions(self) -> set[str]:
        """Versions the model declares in config.pbtxt `parameters { key: "model_versions" }` (comma list)."""
        return set(model_versions(self._client.get_model_config(self.model_name, as_json=True, client_timeout=5.0)))

    def ready(self) -> bool:
        try:
            up = bool(self._client.is_model_ready(self.model_name, client_timeout=2.0))
            if up:
                self._batched = batched(self._client.get_model_config(self.model_name, as_json=True,
                                                                      client_timeout=2.0))
            return up
        except InferenceServerException:
            return False

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True)
class ServedCounts:
    """Triton's counters for one model, summed over its loaded versions; they restart at 0 when it (re)loads."""

    inferences: int  # batch rows inferred (a request of a batched model counts its rows)
    executions: int  # model executions: one dynamically batched execute serves several requests
    successes: int  # requests answered without error


def served_counts(client: tgrpc.InferenceServerClient, model_name: str) -> ServedCounts:
    """Read `model_name`'s counters from Triton's statistics extension (`get_inference_statistics`)."""
    stats = client.get_inference_statistics(model_name, as_json=True).get("model_stats", [])
    return ServedCounts(
        inferences=sum(int(s.get("inference_count", 0)) for s in stats),
        executions=sum(int(s.get("execution_count", 0)) for s in stats),
        successes=sum(int(s.get("inference_stats", {}).get("success", {}).get("count", 0)) for s in stats))
