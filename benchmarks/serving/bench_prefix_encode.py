"""Prefix encode of one 256-token user on CPU, the served dtype against the alternatives, with its FLOP floor.

    .venv-model/bin/python benchmarks/serving/bench_prefix_encode.py [--repeats 5] [--threads 2] [--profile]
        [--checkpoint artifacts/default]

SmolLM2-135M-Instruct with its real weights (the `smollm2` preset, first source's K grown so the prefix is exactly
256 tokens). Variants, interleaved per repeat so machine noise hits all alike:
  fp32            LoRA merged, fp32 weights: what the Triton model served before bf16
  bf16_unmerged   peft LoRA wrappers kept, fp32 weights, bf16 autocast (per-call weight casts, three matmuls per
                  projection): the naive way to "turn bf16 on"
  bf16            LoRA merged, weights stored in bf16, autocast: what `prepare_for_serving` now serves (SDPA)
  bf16_eager      the same with eager attention
  bf16_b8         the served path with 8 users in one forward (cross-request batching), per user
  bf16_cut24      the served path of a model cut after decoder layer 24 of 30 (`head.layer: 24`, the `<USER_EMB>`
                  state read out there: docs/model.md "Which layer to serve"); its KV cache holds 24 layers
Each is timed by wall clock and by process CPU time (CPU time barely moves when other jobs take the cores, so on a
shared machine it is the steadier figure). The run measures this machine's peak matmul rate (256x576 @ 576x1536)
in fp32 and bf16 per CPU-second and prints the FLOP floor (2 x non-embedding parameters x tokens / bf16 peak) in CPU
ms and, divided by the threads, in wall ms on an idle machine. `--profile` adds a
torch.profiler table of the served path (top operators). `--checkpoint` adds parity on trained weights: bf16 vs fp32
embeddings through the serving runtime (cosine per user x scenario). Also reports KV bytes per cached user and users
per GiB in each dtype. Prints a table last; writes benchmarks/results/prefix_encode.json and a PNG.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the repository's packages, before the CPU-wait setting and torch
from training.export.cpu_wait import apply as _apply_cpu_wait  # noqa: E402  (stdlib only, before torch)

_apply_cpu_wait()  # QANCHOR_CPU_WAIT: passive (default, as Triton) or spin, as the served model would run

import torch  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks" / "prefix_cache"))
from benchmarks.machine import describe  # noqa: E402

from bench_prefix_cache import PREFIX, QUERIES, build  # noqa: E402

from training.export.runtime import prepare_for_serving  # noqa: E402
from training.model.synthetic import random_users  # noqa: E402
from training.precision import autocast, autocast_for  # noqa: E402

GIB = 1 << 30
CUT_LAYER = 24  # the read-out depth of the bf16_cut variant (head.layer)


def peak_tflops(dtype: torch.dtype, repeats: int = 30) -> float:
    """Best matmul rate of this process per CPU-second (256x576 @ 576x1536, a typical projection here). Counting CPU
    time, not wall time, keeps it steady while other jobs take the cores; x threads = the idle machine's rate."""
    a = torch.randn(256, 576, dtype=dtype)
    b = torch.randn(576, 1536, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        for _ in range(10):
            a @ b
        best = min(best, (time.process_time() - t) / 10)
    return 2 * 256 * 576 * 1536 / best / 1e12


def flops(model, tokens: int) -> float:
    """Matmul FLOPs of one prefix forward: 2 x non-embedding backbone parameters x tokens, plus attention."""
    lm = model._lm()
    n = sum(p.numel() for name, p in lm.named_parameters() if "embed_tokens" not in name and "lm_head" not in name)
    c = lm.config
    attn = 2 * 2 * c.num_hidden_layers * tokens * tokens * c.hidden_size  # QK^T and AV over the causal square
    return 2 * n * tokens + attn


def timed(fn) -> tuple[float, float]:
    t, c = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - t) * 1000, (time.process_time() - c) * 1000


def variants(threads: int) -> tuple[dict, object]:
    """-> {name: (model, autocast dtype, batch)} and the fp32 model; all share one set of real weights."""
    os.environ["QANCHOR_PRECISION"] = "float32"
    base = build(threads).eval()  # LoRA freshly initialised: B = 0, so merged == base weights
    unmerged = copy.deepcopy(base).requires_grad_(False)
    fp32 = copy.deepcopy(base)
    prepare_for_serving(fp32)
    os.environ["QANCHOR_PRECISION"] = "bfloat16"
    bf16 = copy.deepcopy(base)
    prepare_for_serving(bf16)
    eager = copy.deepcopy(bf16)
    eager._lm().config._attn_implementation = "eager"
    cut = copy.deepcopy(bf16)
    cut.cfg.head.embedding, cut.cfg.head.layer = "hidden", CUT_LAYER
    os.environ.pop("QANCHOR_PRECISION")
    del base
    return {"fp32": (fp32, torch.float32, 1), "bf16_unmerged": (unmerged, torch.bfloat16, 1),
            "bf16": (bf16, torch.bfloat16, 1), "bf16_eager": (eager, torch.bfloat16, 1),
            "bf16_b8": (bf16, torch.bfloat16, 8), f"bf16_cut{CUT_LAYER}": (cut, torch.bfloat16, 1)}, fp32


def parity(checkpoint: Path, n_users: int) -> dict:
    """bf16 vs fp32 embeddings of a trained checkpoint through the serving runtime (10 scenarios per user)."""
    import numpy as np

    from training.export.artifact import LoadedModel, build_model
    from training.export.runtime import EmbedRequest, QAnchorRuntime

    model, snapshot, cfg, source = build_model(checkpoint=checkpoint)
    import shutil

    shutil.rmtree(snapshot.dir, ignore_errors=True)
    users = random_users(cfg.input, n_users, seed=7, fill=0.8)
    reqs = [EmbedRequest(user_id=f"u{i}", feature_version=1, model_version="",
                         event_vecs={s: users.event_vecs[s][i].numpy().astype("float16") for s in users.event_vecs},
                         event_mask={s: users.event_mask[s][i].numpy() for s in users.event_mask},
                         tabular=users.tabular[i].numpy(), queries=QUERIES) for i in range(n_users)]
    out = {}
    for name, setting in (("fp32", "float32"), ("bf16", "bfloat16")):
        m = copy.deepcopy(model)
        os.environ["QANCHOR_PRECISION"] = setting
        prepare_for_serving(m)
        rt = QAnchorRuntime([LoadedModel(m, cfg, "v", source, {})])
        out[name] = np.stack([r.embedding for r in rt.serve(reqs)])  # [U, S, 128]
        out[name + "_kv"] = rt.cache.nbytes / n_users
    os.environ.pop("QANCHOR_PRECISION", None)
    a, b = out["fp32"], out["bf16"]
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return {"checkpoint": str(checkpoint), "users": n_users, "scenarios": len(QUERIES), "prefix_tokens":
            model.prefix_length, "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
            "max_abs_diff": float(abs(a - b).max()), "kv_bytes_per_user_fp32": out["fp32_kv"],
            "kv_bytes_per_user_bf16": out["bf16_kv"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="torch.profiler table of the served bf16 path")
    ap.add_argument("--checkpoint", type=Path, default=None, help="trained checkpoint for the bf16/fp32 parity row")
    ap.add_argument("--parity-users", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "prefix_encode.json")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    torch.set_num_threads(args.threads)
    peak = {"fp32": peak_tflops(torch.float32), "bf16": peak_tflops(torch.bfloat16)}
    models, fp32 = variants(args.threads)
    users = {b: random_users(fp32.cfg.input, b, seed=0, fill=1.0) for b in (1, 8)}
    work = flops(fp32, PREFIX)
    kv = {}
    with torch.inference_mode():
        for name, (m, dtype, b) in models.items():  # warm-up + KV sizes
            with autocast(dtype, "cpu"):
                c = m.encode_prefix(users[b])
            kv[name] = c[0].nbytes
    times: dict[str, list[float]] = {k: [] for k in models}
    cpu: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for rep in range(args.repeats):
            for name, (m, dtype, b) in models.items():
                with autocast(dtype, "cpu"):
                    w, c = timed(lambda: m.encode_prefix(users[b]))
                times[name].append(w / b)
                cpu[name].append(c / b)
            print(f"repeat {rep + 1}/{args.repeats}: " + " ".join(f"{k}={v[-1]:.0f}ms" for k, v in times.items()),
                  flush=True)
    prof = None
    if args.profile:
        prof = profile_table(models["bf16"][0], users[1])
    par = parity(args.checkpoint, args.parity_users) if args.checkpoint else None
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    floor_cpu_ms = work / (peak["bf16"] * 1e12) * 1000  # CPU time the matmuls need at the best rate seen
    floor_ms = floor_cpu_ms / args.threads  # wall time on an idle machine with `threads` cores
    result = {
        "benchmark": "prefix_encode", "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": describe(threads=args.threads, loadavg_before=load_before, loadavg_after=os.getloadavg(),
                            peak_matmul_tflops=peak),
        "settings": {"prefix_tokens": PREFIX, "repeats": args.repeats, "gflop_per_prefix": work / 1e9},
        "wall_ms_per_user": times, "cpu_ms_per_user": cpu, "median_wall_ms": med, "median_cpu_ms": med_cpu,
        "flop_floor_ms_bf16": floor_ms, "flop_floor_cpu_ms_bf16": floor_cpu_ms,
        "flop_floor_ms_fp32": work / (peak["fp32"] * 1e12) * 1000 / args.threads,
        "kv_bytes_per_user": {"fp32": kv["fp32"], "bf16": kv["bf16"],
                              f"bf16_cut{CUT_LAYER}": kv[f"bf16_cut{CUT_LAYER}"]},
        "users_per_gib": {"fp32": GIB // kv["fp32"], "bf16": GIB // kv["bf16"]},
        "profile_top_ops": prof, "parity": par,
        "targets": {"bf16_prefix_ms_max": 150},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    _plot(result, args.out.with_suffix(".png"))
    print(f"\nPrefix encode, SmolLM2-135M real weights, {PREFIX} tokens, threads={args.threads}, "
          f"repeats={args.repeats}, load {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"peak matmul here: fp32 {peak['fp32']:.2f} / bf16 {peak['bf16']:.2f} TFLOP/s per core; {work / 1e9:.1f} "
          f"GFLOP per prefix -> FLOP floor {floor_cpu_ms:.1f} CPU ms = {floor_ms:.1f} ms on {args.threads} idle cores")
    if prof:
        print(f"{'operator (served bf16 path)':<48} {'self cpu ms':>11} {'calls':>6}")
        for row in prof[:8]:
            print(f"{row['name'][:48]:<48} {row['self_cpu_ms']:>11.1f} {row['calls']:>6}")
    if par:
        print(f"parity on {par['checkpoint']} ({par['users']} users x {par['scenarios']} scenarios, "
              f"{par['prefix_tokens']}-token prefix): bf16 vs fp32 cosine min {par['cosine_min']:.5f} mean "
              f"{par['cosine_mean']:.5f}")
    print(f"KV per cached user: fp32 {kv['fp32'] / 1e6:.2f} MB, bf16 {kv['bf16'] / 1e6:.2f} MB "
          f"({kv['fp32'] / kv['bf16']:.2f}x); users per GiB {GIB // kv['fp32']} -> {GIB // kv['bf16']}")
    print(f"{'variant':<14} {'wall ms':>9} {'cpu ms':>9} {'x fp32 (cpu)':>13} {'x floor (cpu)':>14}")
    for k in models:
        print(f"{k:<14} {med[k]:>9.1f} {med_cpu[k]:>9.1f} {med_cpu['fp32'] / med_cpu[k]:>13.2f} "
              f"{med_cpu[k] / floor_cpu_ms:>14.1f}")
    return 0


def profile_table(model, users, calls: int = 3) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), autocast_for(model), profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(calls):
            model.encode_prefix(users)
    rows = sorted(p.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"name": e.key, "self_cpu_ms": e.self_cpu_time_total / 1000 / calls, "calls": e.count // calls}
            for e in rows[:25]]


def _plot(result: dict, path: Path) -> None:
    from benchmarks.plot import pyplot

    plt = pyplot()
    if plt is None:
        return
    names = list(result["median_wall_ms"])
    fig, ax = plt.subplots(figsize=(8, 3.8))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [result["median_wall_ms"][n] for n in names], 0.4, label="wall")
    ax.bar([i + 0.2 for i in x], [result["median_cpu_ms"][n] for n in names], 0.4, label="process CPU")
    ax.axhline(result["flop_floor_cpu_ms_bf16"], color="k", ls="--", lw=1, label="FLOP floor, CPU ms (bf16 peak)")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("ms per user (median)")
    ax.set_title(f"Prefix encode of a {result['settings']['prefix_tokens']}-token user, SmolLM2-135M on CPU "
                 f"({result['machine']['threads']} threads, load {result['machine']['loadavg_before'][0]:.1f})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
