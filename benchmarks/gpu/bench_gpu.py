"""The GPU rows: prefix-cache throughput with real SmolLM2 weights against eager full forwards, and a pretraining step
rate. Run by benchmarks/gpu/run.sh (which gets the backbone and the Python packages in place first).

    python benchmarks/gpu/bench_gpu.py [--device cuda] [--batch 32] [--prefix 512] [--scenarios 10] [--steps 10]
    python benchmarks/gpu/bench_gpu.py --dry-run      # CPU, tiny sizes: checks the code path in a minute

Rows (medians over --repeats, after a warm-up; CUDA timed with synchronisation):
  naive     S full forwards of B users (prefix + one scenario each): what serving does without a prefix cache
  cached    the prefix once + the S suffixes packed (QAnchorModel.encode_prefix + embed): the served path
  one       one scenario, one full forward
  B=1/L=256 the same three for one user (the small-request case)
Both paths run the served model: LoRA merged, weights in the dtype `backbone.compute=auto` resolves to (bf16 on a
GPU that supports it), eager Hugging Face `transformers` underneath (no CUDA graphs, no compile). Reported: ms,
speed-up, embeddings/s, and the FLOP floor at the GPU's measured bf16 matmul rate.
Pretraining: steps/s of one training step (the trainer's GradCache step, `training.losses.grad_cache_step`, on the
`smollm2` preset with LoRA r=64, bf16 autocast, AdamW) at --train-batch users per step.
Writes --out (JSON) and prints a short table last.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import describe  # noqa: E402

import torch  # noqa: E402

QUERY = "Will this user rate a newly released romantic comedy with a famous lead actor highly next week?"


def build(prefix: int, overrides: list[str]):
    """SmolLM2 preset with the first source's K grown so the prefix is exactly `prefix` tokens."""
    from transformers import AutoTokenizer

    from training.backbones import ensure_smollm2_dir
    from training.config import load_config
    from training.model.embedder import QAnchorModel
    from training.model.tokens import add_special_tokens, build_layout

    base = ["input.max_query_tokens=15", "lora.dropout=0.0", *overrides]
    cfg = load_config("smollm2", base)
    tok = AutoTokenizer.from_pretrained(str(ensure_smollm2_dir()), local_files_only=True)
    special = add_special_tokens(tok, [s.name for s in cfg.input.sources])
    extra = prefix - build_layout(tok, cfg.input, special).length
    if extra < 0:
        raise SystemExit(f"--prefix {prefix} is shorter than the fixed layout ({prefix - extra} tokens)")
    srcs = [{"name": s.name, "k": s.k + (extra if i == 0 else 0)} for i, s in enumerate(cfg.input.sources)]
    cfg = load_config("smollm2", base + [f"input.sources={json.dumps(srcs)}"])
    model = QAnchorModel(cfg)
    assert model.prefix_length == prefix, model.prefix_length
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - t) * 1000


def peak_tflops(device: torch.device, dtype: torch.dtype) -> float:
    n = 4096 if device.type == "cuda" else 512
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = min(timed(lambda: a @ b, device) for _ in range(10))
    return 2 * n ** 3 / (best / 1000) / 1e12


def serving_rows(model, device, batch: int, scenarios: int, repeats: int) -> dict:
    from training.model.suffix import ScenarioSpec
    from training.model.synthetic import random_users
    from training.precision import autocast_for

    users = random_users(model.cfg.input, batch, seed=0, fill=1.0).to(device)
    scen = [ScenarioSpec(f"{QUERY} ({i})") for i in range(scenarios)]
    variants = {
        "naive": lambda: [model.full_forward(users, [s]) for s in scen],
        "cached": lambda: model.embed(model.encode_prefix(users), scen),
        "one": lambda: model.full_forward(users, scen[:1]),
    }
    times = {k: [] for k in variants}
    with torch.inference_mode(), autocast_for(model):
        for fn in variants.values():
            fn()
        for _ in range(repeats):
            for k, fn in variants.items():
                times[k].append(timed(fn, device))
        diff = (model.embed(model.encode_prefix(users), scen) - model.full_forward(users, scen)).abs().max().item()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batch": batch, "prefix": model.prefix_length, "scenarios": scenarios, "times_ms": times,
            "median_ms": med, "speedup_cached_vs_naive": med["naive"] / med["cached"],
            "cached_over_one": med["cached"] / med["one"],
            "embeddings_per_s_cached": batch * scenarios / (med["cached"] / 1000),
            "embeddings_per_s_naive": batch * scenarios / (med["naive"] / 1000),
            "cached_vs_full_max_abs_diff": diff}


def pretrain_rate(device, batch: int, steps: int, overrides: list[str]) -> dict:
    from training.config import load_config
    from training.losses import grad_cache_step
    from training.model.embedder import QAnchorModel
    from training.model.synthetic import random_users
    from training.precision import apply_precision, autocast, resolve_precision

    cfg = load_config("smollm2", [f"optim.batch_size={batch}", f"optim.chunk_size={batch}", *overrides])
    model = QAnchorModel(cfg).to(device).train()
    dtype = resolve_precision(cfg.backbone.compute, device)
    apply_precision(model, dtype)
    ctx = autocast(dtype, device) if dtype != torch.float32 else None
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    users = random_users(cfg.input, batch, seed=1, fill=0.8).to(device)
    queries = [f"What will this user do next? ({i})" for i in range(batch)]
    answers = [f"Watches comedies and dramas, rates thrillers low, about {i} films a month." for i in range(batch)]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        grad_cache_step(model.pretrain_forward, users, queries, answers, cfg.loss, cfg.optim.chunk_size, autocast=ctx)
        opt.step()

    step()
    ms = [timed(step, device) for _ in range(steps)]
    med = statistics.median(ms)
    return {"batch": batch, "steps": steps, "dtype": str(dtype).removeprefix("torch."), "step_ms": ms,
            "median_step_ms": med, "steps_per_s": 1000 / med, "pairs_per_s": batch * 1000 / med,
            "lora_r": cfg.lora.r}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prefix", type=int, default=512)
    ap.add_argument("--scenarios", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: only checks that everything runs")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu" / "results" / "gpu.json")
    args = ap.parse_args(argv)
    overrides: list[str] = []
    if args.dry_run:
        args.device, args.batch, args.prefix, args.scenarios, args.repeats = "cpu", 2, 128, 3, 1
        args.train_batch, args.steps = 2, 1
        overrides = ["lora.r=8", "input.max_answer_tokens=8"]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU host, or pass --dry-run to check the code path on CPU")
    t0 = time.perf_counter()
    from training.export.runtime import prepare_for_serving

    results: dict = {"benchmark": "gpu", "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                     "machine": describe(gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                                         cuda=torch.version.cuda),
                     "dry_run": args.dry_run}
    import transformers

    results["machine"]["transformers"] = transformers.__version__
    results["peak_bf16_tflops"] = peak_tflops(device, torch.bfloat16)
    rows = []
    for batch, prefix in ((args.batch, args.prefix), (1, min(256, args.prefix))):
        model = build(prefix, overrides).eval().to(device)
        dtype = prepare_for_serving(model)  # merged LoRA, serving dtype (bf16 on a bf16-capable GPU)
        row = serving_rows(model, device, batch, args.scenarios, args.repeats)
        n = sum(p.numel() for name, p in model._lm().named_parameters() if "embed_tokens" not in name)
        tokens = batch * (prefix + args.scenarios * 16)
        row["dtype"] = str(dtype).removeprefix("torch.")
        row["flop_floor_ms_cached"] = 2 * n * tokens / (results["peak_bf16_tflops"] * 1e12) * 1000
        rows.append(row)
        print(f"B={batch} L={prefix} S={args.scenarios}: naive {row['median_ms']['naive']:.1f} ms, cached "
              f"{row['median_ms']['cached']:.1f} ms ({row['speedup_cached_vs_naive']:.1f}x), one "
              f"{row['median_ms']['one']:.1f} ms", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    results["serving"] = rows
    results["pretrain"] = pretrain_rate(device, args.train_batch, args.steps, overrides)
    results["seconds_total"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    m = results["machine"]
    print(f"\n{m['gpu'] or 'CPU'}, torch {m['torch']}, transformers {m['transformers']}, bf16 matmul peak "
          f"{results['peak_bf16_tflops']:.1f} TFLOP/s{' (DRY RUN: CPU, tiny sizes)' if args.dry_run else ''}")
    print(f"{'B':>3} {'L':>4} {'S':>3} {'naive ms':>9} {'cached ms':>10} {'speedup':>8} {'one ms':>7} "
          f"{'cached/one':>10} {'emb/s cached':>13} {'floor ms':>9}")
    for r in rows:
        med = r["median_ms"]
        print(f"{r['batch']:>3} {r['prefix']:>4} {r['scenarios']:>3} {med['naive']:>9.1f} {med['cached']:>10.1f} "
              f"{r['speedup_cached_vs_naive']:>7.1f}x {med['one']:>7.1f} {r['cached_over_one']:>10.2f} "
              f"{r['embeddings_per_s_cached']:>13.0f} {r['flop_floor_ms_cached']:>9.2f}")
    p = results["pretrain"]
    print(f"pretraining step ({p['dtype']}, LoRA r={p['lora_r']}, {p['batch']} users/step): "
          f"{p['median_step_ms']:.0f} ms = {p['steps_per_s']:.2f} steps/s = {p['pairs_per_s']:.0f} pairs/s")
    print(f"total {results['seconds_total']:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
