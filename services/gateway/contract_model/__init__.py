"""Install the `qanchor_contract` model (model.py here) into a Triton model repository.

    python -m services.gateway.contract_model install --repo $QANCHOR_STATE_DIR/model_repository

`config.pbtxt` is generated from `feature_repo/sources.yaml`, so the tensor names and K per source always match
what the gateway sends (docs/gateway.md).
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from services.common.features import FeatureSpec, load_feature_spec

NAME = "qanchor_contract"
MODEL_FILE = Path(__file__).with_name("model.py")


def _tensor(name: str, dtype: str, dims: list[int]) -> str:
    return f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(str(d) for d in dims)} ] }}'


def render_config(spec: FeatureSpec, name: str = NAME, model_versions: str = "contract-v1", dim: int = 128) -> str:
    inputs = [_tensor("USER_ID", "TYPE_STRING", [1]), _tensor("FEATURE_VERSION", "TYPE_INT64", [1]),
              _tensor("MODEL_VERSION", "TYPE_STRING", [1])]
    for s in spec.sources:
        inputs += [_tensor(f"EVENTS__{s.name}", "TYPE_FP16", [s.k, spec.encoder_dim]),
                   _tensor(f"MASK__{s.name}", "TYPE_BOOL", [s.k])]
    inputs += [_tensor("TABULAR", "TYPE_FP32", [spec.tabular_dim])]
    inputs += [_tensor(n, "TYPE_STRING", [-1]) for n in
               ("SCENARIO", "QUERY_TEXT", "PROMPT_VERSION", "PROMPT_ARTIFACT", "PROMPT_SHA256")]
    outputs = [_tensor("EMBEDDING", "TYPE_FP32", [-1, dim]), _tensor("CACHE_HIT", "TYPE_BOOL", [1]),
               _tensor("STATUS", "TYPE_INT32", [-1]), _tensor("ERROR", "TYPE_STRING", [-1]),
               _tensor("MODEL_VERSION", "TYPE_STRING", [1])]
    return (f'name: "{name}"\nbackend: "python"\n'
            "# One request = one user with S scenarios; no implicit batch dimension (docs/gateway.md).\n"
            "max_batch_size: 0\n"
            "input [\n" + ",\n".join(inputs) + "\n]\n"
            "output [\n" + ",\n".join(outputs) + "\n]\n"
            "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
            f'parameters {{ key: "model_versions" value: {{ string_value: "{model_versions}" }} }}\n')


def install(repo: Path, spec: FeatureSpec | None = None, name: str = NAME) -> Path:
    """Write `<repo>/<name>/config.pbtxt` and `<repo>/<name>/1/model.py`; returns the model folder."""
    folder = Path(repo) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy2(MODEL_FILE, folder / "1" / "model.py")
    (folder / "config.pbtxt").write_text(render_config(spec or load_feature_spec(), name))
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.gateway.contract_model")
    parser.add_argument("command", choices=["install"])
    parser.add_argument("--repo", type=Path, required=True, help="Triton model repository folder")
    parser.add_argument("--name", default=NAME)
    args = parser.parse_args(argv)
    print(install(args.repo, name=args.name))
    return 0
