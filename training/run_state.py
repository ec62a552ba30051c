"""Run state for exact resume: the checkpoint (training.artifacts) plus optimiser moments and the schedule."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from training.artifacts import checkpoint_id, load_checkpoint, save_checkpoint
from training.config import QAnchorConfig

log = logging.getLogger(__name__)

# Optimiser moments are tensors, so they go to safetensors too (keyed by parameter name, never pickled). The
# trainer dir is written after the checkpoint and records its id: a crash between the two is caught on resume.
def save_trainer_state(out: Path, model, cfg: QAnchorConfig, opt: torch.optim.Optimizer, sched, step: int,
                       extra: dict | None = None, normalisation: tuple | None = None) -> None:
    ckpt = save_checkpoint(out / "checkpoint", model, cfg, extra={"step": step, **(extra or {})},
                           normalisation=normalisation)
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if not st:
                continue
            for k, v in st.items():
                tensors[f"{names[id(p)]}::{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu()
    tmp = out / ".trainer.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "scheduler": sched.state_dict(),
                                                 "checkpoint_id": checkpoint_id(ckpt)}, indent=1))
    final = out / "trainer"
    if final.exists():
        for f in final.iterdir():
            f.unlink()
        final.rmdir()
    tmp.rename(final)
    log.info("checkpoint_saved step=%d dir=%s", step, ckpt)


def load_trainer_state(out: Path, model, opt: torch.optim.Optimizer, sched, device) -> int:
    """Load weights + optimiser + schedule into the given objects; returns the step to continue from."""
    trainer, ckpt = out / "trainer", out / "checkpoint"
    if not (trainer / "state.json").is_file() or not ckpt.is_dir():
        raise FileNotFoundError(f"nothing to resume in {out}: expected checkpoint/ and trainer/; drop --resume "
                                "to start a new run")
    state = json.loads((trainer / "state.json").read_text())
    if state["checkpoint_id"] != checkpoint_id(ckpt):
        raise RuntimeError(f"{trainer} belongs to another checkpoint (the run stopped while saving); "
                           "start over or restore a consistent pair")
    loaded, _, extra = load_checkpoint(ckpt, device="cpu")
    model.load_trainable_state_dict({k: v.to(device) for k, v in loaded.trainable_state_dict().items()})
    del loaded
    tensors = load_file(str(trainer / "optimizer.safetensors"))
    params = dict(model.named_parameters())
    for key, v in tensors.items():
        name, k = key.split("::")
        opt.state[params[name]][k] = v.to(device) if k != "step" else v
    sched.load_state_dict(state["scheduler"])
    assert extra.get("step") == state["step"], (extra, state["step"])
    return int(state["step"])
