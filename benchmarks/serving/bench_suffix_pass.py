"""The suffix pass of a cached GetUserEmbeddings(10): ten scenarios over one user's cached prefix, two packings side by
side in one run.

    .venv-model/bin/python benchmarks/serving/bench_suffix_pass.py [--checkpoint artifacts/default] [--threads 2]

  padded  every scenario padded to the longest query (what the model core did before; kept here as the baseline)
  packed  only each scenario's real tokens (QAnchorModel.embed_per_user, what serves now)
The ten queries are the visible scenarios of training/data/scenarios.yaml; the prefix is one random user's, encoded
once and shared. Variants interleaved per repeat, medians of wall and process CPU time; prints the token counts
and the max |difference| / min cosine between the two packings' embeddings (bf16 rounding differs with the shapes).
Writes benchmarks/serving/results/suffix_pass.json.
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
sys.path.insert(0, str(ROOT))  # the repository's packages, before the CPU-wait setting and torch
from benchmarks.machine import describe  # noqa: E402
from training.export.cpu_wait import apply as _apply_cpu_wait  # noqa: E402  (stdlib only, before torch)

_apply_cpu_wait()  # QANCHOR_CPU_WAIT: passive (default, as Triton) or spin, as the served model would run

import torch  # noqa: E402
import yaml  # noqa: E402


from training.artifacts import load_checkpoint  # noqa: E402
from training.export.runtime import prepare_for_serving  # noqa: E402
from training.model.masks import causal_allowed  # noqa: E402
from training.model.suffix import ScenarioSpec  # noqa: E402
from training.model.synthetic import random_users  # noqa: E402
from training.precision import autocast_for  # noqa: E402


def padded(model, cache, specs: list[ScenarioSpec]) -> torch.Tensor:
    """The previous packing (one user): S suffixes, each padded to the longest, in one row -> [S, out]."""
    p, s = cache.length, len(specs)
    suf = model._suffix([sc.query for sc in specs], [sc.soft_prompt for sc in specs])
    width = suf.ids.shape[1]
    packed = model._suffix_embeds(suf).reshape(1, s * width, -1)
    suf_valid = suf.valid.to(model.device)
    seg = torch.arange(1, s + 1, device=model.device).repeat_interleave(width).unsqueeze(0)
    key_valid = torch.cat([cache.valid, suf_valid.reshape(1, -1)], dim=1)
    k_seg = torch.cat([torch.zeros(1, p, dtype=seg.dtype, device=model.device), seg], dim=1)
    allowed = causal_allowed(key_valid, q_start=p, q_seg=seg, k_seg=k_seg)
    within = suf_valid.long().cumsum(dim=1) - 1
    pos = (cache.next_pos.unsqueeze(1) + within.reshape(1, -1)).clamp(min=0)
    hidden, _ = model._decode(packed, allowed, pos, past=cache, use_cache=True)
    idx = torch.arange(s, device=model.device) * width + suf.emb_pos.to(model.device)
    return model.project(hidden[0, idx])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "artifacts" / "default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "serving" / "results" / "suffix_pass.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, _, _ = load_checkpoint(args.checkpoint)
    dtype = prepare_for_serving(model)
    scenarios = yaml.safe_load((ROOT / "training" / "data" / "scenarios.yaml").read_text())["scenarios"][:10]
    specs = [ScenarioSpec(s["query"]) for s in scenarios]
    suf = model._suffix([s.query for s in specs], [None] * len(specs))
    tokens = {"padded": int(suf.ids.numel()), "packed": int(suf.valid.sum())}
    runs = {"padded": lambda: padded(model, cache, specs), "packed": lambda: model.embed_per_user(cache, [specs])}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    with torch.inference_mode(), autocast_for(model):
        cache = model.encode_prefix(random_users(model.cfg.input, 1, seed=1))
        a, b = runs["padded"]().float(), runs["packed"]()[0].float()
        diff = float((a - b).abs().max())
        cos = float(torch.nn.functional.cosine_similarity(a, b).min())
        for _ in range(args.repeats):
            for name, fn in runs.items():
                c0, w0 = time.process_time(), time.perf_counter()
                fn()
                times[name].append(((time.perf_counter() - w0) * 1000, (time.process_time() - c0) * 1000))
    res = {name: {"wall_ms": statistics.median(w for w, _ in t[1:]), "cpu_ms": statistics.median(c for _, c in t[1:]),
                  "tokens": tokens[name]} for name, t in times.items()}
    out = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": describe(),
           "threads": args.threads, "dtype": str(dtype), "prefix_tokens": int(cache.length), "max_abs_diff": diff,
           "min_cosine": cos,
           "results": res, "speedup_wall": res["padded"]["wall_ms"] / res["packed"]["wall_ms"],
           "speedup_cpu": res["padded"]["cpu_ms"] / res["packed"]["cpu_ms"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"{'variant':8} {'tokens':>6} {'wall ms':>8} {'cpu ms':>8}")
    for name, r in res.items():
        print(f"{name:8} {r['tokens']:>6} {r['wall_ms']:>8.1f} {r['cpu_ms']:>8.1f}")
    print(f"packed vs padded: {out['speedup_wall']:.2f}x wall, {out['speedup_cpu']:.2f}x CPU; max |diff| {diff:.4f}, "
          f"min cosine {cos:.5f}; load {out['machine']['loadavg'][0]:.1f}; {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
