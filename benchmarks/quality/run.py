"""Quality benchmark: linear-probe AUC / KS of user embeddings on the ten MovieLens scenarios.

    python benchmarks/quality/run.py --dataset ml-1m                      # baselines
    python benchmarks/quality/run.py --dataset ml-1m --checkpoint DIR     # + model rows from a pretrain checkpoint

Each row is a function returning user embeddings ([n_users, d] for all scenarios, or a dict scenario -> matrix
for scenario-specific embeddings). Rows that cannot run (no checkpoint, model API missing) are listed as skipped
with the reason. Writes benchmarks/results/quality.{md,json,png}; prints the table last.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from training import evaluate as ev  # noqa: E402
from training.data.encoder import cached_text_vectors  # noqa: E402
from training.data.scenarios import Scenario, load_scenarios  # noqa: E402
from training.data.world import UserWorld, WorldConfig, build_world  # noqa: E402

log = logging.getLogger("benchmarks.quality")
RESULTS = ROOT / "benchmarks" / "results"


class RowSkipped(Exception):
    """A row that cannot run here; the message says what it needs."""


@dataclass
class Context:
    world: UserWorld
    vecs: np.ndarray  # [n_texts, 384] float16 event-text vectors
    scenarios: list[Scenario]
    checkpoint: str | None
    device: str
    model_users: int | None  # cap on users embedded by model rows (CPU runs)


# ---- baseline rows -------------------------------------------------------------------------------------------
def row_bag_of_items(ctx: Context):
    return ev.bag_of_items(ctx.world)


def row_bag_of_genres(ctx: Context):
    return ev.bag_of_genres(ctx.world)


def row_tabular(ctx: Context):
    return ctx.world.tabular


def row_minilm_mean(ctx: Context):
    return ev.mean_text_vector(ctx.world, ctx.vecs)


def row_minilm_source_mean(ctx: Context):
    return ev.mean_text_vector(ctx.world, ctx.vecs, per_source=True)


# ---- model rows (need a pretrain checkpoint) -----------------------------------------------------------------
STATIC_QUERY = "Describe this user."  # one query for every scenario: a static user embedding (FOUND-like)


def _model_embeddings(ctx: Context, queries: dict[str, str], prompts: dict[str, Any] | None = None):
    if not ctx.checkpoint:
        raise RowSkipped("needs --checkpoint (a training.pretrain output directory)")
    try:
        import torch

        from training.data.collate import UserCollator
        from training.model.suffix import ScenarioSpec
        from training.pretrain import load_pretrained
    except ImportError as exc:  # the model API is still landing
        raise RowSkipped(f"model API unavailable: {exc}") from None
    model = load_pretrained(ctx.checkpoint, device=ctx.device).eval()
    collate = UserCollator(ctx.world, ctx.vecs)
    users = ctx.world.users()
    if ctx.model_users:
        users = _cap_users(ctx.world, ctx.model_users)
    names = list(queries)
    specs = [ScenarioSpec(queries[n], (prompts or {}).get(n)) for n in names]
    out = {n: np.zeros((len(ctx.world.ml.users), model.cfg.head.out), np.float32) for n in names}
    with torch.inference_mode():
        for i in range(0, len(users), 16):
            chunk = users[i:i + 16]
            emb = model.embed(model.encode_prefix(collate.batch(chunk)), specs).float().cpu().numpy()  # [b, S, d]
            for j, n in enumerate(names):
                out[n][chunk] = emb[:, j]
    return out


def _cap_users(world: UserWorld, n: int) -> list[int]:
    # keep all val/test users (the probe's evaluation set) and the first n train users
    return sorted(world.users("train")[:n] + world.users("val") + world.users("test"))


def row_static_query(ctx: Context):
    same = _model_embeddings(ctx, {"static": STATIC_QUERY})["static"]
    return {s.name: same for s in ctx.scenarios}


def row_qanchor_zero_shot(ctx: Context):
    return _model_embeddings(ctx, {s.name: s.query for s in ctx.scenarios})


def row_qanchor_prompt_tuned(ctx: Context):
    raise RowSkipped("needs tuned soft prompts per scenario (training.tune); not wired into this benchmark yet")


ROWS: dict[str, Callable[[Context], Any]] = {
    "bag_of_items+genres (LR)": row_bag_of_items,
    "bag_of_genres (LR)": row_bag_of_genres,
    "tabular stats (LR)": row_tabular,
    "mean MiniLM of event texts": row_minilm_mean,
    "per-source mean MiniLM": row_minilm_source_mean,
    "Q-Anchor static query": row_static_query,
    "Q-Anchor zero-shot": row_qanchor_zero_shot,
    "Q-Anchor prompt-tuned": row_qanchor_prompt_tuned,
}
BASELINES = list(ROWS)[:5]


def run_row(name: str, ctx: Context, seeds: tuple[int, ...]) -> dict:
    t0 = time.perf_counter()
    try:
        emb = ROWS[name](ctx)
    except RowSkipped as exc:
        log.info("row_skipped row=%r reason=%s", name, exc)
        return {"row": name, "skipped": str(exc)}
    results = []
    for s in ctx.scenarios:
        e = emb[s.name] if isinstance(emb, dict) else emb
        results.append(asdict(ev.probe(e, ctx.world, s, seeds)))
    row = {"row": name, "scenarios": results, "seconds": round(time.perf_counter() - t0, 1),
           "auc_avg": float(np.mean([r["auc_mean"] for r in results])),
           "ks_avg": float(np.mean([r["ks_mean"] for r in results])),
           # spread of the average over seeds: average per seed, then std
           "auc_avg_std": float(np.std(np.mean([r["aucs"] for r in results], axis=0))),
           "ks_avg_std": float(np.std(np.mean([r["kss"] for r in results], axis=0)))}
    log.info("row_done row=%r auc_avg=%.4f ks_avg=%.4f seconds=%.1f", name, row["auc_avg"], row["ks_avg"],
             row["seconds"])
    return row


def markdown(rows: list[dict], scenarios: list[Scenario], meta: dict) -> str:
    head = "| row | avg AUC | avg KS | " + " | ".join(s.name for s in scenarios) + " |"
    lines = [f"Linear-probe AUC (KS in the avg column) on {meta['dataset']}, test users={meta['n_test']}, "
             f"seeds={meta['seeds']}; mean +- std over seeds.", "", head,
             "|" + "---|" * (3 + len(scenarios))]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['row']} | skipped: {r['skipped']} |" + " |" * (1 + len(scenarios)))
            continue
        cells = [f"{x['auc_mean']:.3f}" for x in r["scenarios"]]
        lines.append(f"| {r['row']} | {r['auc_avg']:.4f} +- {r['auc_avg_std']:.4f} | "
                     f"{r['ks_avg']:.4f} +- {r['ks_avg_std']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], scenarios: list[Scenario], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if "skipped" not in r]
    names = [s.name for s in scenarios] + ["AVERAGE"]
    width = 0.8 / max(len(done), 1)
    fig, ax = plt.subplots(figsize=(14, 5))
    for i, r in enumerate(done):
        vals = [x["auc_mean"] for x in r["scenarios"]] + [r["auc_avg"]]
        errs = [x["auc_std"] for x in r["scenarios"]] + [r["auc_avg_std"]]
        ax.bar(np.arange(len(names)) + i * width, vals, width, yerr=errs, label=r["row"])
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=30, ha="right")
    ax.set_ylim(0.45, 1.0)
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.set_ylabel("test AUC (linear probe)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-1m", choices=["ml-1m", "ml-100k"])
    p.add_argument("--rows", nargs="*", default=None, help=f"subset of rows (default: all); known: {list(ROWS)}")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--checkpoint", default=os.environ.get("QANCHOR_CHECKPOINT"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--model-users", type=int, default=None, help="cap train users embedded by model rows")
    p.add_argument("--out", default=str(RESULTS / "quality"), help="output path stem (.md/.json/.png added)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # tiny LR fits: BLAS threads only contend on a shared machine
    world = build_world(WorldConfig(dataset=args.dataset))
    vecs = cached_text_vectors(world.texts, args.dataset)
    scenarios = load_scenarios()
    ctx = Context(world, vecs, scenarios, args.checkpoint, args.device, args.model_users)
    seeds = tuple(range(args.seeds))
    rows = [run_row(n, ctx, seeds) for n in (args.rows or list(ROWS))]
    meta = {"dataset": args.dataset, "n_train": len(world.users("train")), "n_test": len(world.users("test")),
            "seeds": len(seeds), "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python benchmarks/quality/run.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = markdown(rows, scenarios, meta)
    out.with_suffix(".md").write_text(md + f"\n{meta['machine']}, {meta['date']}: `{meta['command']}`\n")
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    plot(rows, scenarios, out.with_suffix(".png"))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
