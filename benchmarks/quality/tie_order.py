"""How much a model's embedding depends on the order of a user's same-second events.

Ingest keeps a user's events of one second in whatever order the producer sent them (docs/data.md), so two
producers that send the same events can get two embeddings. This embeds the capped world's test users (run.py's
seeded subsets, so the users of the quality tables) once in timeline order and again with their same-second
events shuffled (`--orders` draws; training.data.collate.user_record's `rng`, the draw `data.tie_shuffle`
pretrains on), under the static query and every scenario's query, and reports the cosine of each shuffled
embedding to the timeline-order one, per model, side by side:

    .venv-model/bin/python benchmarks/quality/tie_order.py --checkpoint artifacts/default \\
        --compare "ties-450=var/runs/ties-450/checkpoint" --train-users 1000 --val-users 300 --eval-users 625 \\
        --out benchmarks/results/tie_order

Users without same-second events in their history are reported apart (their cosine is 1 by construction: a check).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import command_line, describe, summary, utc_now  # noqa: E402

from benchmarks.quality import run as quality  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def users_with_ties(ctx: quality.Context, users: list[int]) -> set[int]:
    """Users with at least two history events in one second."""
    world = quality.full_world(ctx.world)
    out = set()
    for u in users:
        ts = world.row_ts(world.timelines[u].history)
        if len(np.unique(ts)) < len(ts):
            out.add(u)
    return out


def embed_orders(ctx: quality.Context, key: str, users: list[int], orders: int) -> np.ndarray:
    """[1 + orders, users, specs, D] embeddings: timeline order first, then each shuffled draw (seeded per batch)."""
    import torch

    from training.precision import autocast

    model, dtype = quality.load_model_at_precision(ctx, key)
    collate = quality.model_collator(ctx, model)
    specs = list(quality.query_specs(ctx).values())
    out = np.zeros((1 + orders, len(users), len(specs), model.embedding_dim), np.float32)
    t0 = time.perf_counter()
    with torch.inference_mode(), autocast(dtype, ctx.device):
        for i in range(0, len(users), 16):
            part = users[i:i + 16]
            for o in range(1 + orders):
                rng = np.random.default_rng((o, i)) if o else None
                prefix = model.encode_prefix(collate.batch(part, rng))
                out[o, i:i + len(part)] = model.embed(prefix, specs).float().cpu().numpy()
            quality.log.info("tie_order_progress model=%s users=%d/%d seconds=%.0f", key, i + len(part), len(users),
                             time.perf_counter() - t0)
    return out


def cosine_summary(emb: np.ndarray, rows: np.ndarray) -> dict[str, float]:
    """Cosines of every shuffled draw to the timeline order, over `rows` (users) x specs x draws."""
    if len(rows) == 0:
        return {"n_users": 0, "pairs": 0}
    a = emb[0, rows][None]  # [1, n, S, D]
    b = emb[1:, rows]  # [orders, n, S, D]
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
    c = cos.ravel()
    return {"n_users": int(len(rows)), "pairs": int(c.size), "mean": float(c.mean()),
            "p01": float(np.quantile(c, 0.01)), "min": float(c.min()), "share_below_0.99": float((c < 0.99).mean()),
            "per_user_min_mean": float(cos.min(axis=(0, 2)).mean())}


def markdown(result: dict) -> str:
    lines = [f"# Same-second order: cosine of a shuffled order's embedding to the timeline order's "
             f"({result['date']}, {summary(result['machine'])})", "",
             f"{result['n_test']} test users ({result['n_ties']} with same-second events in their history), "
             f"{result['orders']} shuffled orders, {result['specs']} queries (static + each scenario's).", "",
             "| model | users | mean | 1st pct | min | share < 0.99 |", "|---|---|---|---|---|---|"]
    for label, r in result["models"].items():
        for part in ("ties", "no_ties"):
            s = r[part]
            if s["n_users"]:
                lines.append(f"| {label} ({part.replace('_', ' ')}) | {s['n_users']} | {s['mean']:.4f} | "
                             f"{s['p01']:.4f} | {s['min']:.4f} | {s['share_below_0.99']:.3f} |")
    return "\n".join(lines + ["", f"Command: `{result['command']}`", ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    quality.add_population_args(p)
    p.add_argument("--compare", action="append", default=[], metavar="LABEL=CHECKPOINT[#EMBEDDING]",
                   help="another checkpoint measured on the same users and draws (repeatable; as run.py --ablation)")
    p.add_argument("--orders", type=int, default=2, help="shuffled orders per user")
    p.add_argument("--out", default=str(RESULTS / "tie_order"), help="output path stem (.md/.json added)")
    args = p.parse_args(argv)
    if not args.checkpoint:
        p.error("--checkpoint is required (e.g. artifacts/default)")
    quality.require_checkpoint(p, "--checkpoint", args.checkpoint)
    ablations, ablation_embedding = quality.parse_ablations(p, "--compare", args.compare)
    if args.orders < 1:
        p.error("--orders must be >= 1")
    ctx = quality.build_context(args, ablations=ablations, ablation_embedding=ablation_embedding)
    users = sorted(ctx.world.users("test"))
    ties = users_with_ties(ctx, users)
    tie_rows = np.array([i for i, u in enumerate(users) if u in ties], int)
    free_rows = np.array([i for i, u in enumerate(users) if u not in ties], int)
    models = {}
    for label, key in [(Path(args.checkpoint).as_posix(), "trained"), *((a, a) for a in ablations)]:
        emb = embed_orders(ctx, key, users, args.orders)
        models[label] = {"ties": cosine_summary(emb, tie_rows), "no_ties": cosine_summary(emb, free_rows)}
    result = {"n_test": len(users), "n_ties": len(ties), "orders": args.orders, "specs": len(quality.query_specs(ctx)),
              "models": models, "machine": describe(),
              "date": utc_now(), "command": command_line("benchmarks/quality/tie_order.py", argv)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
