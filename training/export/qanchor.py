"""Write the `qanchor` model of a Triton model repository (Python backend) for one model version.

    export_qanchor(repository, QAnchorExportConfig(preset="tiny", model_version="tiny-v1"))

Layout (Triton version folder `1` holds the code; model versions live side by side below it, because one Triton
model serves every version the A/B config routes to, chosen per request by MODEL_VERSION):

    <repository>/qanchor/config.pbtxt                 generated; lists model_versions, K per source, instance kind
    <repository>/qanchor/1/model.py                   copied from training/export/triton_models/qanchor/
    <repository>/qanchor/1/models/<model_version>/    training.export.artifact (weights, config, sha256 manifest)
        reference/                                    fixed inputs + PyTorch full-forward outputs (+ a soft prompt)

Exporting another version adds it next to the ones already there (the first listed is the default for an empty
MODEL_VERSION); `only=True` serves just this one. A running Triton serves a version added later without a reload:
the backend loads it on the first request naming it (training.export.versions; `qanchor model publish`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from training.export.artifact import build_model, write_model_artifact
from training.export.publish import is_published
from training.export.contract import (MODEL_NAME, Contract, model_versions, read_model_config,
                                      render_model_config)

log = logging.getLogger(__name__)

TRITON_VERSION = "1"
SOURCE_DIR = Path(__file__).resolve().parent / "triton_models" / MODEL_NAME
REFERENCE_QUERIES = ["Will this user rate a new comedy highly?", "Is this user likely to churn next month?",
                     "Does this user prefer old films to new releases?"]


@dataclass
class QAnchorExportConfig:
    preset: str | None = None  # tiny | smollm2 | qwen2.5-0.5b | a YAML path (a fresh, untrained model)
    checkpoint: Path | None = None  # or a training checkpoint folder (training.artifacts)
    overrides: list[str] = field(default_factory=list)  # "section.key=value" for --preset
    model_version: str = ""  # the MODEL_VERSION requests name; default "<config name>-<weights sha[:12]>[-hidden]"
    instance_kind: str = "cpu"  # cpu -> KIND_CPU, gpu -> KIND_GPU (falls back to CPU without CUDA)
    instances: int = 1  # one instance holds one prefix cache; several would each keep their own
    torch_threads: int = 0  # 0 = torch default (all cores); 1 on a CPU shared with other busy processes
    cache_mb: int = 1024  # prefix-KV LRU budget; SmolLM2 fp32 256-token prefix = 11.8 MB per user (measured)
    # v2: a leading batch dim of 1 on every tensor + Triton's dynamic batcher, so concurrent requests reach one
    # execute and share the prefix forward of their misses and one packed suffix forward; v1: max_batch_size 0, one
    # request per execute. The gateway reads which from the model config and speaks both.
    contract: str = "v2"
    max_batch_size: int = 16  # v2 only: requests the dynamic batcher may hand one execute
    # v2 only: the longest an idle-arriving request waits for company; under load requests queue behind the running
    # execute anyway and are batched with no added wait.
    max_queue_delay_us: int = 2000
    only: bool = False  # drop other model versions from the repository
    # versions one instance holds at once, counting those published while it runs (loaded on first request,
    # least recently served unloaded first; the default stays): each costs its weights in memory
    max_loaded_versions: int = 4
    reference_users: int = 2  # users in the written reference (one warm, one cold start)

    def __post_init__(self) -> None:
        if self.instance_kind not in ("cpu", "gpu"):
            raise ValueError(f"instance kind {self.instance_kind!r}: choose cpu or gpu")
        if self.contract not in ("v1", "v2"):
            raise ValueError(f"contract {self.contract!r}: choose v2 (dynamic batching) or v1 (no batch dimension)")
        if self.max_batch_size < 1 or self.max_queue_delay_us < 0:
            raise ValueError("max_batch_size must be >= 1 and max_queue_delay_us >= 0")
        if self.model_version and ("," in self.model_version or "/" in self.model_version):
            raise ValueError(f"model version {self.model_version!r} must not contain ',' or '/'")


def render_config(cfg: QAnchorExportConfig, input_cfg, versions: list[str], out_dim: int) -> str:
    v2 = cfg.contract == "v2"
    params = {"model_versions": ",".join(versions), "cache_bytes": str(cfg.cache_mb << 20),
              "torch_threads": str(cfg.torch_threads), "contract": cfg.contract,
              "max_loaded_versions": str(cfg.max_loaded_versions)}
    msg = Contract.for_input(input_cfg, out_dim).model_config(
        MODEL_NAME, max_batch_size=cfg.max_batch_size if v2 else 0, max_queue_delay_us=cfg.max_queue_delay_us,
        instance_kind=cfg.instance_kind, instances=cfg.instances, parameters=params, specific_version=1)
    return render_model_config(msg)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # Triton polling the repository never sees half a file


def write_reference(model, folder: Path, n_users: int) -> Path:
    """Fixed inputs (event vectors already rounded to float16, as on the wire) and the PyTorch full-forward
    embeddings for them, including one tuned-prompt scenario: what the Triton round trip must reproduce."""
    from training.artifacts import save_soft_prompt
    from training.model.suffix import ScenarioSpec
    from training.model.synthetic import random_users

    folder.mkdir(parents=True, exist_ok=True)
    users = random_users(model.cfg.input, n_users, seed=1234, cold=[n_users - 1])
    users.event_vecs = {s: v.half().float() for s, v in users.event_vecs.items()}  # what the model will receive
    g = torch.Generator().manual_seed(99)

    class _Prompt:  # the fields save_soft_prompt reads from a TuneResult
        prompt = torch.randn(4, model.hidden, generator=g) * 0.05
        prototypes = torch.zeros(2, model.embedding_dim)
        query, classes, metrics = REFERENCE_QUERIES[0], ["no", "yes"], {}

    pdir = save_soft_prompt(folder / "prompt", _Prompt())
    sha = hashlib.sha256((pdir / "prompt.safetensors").read_bytes()).hexdigest()
    specs = [ScenarioSpec(q) for q in REFERENCE_QUERIES] + [ScenarioSpec(REFERENCE_QUERIES[0], _Prompt.prompt)]
    with torch.no_grad():
        emb = model.full_forward(users, specs)  # [B, S, out]: the uncached reference path
    ref = {
        "queries": [s.query for s in specs],
        "prompt_versions": ["zero-shot"] * len(REFERENCE_QUERIES) + ["1"],
        "prompt_artifacts": [""] * len(REFERENCE_QUERIES) + ["prompt"],  # relative to this folder
        "prompt_shas": [""] * len(REFERENCE_QUERIES) + [sha],
        "users": [{
            "user_id": f"reference-user-{i}", "feature_version": 0 if i == n_users - 1 else 3 + i,
            "events": {s: users.event_vecs[s][i].tolist() for s in users.event_vecs},
            "mask": {s: users.event_mask[s][i].tolist() for s in users.event_mask},
            "tabular": users.tabular[i].tolist(),
            "embedding": emb[i].tolist(),
        } for i in range(n_users)],
    }
    path = folder / "reference.json"
    path.write_text(json.dumps(ref))
    return path


def export_qanchor(repository: Path, cfg: QAnchorExportConfig) -> Path:
    """Export one model version into `<repository>/qanchor`; returns the model version folder."""
    model, snapshot, qcfg, source_id = build_model(cfg.preset, cfg.checkpoint, cfg.overrides)
    model_dir = Path(repository) / MODEL_NAME
    versions_dir = model_dir / TRITON_VERSION / "models"
    versions_dir.mkdir(parents=True, exist_ok=True)
    staging = versions_dir / f".staging-{os.getpid()}"
    write_model_artifact(staging, model, snapshot, qcfg, cfg.model_version or "pending", source_id)
    version = cfg.model_version
    if not version:  # content-addressed default; the manifest must carry the final string
        manifest = json.loads((staging / "manifest.json").read_text())
        # the same weights served as the hidden state are another contract (width): another version string
        served = "" if qcfg.head.embedding == "projected" else f"-{qcfg.head.embedding}"
        served += f"-l{qcfg.head.layer}" if qcfg.head.layer else ""  # another depth: another contract too
        version = manifest["model_version"] = f"{qcfg.name}-{manifest['files']['weights.safetensors'][:12]}{served}"
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    write_reference(model, staging / "reference", cfg.reference_users)
    target = versions_dir / version
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    listed = _listed_versions(model_dir)
    if cfg.only:  # other exports go; published versions stay (the registry's: A/B arms may name them)
        for d in versions_dir.iterdir():
            if d.is_dir() and not d.name.startswith(".") and d.name != version and not is_published(d):
                shutil.rmtree(d)  # (dot-folders are publishes in progress: not ours to touch)
        kept = sorted(d.name for d in versions_dir.iterdir()
                      if d.is_dir() and not d.name.startswith(".") and d.name != version)
        versions = [version] + kept  # this export is the default; the published ones stay servable
    else:
        versions = [v for v in listed if (versions_dir / v).is_dir() and v != version] + [version]
        if listed and listed[0] == version:
            versions = [version] + versions[:-1]  # re-exporting the default keeps it the default
    _write_atomic(model_dir / TRITON_VERSION / "model.py", (SOURCE_DIR / "model.py").read_text())
    _write_atomic(model_dir / "config.pbtxt", render_config(cfg, qcfg.input, versions, model.embedding_dim))
    if versions[0] == version:
        export_normalisation(cfg.checkpoint, model_dir)
    log.info("event=qanchor_exported model_version=%s versions=%s path=%s kind=%s contract=%s", version, versions,
             target, cfg.instance_kind, cfg.contract)
    return target


def export_normalisation(checkpoint: Path | None, model_dir: Path) -> Path | None:
    """Put the default version's normalisation constants at `<repository>/qanchor/normalisation.json`, where ingest
    reads them (INGEST_NORMALISATION) to derive the dense user vector from raw events; remove a stale one when the
    checkpoint has none (ingest then leaves `tabular` empty and says so)."""
    from training.normalisation import FILE, checkpoint_normalisation

    src = checkpoint_normalisation(checkpoint) if checkpoint is not None else None
    dest = model_dir / FILE
    if src is None:
        dest.unlink(missing_ok=True)
        log.warning("event=normalisation_missing checkpoint=%s: ingest will not derive tabular; write it with "
                    "python -m training.normalisation --checkpoint DIR", checkpoint)
        return None
    _write_atomic(dest, src.read_text())
    return dest


def _listed_versions(model_dir: Path) -> list[str]:
    path = model_dir / "config.pbtxt"
    return model_versions(read_model_config(path)) if path.is_file() else []
