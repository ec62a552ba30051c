"""Compute precision for the model core: bf16 where the hardware multiplies bf16 natively, fp32 elsewhere.

One switch, used by pretraining, tuning, the quality harness and the Triton model alike:

    dtype = resolve_precision("auto", device)      # "auto" | "float32" | "bfloat16" (aliases fp32, bf16)
    apply_precision(model, dtype)                  # frozen backbone weights stored in bf16; trainables stay fp32
    with autocast(dtype, device): model.embed(...)  # matmuls in bf16, reductions and the loss in fp32

Why bf16 on CPU: AMX tiles (Sapphire Rapids and later) run bf16 matrix products ~6x faster than fp32 (2 threads,
256x576 @ 576x1536: 1.8 vs 0.30 TFLOP/s). AVX512-BF16 *without* AMX does not: on such a CPU (2026-12-05, 2 threads)
bf16 ran that product at 0.17 TFLOP/s against fp32's 0.24, and a batch-16 pretraining step took ~10 s in bf16, so
`auto` stays fp32 there. The frozen backbone never receives updates, so storing it in bf16 loses nothing a master
copy would keep, halves its memory and spares autocast a weight cast per call; trainable parameters (LoRA,
adapters, head, soft prompts) keep fp32 master weights and optimiser state. `auto` picks bf16 on CUDA devices that
support it and on CPUs with AMX, and says which and why in one log line either way (`event=precision_resolved`).
The environment variable QANCHOR_PRECISION overrides the setting wherever a process resolves it (serving,
benchmarks, pretraining), so an operator can force either without a config change.
"""
from __future__ import annotations

import contextlib
import logging
import os

import torch

log = logging.getLogger(__name__)

ALIASES = {"auto": "auto", "float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}
ENV = "QANCHOR_PRECISION"


class PrecisionError(ValueError):
    """An unknown precision setting, or bf16 forced on a device that cannot run it."""


def cpu_bf16_support() -> str | None:
    """The CPU's bf16 matmul feature ("amx", "avx512_bf16"), or None; only "amx" makes bf16 faster than fp32."""
    cpu = getattr(torch, "cpu", None)
    if cpu is not None and getattr(cpu, "_is_amx_tile_supported", lambda: False)():
        return "amx"
    if cpu is not None and getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "avx512_bf16"
    return None


def normalise(setting: str) -> str:
    key = (setting or "auto").strip().lower()
    if key not in ALIASES:
        raise PrecisionError(f"precision {setting!r} is not one of auto, float32 (fp32), bfloat16 (bf16)")
    return ALIASES[key]


def resolve_precision(setting: str = "auto", device: str | torch.device = "cpu", env: bool = True) -> torch.dtype:
    """The compute dtype for `setting` on `device`; QANCHOR_PRECISION (if set and `env`) overrides `setting`."""
    chosen = normalise(os.environ.get(ENV, "") or setting) if env else normalise(setting)
    dev = torch.device(device)
    if dev.type == "cuda":
        ok, why = torch.cuda.is_available() and torch.cuda.is_bf16_supported(), "cuda"
    elif dev.type == "cpu":
        feature = cpu_bf16_support()
        # only AMX makes bf16 faster than fp32 on a CPU; AVX512-BF16 alone measured slower (module docstring)
        ok = feature == "amx"
        why = {"amx": "amx", None: "no amx/avx512_bf16"}.get(feature, f"{feature} without amx (bf16 slower than fp32)")
    else:
        ok, why = False, f"device type {dev.type}"
    if chosen == "bfloat16" and not ok:
        log.warning("event=precision_resolved setting=bfloat16 device=%s dtype=bfloat16 note=forced without "
                    "fast bf16 (%s): expect it to be slower than fp32", dev, why)
        return torch.bfloat16
    dtype = torch.bfloat16 if chosen == "bfloat16" or (chosen == "auto" and ok) else torch.float32
    log.info("event=precision_resolved setting=%s device=%s support=%s dtype=%s", chosen, dev, why,
             str(dtype).removeprefix("torch."))
    return dtype


def autocast(dtype: torch.dtype, device: str | torch.device = "cpu"):
    """Autocast context for `dtype` (a no-op context for fp32)."""
    dev = torch.device(device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=dtype)


def apply_precision(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Store frozen floating-point parameters in `dtype`; trainable ones stay fp32 (master weights), and so do the
    submodules a model names in `keep_fp32` (QAnchorModel: the embedding head, which runs in fp32 even when
    everything else is frozen for serving: a few hundred KB, and the cosines that tell users apart live there)."""
    keep = {id(p) for name in getattr(model, "keep_fp32", ()) if getattr(model, name, None) is not None
            for p in getattr(model, name).parameters()}
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.data = p.data.to(torch.float32 if p.requires_grad or id(p) in keep else dtype)
    return model


def autocast_for(model) -> contextlib.AbstractContextManager:
    """Autocast matching how a QAnchorModel is stored: bf16 if apply_precision put its frozen weights in bf16."""
    return autocast(model.dtype, model.device)
