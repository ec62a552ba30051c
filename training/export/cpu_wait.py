"""How idle OpenMP worker threads wait between two torch ops: the one knob, read before torch loads OpenMP.

    QANCHOR_CPU_WAIT=passive   (default) sleep at once: robust when other processes share the cores (a dev machine,
                               CI, several models on one host); costs a thread wake-up per parallel op
    QANCHOR_CPU_WAIT=spin      spin GOMP_SPINCOUNT (default 20,000) iterations, then sleep: for a server that owns its
                               cores (a dedicated node, a pod whose CPU limit equals its threads)

Measured on the 2-core dev machine, artifacts/default, bf16, 2 threads (BENCHMARKS.md): quiet, spin halves small
calls (a cached GetUserEmbeddings(10) suffix pass 166 -> 89 ms, an 81-token prefix 137 -> 60 ms); with two busy
processes on the same cores it makes them 2-4x slower than passive, and OpenMP's own default (300,000 spins) 40x.
Standard library only: the Triton stub and the stack's launcher call `apply` before anything imports torch.
"""
from __future__ import annotations

import os
from typing import MutableMapping

ENV = "QANCHOR_CPU_WAIT"
MODES = ("passive", "spin")
SPIN_COUNT = "20000"


def apply(env: MutableMapping[str, str] | None = None) -> str:
    """Set OMP_WAIT_POLICY / GOMP_SPINCOUNT in `env` (default os.environ) for QANCHOR_CPU_WAIT; -> the mode.
    An operator's own OMP_WAIT_POLICY other than PASSIVE, or own GOMP_SPINCOUNT, is left alone."""
    env = os.environ if env is None else env
    mode = (env.get(ENV) or "passive").strip().lower()
    if mode not in MODES:
        raise ValueError(f"{ENV}={env.get(ENV)!r}: use passive (default; shared cores) or spin (dedicated cores)")
    if mode == "passive":
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    else:
        if env.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
            del env["OMP_WAIT_POLICY"]  # PASSIVE forces a spin count of 0
        env.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
    return mode
