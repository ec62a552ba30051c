"""Install the `qanchor_contract` model (model.py here) into a Triton model repository.

    python -m services.gateway.contract_model install --repo $QANCHOR_STATE_DIR/model_repository

`config.pbtxt` is rendered from the one tensor contract (training.export.contract) for the sources of
`feature_repo/sources.yaml`, so the tensor names and K per source always match what the gateway sends
(docs/gateway.md).
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from services.common.features import FeatureSpec, load_feature_spec
from training.export.contract import Contract, render_model_config

NAME = "qanchor_contract"
MODEL_FILE = Path(__file__).with_name("model.py")


def render_config(spec: FeatureSpec, name: str = NAME, model_versions: str = "contract-v1", dim: int = 128,
                  cache_entries: int | None = None) -> str:
    params = {"model_versions": model_versions}
    if cache_entries is not None:  # users its prefix LRU holds (default 10,000)
        params["cache_entries"] = str(cache_entries)
    # One request = one user with S scenarios; no implicit batch dimension (contract v1, docs/gateway.md).
    msg = Contract.for_feature_spec(spec, dim).model_config(name, max_batch_size=0, parameters=params)
    return render_model_config(msg, tool="python -m services.gateway.contract_model install")


def install(repo: Path, spec: FeatureSpec | None = None, name: str = NAME, cache_entries: int | None = None) -> Path:
    """Write `<repo>/<name>/config.pbtxt` and `<repo>/<name>/1/model.py`; returns the model folder."""
    folder = Path(repo) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy2(MODEL_FILE, folder / "1" / "model.py")
    (folder / "config.pbtxt").write_text(render_config(spec or load_feature_spec(), name, cache_entries=cache_entries))
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.gateway.contract_model")
    parser.add_argument("command", choices=["install"])
    parser.add_argument("--repo", type=Path, required=True, help="Triton model repository folder")
    parser.add_argument("--name", default=NAME)
    args = parser.parse_args(argv)
    print(install(args.repo, name=args.name))
    return 0
