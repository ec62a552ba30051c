"""Prefix KV cache on CPU: SmolLM2-135M (real weights), one user, prefix 256 tokens, suffix 16 tokens, fp32.

    .venv-model/bin/python benchmarks/prefix_cache/bench_prefix_cache.py [--repeats 5] [--threads 2]

Side by side, interleaved per repeat (so machine noise hits every variant alike):
  one          one scenario, one full forward over prefix + suffix (272 tokens)
  ten_cached   ten scenarios: the prefix once + the ten suffixes in one packed forward (QAnchorModel.embed)
  ten_runtime  the same through the serving core (training.export.runtime: LRU miss, embed_many)
  ten_hit      ten scenarios when the prefix is already cached (suffixes only: the LRU-hit cost)
  ten_full     ten full forwards, one per scenario (no cache)
Targets (docs/serving_model.md): ten_cached <= 1.6x one (arithmetic floor (256+160)/(256+16) = 1.53x) and
>= 5x faster than ten_full. Prints a table last; writes benchmarks/results/prefix_cache.json and a PNG.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import describe  # noqa: E402

from training.config import load_config  # noqa: E402
from training.export.artifact import LoadedModel  # noqa: E402
from training.export.runtime import EmbedRequest, QAnchorRuntime  # noqa: E402
from training.model.embedder import QAnchorModel  # noqa: E402
from training.model.suffix import ScenarioSpec  # noqa: E402
from training.model.synthetic import random_users  # noqa: E402

PREFIX, SUFFIX, N_SCEN = 256, 16, 10
QUERIES = [  # each is longer than 15 tokens; max_query_tokens=15 + <USER_EMB> makes every suffix 16 tokens
    "Will this user rate a newly released romantic comedy with a famous lead actor highly next week?",
    "Is this user likely to stop rating movies altogether during the next month or two from now?",
    "Does this user prefer old black and white films to new releases with big budgets and effects?",
    "Would this user enjoy a long science fiction series with complex world building and many seasons?",
    "Is this user a parent who watches animated family movies with children on weekend afternoons?",
    "Will this user give a low rating to a horror movie recommended on the front page this evening?",
    "Does this user watch mostly documentaries about history, politics and current world affairs?",
    "Is this user sensitive to big seasonal promotions and discounted subscription offers right now?",
    "Would this user click an advertisement for a live concert film of a classic rock band tonight?",
    "Does this user rate thrillers with twist endings higher than the average viewer of the platform?",
]


def build(threads: int) -> QAnchorModel:
    """SmolLM2 preset with the first source's K grown so the prefix is exactly PREFIX tokens (sized with the
    tokenizer alone: building the 135M model twice costs minutes on a busy 2-core machine)."""
    from transformers import AutoTokenizer

    from training.backbones import ensure_smollm2_dir
    from training.model.tokens import add_special_tokens, build_layout

    torch.set_num_threads(threads)
    base = ["input.max_query_tokens=15", "lora.dropout=0.0"]
    cfg = load_config("smollm2", base)
    tok = AutoTokenizer.from_pretrained(str(ensure_smollm2_dir()), local_files_only=True)
    special = add_special_tokens(tok, [s.name for s in cfg.input.sources])
    extra = PREFIX - build_layout(tok, cfg.input, special).length
    srcs = [{"name": s.name, "k": s.k + (extra if i == 0 else 0)} for i, s in enumerate(cfg.input.sources)]
    cfg = load_config("smollm2", base + [f"input.sources={json.dumps(srcs)}"])
    model = QAnchorModel(cfg).eval()
    assert model.prefix_length == PREFIX, model.prefix_length
    return model


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "prefix_cache.json")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    model = build(args.threads)
    load_s = time.perf_counter() - t0
    users = random_users(model.cfg.input, 1, seed=0, fill=1.0)
    scen = [ScenarioSpec(q) for q in QUERIES[:N_SCEN]]
    suf = model._suffix([s.query for s in scen], [None] * N_SCEN)
    assert int(suf.valid.sum(1).min()) == SUFFIX == int(suf.valid.sum(1).max()), suf.valid.sum(1)
    rt = QAnchorRuntime([LoadedModel(model, model.cfg, "bench", "preset:smollm2", {})], cache_bytes=1 << 30)
    req = EmbedRequest(user_id="u", feature_version=1, model_version="",
                       event_vecs={s: users.event_vecs[s][0].numpy() for s in users.event_vecs},
                       event_mask={s: users.event_mask[s][0].numpy() for s in users.event_mask},
                       tabular=users.tabular[0].numpy(), queries=QUERIES[:N_SCEN])
    fv = [1]

    def runtime_miss() -> None:
        fv[0] += 1  # a new feature version: always a miss, so this times prefix + suffixes through the runtime
        req.feature_version = fv[0]
        rt.serve([req])

    cache = model.encode_prefix(users)
    variants = {
        "one": lambda: model.full_forward(users, scen[:1]),
        "ten_cached": lambda: model.embed(model.encode_prefix(users), scen),
        "ten_runtime": runtime_miss,
        "ten_hit": lambda: model.embed(cache, scen),
        "ten_full": lambda: [model.full_forward(users, [s]) for s in scen],
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        for name, fn in variants.items():  # warm-up: first calls allocate and pick kernels
            if name != "ten_full":  # ten times "one", already warm
                fn()
        for rep in range(args.repeats):
            for name, fn in variants.items():
                times[name].append(timed(fn))
            print(f"repeat {rep + 1}/{args.repeats}: " + " ".join(f"{k}={v[-1]:.0f}ms" for k, v in times.items()),
                  flush=True)
        full = model.full_forward(users, scen)
        cached = model.embed(model.encode_prefix(users), scen)
    med = {k: statistics.median(v) for k, v in times.items()}
    summary = {
        "ten_cached_over_one": med["ten_cached"] / med["one"],
        "ten_runtime_over_one": med["ten_runtime"] / med["one"],
        "ten_full_over_ten_cached": med["ten_full"] / med["ten_cached"],
        "ten_full_over_ten_runtime": med["ten_full"] / med["ten_runtime"],
        "floor_ten_over_one": (PREFIX + N_SCEN * SUFFIX) / (PREFIX + SUFFIX),
        "cached_vs_full_max_abs_diff": float((full - cached).abs().max()),
    }
    result = {
        "benchmark": "prefix_cache", "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": describe(threads=args.threads, loadavg_1m_before=load_before, loadavg_1m_after=os.getloadavg()[0]),
        "settings": {"backbone": model.backbone_name, "dtype": model.cfg.backbone.dtype,
                     "attn": model.cfg.backbone.attn_implementation, "prefix": PREFIX, "suffix": SUFFIX,
                     "scenarios": N_SCEN, "repeats": args.repeats, "model_build_s": load_s,
                     "kv_bytes_per_user": cache.nbytes},
        "times_ms": times, "median_ms": med, "summary": summary,
        "targets": {"ten_cached_over_one_max": 1.6, "ten_full_over_ten_cached_min": 5.0},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    _plot(result, args.out.with_suffix(".png"))
    print(f"\nSmolLM2-135M fp32 CPU, threads={args.threads}, prefix {PREFIX}, suffix {SUFFIX}, S={N_SCEN}, "
          f"repeats={args.repeats}, load 1m {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"{'variant':<12} {'median ms':>10} {'min ms':>9} {'x one':>7}")
    for k in variants:
        print(f"{k:<12} {med[k]:>10.1f} {min(times[k]):>9.1f} {med[k] / med['one']:>7.2f}")
    print(f"ten_cached / one = {summary['ten_cached_over_one']:.2f}x (target <= 1.6, floor "
          f"{summary['floor_ten_over_one']:.2f}); ten_full / ten_cached = {summary['ten_full_over_ten_cached']:.1f}x "
          f"(target >= 5); cached vs full max |diff| {summary['cached_vs_full_max_abs_diff']:.2e}")
    return 0


# What each variant means, in the words a reader of the chart needs (the JSON keeps the short keys).
PLAIN = {
    "one": "1 scenario\n(one full forward)",
    "ten_cached": "10 scenarios,\nprefix computed once",
    "ten_runtime": "10 scenarios through\nthe serving runtime",
    "ten_hit": "10 scenarios,\nprefix already cached",
    "ten_full": "10 scenarios,\nno cache (10 forwards)",
}


def _plot(result: dict, path: Path) -> None:
    from benchmarks.plot import pyplot

    plt = pyplot()
    if plt is None:
        return
    names = list(result["median_ms"])
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(range(len(names)), [result["median_ms"][n] for n in names],
           color=["#888", "#2a7", "#2a7", "#7c5", "#c44"][:len(names)])
    for i, n in enumerate(names):
        ax.scatter([i] * len(result["times_ms"][n]), result["times_ms"][n], color="k", s=8, zorder=3)
    ax.set_xticks(range(len(names)), [PLAIN.get(n, n) for n in names], fontsize=8)
    ax.set_ylabel("milliseconds per user (bar: median, dots: repeats)")
    ax.set_title(f"One user's embeddings on CPU: what sharing the user prefix saves\n"
                 f"SmolLM2-135M fp32, user prefix {PREFIX} tokens, scenario suffix {SUFFIX} tokens", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
