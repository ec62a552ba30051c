"""Does the scenario query's state hold user information that the static query's state lacks?

    .venv-model/bin/python benchmarks/quality/complement.py --checkpoint artifacts/default --train-users 1000 \
        --val-users 300 --eval-users 625 --embed-cache var/embcache --out benchmarks/results/complement_visible
    # the unseen eight: add --scenarios benchmarks/quality/scenarios_unseen.yaml (and another --out)

Probes (run.py's protocol: C by folds, paired bootstrap over the test users) on the static state, the zero-shot
state, the two side by side (`[zero-shot; static]`, 2 x hidden dims) and their sum. If the query selected
information the generic query's state does not carry, `[zero-shot; static]` would beat `static`; if it only
re-weights what both carry (or loses some), it will not. Reads the model embeddings run.py keeps in --embed-cache
(the same key: a run.py table of the same checkpoint and users with --tune-steps 0 has already embedded them).

`--static-from OTHER_CHECKPOINT` takes the static state from another model (e.g. the served default): does this
checkpoint's scenario state hold user information that model's generic state lacks? The sum row is left out then
(two models' spaces do not add).

`--dims 8 16 32` adds the compact reading: each state cut to its first k principal components, fitted without
labels on the train users' states of that same query, then probed alike (`static @k`, `zero-shot @k`). A full-width
probe is blind to a query that only re-weights user differences; a k-dim embedding (what a serving team stores per
user and scenario when memory is short) keeps the k strongest, so there the re-weighting can count.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import stamp  # noqa: E402

from benchmarks.quality.intervals import paired_tables  # noqa: E402
from benchmarks.quality.run import (add_population_args, build_context, model_embeddings,  # noqa: E402
                                    require_checkpoint)
from training import evaluate as ev  # noqa: E402

PAIRS = [("zero-shot", "static"), ("[zero-shot; static]", "static"), ("[zero-shot; static]", "zero-shot"),
         ("zero-shot + static", "static")]
STATIC_FROM = "static-from"  # the --static-from model's key in run.py's Context (an ablation label)


def top_components(x: np.ndarray, fit_rows: np.ndarray, k: int) -> np.ndarray:
    """Every row of x ([n, d]) projected on the first k principal components of x[fit_rows] (centred on their
    mean; no labels): the k directions along which those users differ most in this embedding."""
    x = np.asarray(x, np.float64)
    mean = x[fit_rows].mean(axis=0)
    _, _, vt = np.linalg.svd(x[fit_rows] - mean, full_matrices=False)
    return ((x - mean) @ vt[:k].T).astype(np.float32)


def dims_pairs(dims: list[int]) -> list[tuple[str, str]]:
    return [(f"zero-shot @{k}", f"static @{k}") for k in dims]


def rows(ctx, dims: list[int] = ()) -> list[dict]:
    """The probed rows, each with its probes (for the bootstrap) and average test AUC: static, zero-shot, the two
    side by side, (one model) their sum and, per k in dims, both states cut to their first k components."""
    emb = model_embeddings(ctx)
    other = STATIC_FROM in ctx.ablations
    static = (model_embeddings(ctx, STATIC_FROM) if other else emb)["static"]["static"]
    variants = {"static": lambda s: static,
                "zero-shot": lambda s: emb["zero_shot"][s.name],
                "[zero-shot; static]": lambda s: np.concatenate([emb["zero_shot"][s.name], static], axis=1)}
    if not other:
        variants["zero-shot + static"] = lambda s: emb["zero_shot"][s.name] + static
    train = ctx.world.users("train")
    for k in dims:
        variants[f"static @{k}"] = lambda s, cut=top_components(static, train, k): cut
        variants[f"zero-shot @{k}"] = lambda s, k=k: top_components(emb["zero_shot"][s.name], train, k)
    out = []
    for label, x in variants.items():
        probes = [ev.probe(x(s), ctx.world, s, seeds=(0,), subsample=1.0, c_choice="cv") for s in ctx.scenarios]
        out.append({"row": label, "probes": probes, "auc_avg": float(np.mean([p.auc_mean for p in probes]))})
    return out


def markdown(ctx, table: list[dict], draws: int, dims: list[int] = ()) -> str:
    head = (f"`static` is the generic query's state of {ctx.ablations[STATIC_FROM]}; `zero-shot` this checkpoint's "
            "scenario state.\n\n" if STATIC_FROM in ctx.ablations else "")
    # a pair whose row is absent (the sum, under --static-from) is left out by paired_claims
    return head + paired_tables(table, PAIRS + dims_pairs(dims), draws, scenarios=[s.name for s in ctx.scenarios])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_population_args(p)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "complement"))
    p.add_argument("--static-from", metavar="CHECKPOINT", default=None,
                   help="take the static state from another checkpoint (e.g. artifacts/default)")
    p.add_argument("--dims", type=int, nargs="*", default=[], metavar="K",
                   help="also probe both states cut to their first K principal components (fitted on train users)")
    args = p.parse_args(argv)
    if args.tune_steps:
        raise SystemExit("--tune-steps: this diagnostic reads the query-only rows; leave it at 0")
    if args.static_from:
        require_checkpoint(p, "--static-from", args.static_from)
    ctx = build_context(args, ablations={STATIC_FROM: args.static_from} if args.static_from else {})
    if any(k < 1 for k in args.dims):
        raise SystemExit(f"--dims {args.dims}: each K must be a positive number of components")
    md = markdown(ctx, rows(ctx, args.dims), args.draws, args.dims)
    footer = stamp("benchmarks/quality/complement.py", argv)
    Path(args.out).with_suffix(".md").write_text(md + "\n\n" + footer + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
