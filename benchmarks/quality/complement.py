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
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.quality.intervals import paired_tables  # noqa: E402
from benchmarks.quality.run import (add_population_args, build_context, model_embeddings,  # noqa: E402
                                    require_checkpoint)
from training import evaluate as ev  # noqa: E402

PAIRS = [("zero-shot", "static"), ("[zero-shot; static]", "static"), ("[zero-shot; static]", "zero-shot"),
         ("zero-shot + static", "static")]
STATIC_FROM = "static-from"  # the --static-from model's key in run.py's Context (an ablation label)


def rows(ctx) -> list[dict]:
    """The probed rows, each with its probes (for the bootstrap) and average test AUC: static, zero-shot, the two
    side by side and (one model) their sum."""
    emb = model_embeddings(ctx)
    other = STATIC_FROM in ctx.ablations
    static = (model_embeddings(ctx, STATIC_FROM) if other else emb)["static"]["static"]
    variants = {"static": lambda s: static,
                "zero-shot": lambda s: emb["zero_shot"][s.name],
                "[zero-shot; static]": lambda s: np.concatenate([emb["zero_shot"][s.name], static], axis=1)}
    if not other:
        variants["zero-shot + static"] = lambda s: emb["zero_shot"][s.name] + static
    out = []
    for label, x in variants.items():
        probes = [ev.probe(x(s), ctx.world, s, seeds=(0,), subsample=1.0, c_choice="cv") for s in ctx.scenarios]
        out.append({"row": label, "probes": probes, "auc_avg": float(np.mean([p.auc_mean for p in probes]))})
    return out


def markdown(ctx, table: list[dict], draws: int) -> str:
    head = (f"`static` is the generic query's state of {ctx.ablations[STATIC_FROM]}; `zero-shot` this checkpoint's "
            "scenario state.\n\n" if STATIC_FROM in ctx.ablations else "")
    # a pair whose row is absent (the sum, under --static-from) is left out by paired_claims
    return head + paired_tables(table, PAIRS, draws, scenarios=[s.name for s in ctx.scenarios])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_population_args(p)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "complement"))
    p.add_argument("--static-from", metavar="CHECKPOINT", default=None,
                   help="take the static state from another checkpoint (e.g. artifacts/default)")
    args = p.parse_args(argv)
    if args.tune_steps:
        raise SystemExit("--tune-steps: this diagnostic reads the query-only rows; leave it at 0")
    if args.static_from:
        require_checkpoint(p, "--static-from", args.static_from)
    ctx = build_context(args, ablations={STATIC_FROM: args.static_from} if args.static_from else {})
    md = markdown(ctx, rows(ctx), args.draws)
    stamp = (f"{platform.machine()} {os.cpu_count()} cores, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: "
             f"`python benchmarks/quality/complement.py {' '.join(argv if argv is not None else sys.argv[1:])}`")
    Path(args.out).with_suffix(".md").write_text(md + "\n\n" + stamp + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
