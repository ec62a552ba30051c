"""Checkpoints and soft-prompt artifacts: safetensors + JSON + a sha256 manifest. Nothing is ever unpickled.

    save_checkpoint(dir, model, cfg, extra={"step": 1000})  ->  dir/{weights.safetensors, config.json, manifest.json}
    model, cfg, extra = load_checkpoint(dir)                 # rebuilds the backbone, checks its sha256, loads weights
    save_soft_prompt(dir, result, model_id=checkpoint_id(ckpt_dir))
    art = load_soft_prompt(dir)                              # SoftPromptArtifact(prompt, prototypes, meta)

A checkpoint holds only what training changes (adapters, LoRA, head, added-token rows); the backbone is
referenced by name + sha256 and must be available locally. Directories are written to a temp sibling and renamed,
so a reader never sees a half-written artifact.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from training.artifact_io import verify_manifest, write_dir_atomic, write_manifest
from training.backbones import Backbone
from training.config import QAnchorConfig, parse_readout

CHECKPOINT_FORMAT = "qanchor-checkpoint/1"
PROMPT_FORMAT = "qanchor-soft-prompt/1"


class ArtifactError(RuntimeError):
    """An artifact is missing, corrupt or made for another backbone; the message says which file and why."""


def _verified_manifest(d: Path, fmt: str) -> dict[str, Any]:
    return verify_manifest(d, fmt, ArtifactError, not_found=f"not a {fmt} directory", fix="re-create the artifact")


def checkpoint_id(d: str | Path) -> str:
    """Stable id of a checkpoint (sha256 of its manifest's file hashes): use it as the serving model version."""
    files = _verified_manifest(Path(d), CHECKPOINT_FORMAT)["files"]
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def save_checkpoint(d: str | Path, model, config: QAnchorConfig, extra: dict[str, Any] | None = None,
                    normalisation: tuple | None = None) -> Path:
    """`normalisation`: (training.data.stats.Normalisation, provenance[, the train users' fingerprints]), the dense
    user vector's constants that ingest standardises with and the users they were fitted on (training.normalisation);
    recorded in the manifest beside, not in, the id's files."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.trainable_state_dict().items()}

    def write(tmp: Path) -> None:
        from training.normalisation import MANIFEST_KEY, write_normalisation

        save_file(state, str(tmp / "weights.safetensors"), metadata={"format": CHECKPOINT_FORMAT})
        (tmp / "config.json").write_text(config.to_json())
        body = {"format": CHECKPOINT_FORMAT, "extra": extra or {},
                "backbone": {"name": model.backbone_name, "sha256": model.backbone_sha256},
                "special_tokens": model.special.ids}
        if normalisation is not None:
            body[MANIFEST_KEY] = write_normalisation(tmp, *normalisation)
        write_manifest(tmp, files=["weights.safetensors", "config.json"], body=body)

    return write_dir_atomic(Path(d), write)


def load_checkpoint(d: str | Path, backbone: Backbone | None = None, device: str | torch.device = "cpu"):
    """-> (QAnchorModel, QAnchorConfig, extra). Raises ArtifactError on any hash or backbone mismatch."""
    from training.model.embedder import QAnchorModel  # local: artifacts stay importable without building models

    d = Path(d)
    manifest = _verified_manifest(d, CHECKPOINT_FORMAT)
    cfg = QAnchorConfig.from_dict(json.loads((d / "config.json").read_text()))
    model = QAnchorModel(cfg, backbone)
    _load_weights(model, d, manifest)
    return model.to(device), cfg, manifest["extra"]


def set_embedding(d: str | Path, embedding: str) -> str:
    """Change what a checkpoint serves (head.embedding / head.layer as a read-out string: "projected" = the head's
    output, "hidden" = the <USER_EMB> state, "hidden@LAYER" = that state at an earlier decoder layer) without
    touching its weights: config.json and the manifest's hashes are rewritten in a temp copy that replaces `d`, so
    its id changes (embedding caches and soft prompts of the other read-out never match it). -> the new id."""
    import shutil

    d = Path(d)
    manifest = _verified_manifest(d, CHECKPOINT_FORMAT)
    cfg = QAnchorConfig.from_dict(json.loads((d / "config.json").read_text()))
    embedding, layer = parse_readout(embedding)
    cfg.head = dataclasses.replace(cfg.head, embedding=embedding, layer=layer)  # validated by HeadConfig
    if layer is not None:
        from training.backbones import load_backbone

        n = int(load_backbone(cfg.backbone).model.config.num_hidden_layers)
        if layer > n:
            raise ValueError(f"read-out hidden@{layer}: the backbone {cfg.backbone.name} has layers 1..{n}")

    def write(tmp: Path) -> None:
        for f in d.iterdir():
            if f.is_file() and f.name != "manifest.json":
                shutil.copy2(f, tmp / f.name)
        (tmp / "config.json").write_text(cfg.to_json())
        body = {k: v for k, v in manifest.items() if k not in ("files", "created_at")}
        write_manifest(tmp, files=sorted(manifest["files"]), body=body)

    write_dir_atomic(d, write)
    return checkpoint_id(d)


ARCHITECTURE = ("input", "backbone", "lora", "head")  # config sections that shape the weights


def init_from_checkpoint(model, d: str | Path) -> str:
    """Load a checkpoint's trained weights into a freshly built `model` (a second training stage with other
    optimiser/loss/data settings). The architecture sections of both configs must agree. -> checkpoint id."""
    d = Path(d)
    manifest = _verified_manifest(d, CHECKPOINT_FORMAT)
    # fields added since: defaults
    theirs = QAnchorConfig.from_dict(json.loads((d / "config.json").read_text())).to_dict()
    ours = model.cfg.to_dict()
    for side in (theirs, ours):  # what inference reads out is not architecture: a stage may change it
        side["head"] = {k: v for k, v in side["head"].items() if k not in ("embedding", "layer")}
    differ = [k for k in ARCHITECTURE if json.dumps(theirs.get(k), sort_keys=True) != json.dumps(ours[k],
                                                                                                  sort_keys=True)]
    if differ:
        raise ArtifactError(f"{d}: config sections {differ} differ from this run's; start from the checkpoint's own "
                            "preset (its config.json) and change only optim/loss/tune")
    _load_weights(model, d, manifest)
    return checkpoint_id(d)


def _load_weights(model, d: Path, manifest: dict[str, Any]) -> None:
    want = manifest["backbone"]
    if model.backbone_sha256 != want["sha256"]:
        raise ArtifactError(f"checkpoint was trained on backbone {want['name']} sha256={want['sha256'][:12]}, but "
                            f"{model.backbone_name} sha256={model.backbone_sha256[:12]} was loaded; point "
                            "backbone.path at the original weights")
    if model.special.ids != manifest["special_tokens"]:
        raise ArtifactError("special token ids differ from the checkpoint's: the tokenizer changed")
    model.load_trainable_state_dict(load_file(str(d / "weights.safetensors")))


@dataclass
class SoftPromptArtifact:
    prompt: torch.Tensor  # [n_tokens, hidden]; n_tokens 0: the query alone was kept (training.tune)
    prototypes: torch.Tensor  # [n_classes, out]
    meta: dict[str, Any]  # query, classes, metrics, model_id, hidden


def save_soft_prompt(d: str | Path, result, model_id: str = "", extra: dict[str, Any] | None = None) -> Path:
    """Write a TuneResult as prompt.safetensors + manifest.json (query, classes, metrics, model id, sha256)."""
    tensors = {"prompt": result.prompt.detach().float().contiguous().cpu(),
               "prototypes": result.prototypes.detach().float().contiguous().cpu()}

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / "prompt.safetensors"), metadata={"format": PROMPT_FORMAT})
        write_manifest(tmp, files=["prompt.safetensors"], body={
            "format": PROMPT_FORMAT, "query": result.query, "classes": list(result.classes),
            "metrics": result.metrics, "model_id": model_id, "n_tokens": int(tensors["prompt"].shape[0]),
            "hidden": int(tensors["prompt"].shape[1]), "extra": extra or {},
        })

    return write_dir_atomic(Path(d), write)


def load_soft_prompt(d: str | Path, expect_model_id: str | None = None) -> SoftPromptArtifact:
    d = Path(d)
    meta = _verified_manifest(d, PROMPT_FORMAT)
    if expect_model_id is not None and meta["model_id"] != expect_model_id:
        raise ArtifactError(f"soft prompt {d} was tuned for model {meta['model_id'][:12]}, not "
                            f"{expect_model_id[:12]}; re-tune it for this model")
    t = load_file(str(d / "prompt.safetensors"))
    return SoftPromptArtifact(prompt=t["prompt"], prototypes=t["prototypes"], meta=meta)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m training.artifacts", description="Checkpoint maintenance.")
    sub = p.add_subparsers(dest="cmd", required=True)
    se = sub.add_parser("set-embedding", help="what the checkpoint serves: the head's output or the hidden state")
    se.add_argument("checkpoint", type=Path)
    se.add_argument("embedding", metavar="READOUT",
                    help="projected (the head's output), hidden (the <USER_EMB> state) or hidden@LAYER (that state at "
                         "decoder layer LAYER)")
    args = p.parse_args(argv)
    try:
        new_id = set_embedding(args.checkpoint, args.embedding)
    except (ArtifactError, ValueError) as exc:
        p.exit(2, f"python -m training.artifacts: {exc}\n")
    print(f"{args.checkpoint}: read-out {args.embedding}, checkpoint id {new_id[:12]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
