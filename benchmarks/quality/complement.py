"""Does the scenario query's state hold user information that the static query's state lacks?

    .venv-model/bin/python benchmarks/quality/complement.py --checkpoint artifacts/default --train-users 1000 \
        --val-users 300 --eval-users 625 --embed-cache var/embcache --out benchmarks/results/complement_visible
    # the unseen eight: add --scenarios benchmarks/quality/scenarios_unseen.yaml (and another --out)

Probes (run.py's protocol: C by folds, paired bootstrap over the test users) on the static state, the zero-shot
state, the two side by side (`[zero-shot; static]`, 2 x hidden dims) and their sum. If the query selected
information the generic query's state does not carry, `[zero-shot; static]` would beat `static`; if it only
re-weights what both carry (or loses some), it will not. Reads the model embeddings run.py keeps in --embed-cache
(the same key: a run.py table of the same checkpoint and users with --tune-steps 0 has already embedded them).
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
from benchmarks.quality.run import add_population_args, build_context, model_embeddings  # noqa: E402
from training import evaluate as ev  # noqa: E402

PAIRS = [("zero-shot", "static"), ("[zero-shot; static]", "static"), ("[zero-shot; static]", "zero-shot"),
         ("zero-shot + static", "static")]


def rows(ctx) -> list[dict]:
    """The four probed rows, each with its probes (for the bootstrap) and average test AUC."""
    emb = model_embeddings(ctx)
    static = emb["static"]["static"]
    variants = {"static": lambda s: static,
                "zero-shot": lambda s: emb["zero_shot"][s.name],
                "[zero-shot; static]": lambda s: np.concatenate([emb["zero_shot"][s.name], static], axis=1),
                "zero-shot + static": lambda s: emb["zero_shot"][s.name] + static}
    out = []
    for label, x in variants.items():
        probes = [ev.probe(x(s), ctx.world, s, seeds=(0,), subsample=1.0, c_choice="cv") for s in ctx.scenarios]
        out.append({"row": label, "probes": probes, "auc_avg": float(np.mean([p.auc_mean for p in probes]))})
    return out


def markdown(ctx, table: list[dict], draws: int) -> str:
    return paired_tables(table, PAIRS, draws, scenarios=[s.name for s in ctx.scenarios])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_population_args(p)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "complement"))
    args = p.parse_args(argv)
    if args.tune_steps:
        raise SystemExit("--tune-steps: this diagnostic reads the query-only rows; leave it at 0")
    ctx = build_context(args)
    md = markdown(ctx, rows(ctx), args.draws)
    stamp = (f"{platform.machine()} {os.cpu_count()} cores, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: "
             f"`python benchmarks/quality/complement.py {' '.join(argv if argv is not None else sys.argv[1:])}`")
    Path(args.out).with_suffix(".md").write_text(md + "\n\n" + stamp + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
