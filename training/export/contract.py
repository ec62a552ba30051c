"""The `qanchor` Triton tensor contract in one place: tensor names, wire datatypes, dims and the request or
result field each tensor carries (the table in docs/gateway.md, "Triton tensor contract").

torch-free on purpose: the gateway (services env: numpy 2, tritonclient) builds its requests with it, the Triton
models (model env: numpy<2, torch) decode requests and encode responses with it, and the exporter and the reference
contract model render their `config.pbtxt` from it. Adding an input is one line in `Contract.inputs`.

    contract = Contract(sources=(("liked", 32), ("neutral", 16)), d_enc=384, d_tab=16)
    wire = contract.encode(contract.inputs, {"user_id": "u1", ...}, batched=False)   # [(Tensor, np.ndarray)]
    fields = contract.decode(contract.inputs, get_numpy, batched=False)            # {"user_id": "u1", ...}
    text = render_model_config(contract.model_config("qanchor", parameters={...}))  # config.pbtxt

Contract v1 (`max_batch_size: 0`): the shapes below are the full shapes. Contract v2 (`max_batch_size > 0`): every
tensor carries a leading batch dimension of 1 (`batched=True`), inputs are ragged, and Triton's dynamic batcher hands
the model several requests per `execute` (docs/serving_model.md).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

MODEL_NAME = "qanchor"
ZERO_SHOT = "zero-shot"  # PROMPT_VERSION of a scenario served from its query text alone
S = -1  # the scenario dimension: one row per scenario of the request

# Triton wire datatype -> numpy dtype (what tritonclient and pb_utils exchange)
NUMPY = {"BYTES": np.object_, "FP16": np.float16, "FP32": np.float32, "BOOL": np.bool_, "INT64": np.int64,
         "INT32": np.int32}


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str  # Triton wire datatype (NUMPY keys); config.pbtxt spells it TYPE_<...>, BYTES as TYPE_STRING
    dims: tuple[int, ...]  # shape without the v2 batch dimension; S (-1) = one entry per scenario
    field: str  # the request / result field it carries (training.export.runtime.EmbedRequest, EmbedResult)
    source: str = ""  # EVENTS__/MASK__: the behaviour source; the field is then a dict keyed by source
    optional: bool = False  # may be absent: decoding yields the field's empty value ("" / [] / None)

    @property
    def config_type(self) -> str:
        return "TYPE_STRING" if self.datatype == "BYTES" else f"TYPE_{self.datatype}"


@dataclass(frozen=True)
class Contract:
    sources: tuple[tuple[str, int], ...]  # (source name, K events) in the model's source order
    d_enc: int  # event-vector width (the sentence encoder's)
    d_tab: int  # tabular statistics width
    out_dim: int = 128  # embedding width

    @property
    def inputs(self) -> tuple[Tensor, ...]:
        per_source = [t for name, k in self.sources for t in (
            Tensor(f"EVENTS__{name}", "FP16", (k, self.d_enc), "event_vecs", name),  # FP16: as Feast stores them
            Tensor(f"MASK__{name}", "BOOL", (k,), "event_mask", name))]
        return (Tensor("USER_ID", "BYTES", (1,), "user_id"),
                Tensor("FEATURE_VERSION", "INT64", (1,), "feature_version"),  # 0 = cold start
                Tensor("MODEL_VERSION", "BYTES", (1,), "model_version", optional=True),  # "" = the default
                *per_source,
                Tensor("TABULAR", "FP32", (self.d_tab,), "tabular"),
                Tensor("SCENARIO", "BYTES", (S,), "scenarios", optional=True),
                Tensor("QUERY_TEXT", "BYTES", (S,), "queries", optional=True),
                Tensor("PROMPT_VERSION", "BYTES", (S,), "prompt_versions", optional=True),
                Tensor("PROMPT_ARTIFACT", "BYTES", (S,), "prompt_artifacts", optional=True),
                Tensor("PROMPT_SHA256", "BYTES", (S,), "prompt_shas", optional=True))

    @property
    def outputs(self) -> tuple[Tensor, ...]:
        # STATUS, ERROR and MODEL_VERSION are optional for a model: the gateway then assumes all-OK and the
        # requested version.
        return (Tensor("EMBEDDING", "FP32", (S, self.out_dim), "embedding"),
                Tensor("CACHE_HIT", "BOOL", (1,), "cache_hit"),
                Tensor("STATUS", "INT32", (S,), "status", optional=True),
                Tensor("ERROR", "BYTES", (S,), "errors", optional=True),
                Tensor("MODEL_VERSION", "BYTES", (1,), "model_version", optional=True))

    @classmethod
    def for_input(cls, input_cfg: Any, out_dim: int) -> "Contract":
        """The contract of a model with this input config (training.config.InputConfig: sources and K, widths)."""
        return cls(tuple((s.name, s.k) for s in input_cfg.sources), input_cfg.d_enc, input_cfg.d_tab, out_dim)

    @classmethod
    def for_model(cls, model: Any) -> "Contract":
        """The contract a QAnchorModel serves: its inputs and the width of what it reads out (`embedding_dim`)."""
        return cls.for_input(model.cfg.input, model.embedding_dim)

    @classmethod
    def for_feature_spec(cls, spec: Any, out_dim: int = 128) -> "Contract":
        """The contract for a feature schema (services.common.features.FeatureSpec, from sources.yaml)."""
        return cls(tuple((s.name, s.k) for s in spec.sources), spec.encoder_dim, spec.tabular_dim, out_dim)

    # ---- wire encoding ---------------------------------------------------------------------------------------
    @staticmethod
    def encode(tensors: Iterable[Tensor], values: Mapping[str, Any], batched: bool = False
               ) -> list[tuple[Tensor, np.ndarray]]:
        """Field values -> wire arrays, in contract order. Per-source fields are dicts keyed by source name;
        BYTES fields are str (dims [1]) or lists of str; v2 (`batched`) adds the leading batch dimension of 1."""
        out = []
        for t in tensors:
            value = values[t.field]
            if t.source:
                value = value[t.source]
            if t.datatype == "BYTES":
                texts = [value] if isinstance(value, str) else list(value)
                arr = np.array([s.encode("utf-8") for s in texts], dtype=np.object_).reshape(-1)
            else:
                arr = np.asarray(value, dtype=NUMPY[t.datatype])
                if t.dims == (1,):
                    arr = arr.reshape(1)
            out.append((t, arr[None] if batched else arr))
        return out

    @staticmethod
    def decode(tensors: Iterable[Tensor], get: Callable[[str], np.ndarray | None], batched: bool = False
               ) -> dict[str, Any]:
        """Wire arrays (`get(name)` -> array or None) -> field values: dims [1] become a str / int / bool, other
        BYTES tensors a list of str, numeric tensors stay arrays. A missing required tensor raises ValueError."""
        fields: dict[str, Any] = {}
        for t in tensors:
            arr = get(t.name)
            if arr is None:
                if not t.optional:
                    raise ValueError(f"input {t.name} is missing (docs/gateway.md lists every tensor)")
                value: Any = "" if t.dims == (1,) and t.datatype == "BYTES" else [] if t.datatype == "BYTES" else None
            else:
                arr = np.asarray(arr)
                if batched:
                    arr = arr[0]
                if t.datatype == "BYTES":
                    texts = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in arr.reshape(-1)]
                    value = (texts[0] if texts else "") if t.dims == (1,) else texts
                elif t.dims == (1,):
                    value = arr.reshape(-1)[0].item()
                else:
                    value = arr.astype(NUMPY[t.datatype], copy=False)
            if t.source:
                fields.setdefault(t.field, {})[t.source] = value
            else:
                fields[t.field] = value
        return fields

    # ---- config.pbtxt ----------------------------------------------------------------------------------------
    def model_config(self, name: str = MODEL_NAME, *, max_batch_size: int = 0, max_queue_delay_us: int = 0,
                     instance_kind: str = "cpu", instances: int = 1, parameters: Mapping[str, str] | None = None,
                     specific_version: int | None = None):
        """The Triton `ModelConfig` message (tritonclient's model_config_pb2) of a Python-backend model speaking
        this contract. `max_batch_size > 0` is contract v2: ragged inputs and the dynamic batcher."""
        from tritonclient.grpc import model_config_pb2 as mc

        cfg = mc.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
        v2 = max_batch_size > 0
        for t in self.inputs:
            cfg.input.add(name=t.name, data_type=mc.DataType.Value(t.config_type), dims=list(t.dims),
                          allow_ragged_batch=v2)  # every v2 request may have its own S
        for t in self.outputs:
            cfg.output.add(name=t.name, data_type=mc.DataType.Value(t.config_type), dims=list(t.dims))
        if v2:
            cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
        kind = mc.ModelInstanceGroup.KIND_GPU if instance_kind == "gpu" else mc.ModelInstanceGroup.KIND_CPU
        cfg.instance_group.add(kind=kind, count=instances)
        if specific_version is not None:
            cfg.version_policy.specific.versions.append(specific_version)
        for key, value in (parameters or {}).items():
            cfg.parameters[key].string_value = str(value)
        return cfg

    @classmethod
    def from_model_config(cls, config: Mapping[str, Any] | Any) -> "Contract":
        """The contract a model config declares (Triton's JSON form handed to `initialize`, or a ModelConfig)."""
        cfg = _as_dict(config)
        dims = {i["name"]: [int(d) for d in i.get("dims", [])] for i in cfg.get("input", [])}
        out_dims = {o["name"]: [int(d) for d in o.get("dims", [])] for o in cfg.get("output", [])}
        sources = tuple((n[len("EVENTS__"):], d[0]) for n, d in dims.items() if n.startswith("EVENTS__"))
        d_enc = next((d[1] for n, d in dims.items() if n.startswith("EVENTS__")), 384)
        return cls(sources, d_enc, dims.get("TABULAR", [0])[0], out_dims.get("EMBEDDING", [S, 128])[-1])


def batched(config: Mapping[str, Any] | Any) -> bool:
    """True for contract v2 (a leading batch dimension on every tensor): `max_batch_size > 0`."""
    return int(_as_dict(config).get("max_batch_size", 0) or 0) > 0


def _as_dict(config: Mapping[str, Any] | Any) -> dict[str, Any]:
    """Triton's JSON model config (dict), a ModelConfig message, or a `{"config": {...}}` wrapper -> dict."""
    if hasattr(config, "DESCRIPTOR"):
        from google.protobuf import json_format

        return json_format.MessageToDict(config, preserving_proto_field_name=True)
    cfg = dict(config)
    return dict(cfg["config"]) if "config" in cfg and isinstance(cfg["config"], Mapping) else cfg


def parameter(config: Mapping[str, Any] | Any, name: str, default: str = "") -> str:
    """A `parameters { key: name value { string_value } }` entry of a model config ("" counts as unset)."""
    value = _as_dict(config).get("parameters", {}).get(name, {})
    return value.get("string_value", "") or default


def model_versions(config: Mapping[str, Any] | Any) -> list[str]:
    """The model versions a `qanchor` config serves (parameter model_versions, comma list; first = default)."""
    return [v.strip() for v in parameter(config, "model_versions").split(",") if v.strip()]


HEADER = "# Generated by {tool}; re-run it instead of editing.\n"


def render_model_config(config, tool: str = "python -m training.export") -> str:
    """config.pbtxt text of a ModelConfig message (protobuf text format)."""
    from google.protobuf import text_format

    return HEADER.format(tool=tool) + text_format.MessageToString(config)


def read_model_config(path_or_text: Path | str):
    """Parse a config.pbtxt (a path, or its text) into tritonclient's ModelConfig message."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    text = path_or_text.read_text() if isinstance(path_or_text, Path) else path_or_text
    return text_format.Parse(text, mc.ModelConfig())


def config_json(path: Path) -> dict[str, Any]:
    """A config.pbtxt as the JSON dict Triton hands a Python model's `initialize` (for tests and tools)."""
    return json.loads(json.dumps(_as_dict(read_model_config(path))))


__all__ = ["MODEL_NAME", "NUMPY", "S", "ZERO_SHOT", "Contract", "Tensor", "batched", "config_json", "model_versions",
           "parameter", "read_model_config", "render_model_config"]
