"""How far does the quality table's probe move when a model's embeddings move by bf16 rounding? Re-probes the cached
embeddings of a run.py run (same flags, same --embed-cache) as they are and with a relative perturbation of the
size of bf16 rounding, several times, and reports per scenario the C the val users choose and the test AUC.

Two runs of one model on one machine differ by this much (the suffix pass packs different spec sets, so bf16 sums
round differently); the bootstrap intervals over test users do not include it.

    .venv-model/bin/python benchmarks/quality/probe_stability.py --dataset ml-1m --checkpoint artifacts/default \\
        --train-users 1000 --val-users 300 --eval-users 625 --tune-steps 200 --tune-objective probe \\
        --embed-cache var/embcache --out benchmarks/results/probe_stability_visible.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BF16_HALF_ULP = 2.0 ** -9  # bf16 keeps 8 significant bits: rounding moves a value by up to this share of itself


def perturb(emb: np.ndarray, rel: float, seed: int) -> np.ndarray:
    """emb * (1 + rel * N(0, 1)) elementwise: rounding-sized noise, reproducible per seed."""
    noise = np.random.default_rng(seed).standard_normal(emb.shape).astype(np.float32)
    return emb * (1.0 + rel * noise)


def summarise(per: dict[str, list[tuple[float, float]]]) -> dict[str, float]:
    """per: scenario -> [(chosen C, test AUC)] with the unperturbed probe first. -> how often C flips, the largest
    per-scenario AUC spread, and the spread of the average over scenarios."""
    aucs = np.array([[a for _, a in v] for v in per.values()])  # [scenarios, reps + 1]
    flips = sum(len({c for c, _ in v}) > 1 for v in per.values())
    avg = aucs.mean(axis=0)
    return {"scenarios_with_c_flips": float(flips), "max_scenario_spread": float((aucs.max(1) - aucs.min(1)).max()),
            "average_spread": float(avg.max() - avg.min())}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.quality import run as quality
    from training import evaluate as ev

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    quality.add_population_args(ap)
    quality.add_probe_args(ap)
    ap.add_argument("--reps", type=int, default=5, help="perturbed re-probes per scenario")
    ap.add_argument("--rel", type=float, default=BF16_HALF_ULP, help="relative perturbation (default: bf16 rounding)")
    ap.add_argument("--out", help="also write the markdown here")
    args = ap.parse_args(argv)
    ctx = quality.build_context(args, subsample=1.0, same_question=False)
    how = "by 5-fold over train + val users" if args.c_choice == "cv" else "on the val users"
    lines = [f"Relative perturbation {args.rel:.2g} (bf16 rounding), {args.reps} re-probes; C chosen {how} "
             "(run.py --c-choice); test AUC of the seed-0 probe.", "",
             "| row | scenario | C chosen (as is, then perturbed) | test AUC as is | range | spread |",
             "|---|---|---|---|---|---|"]
    summary = {}
    for label in ("Q-Anchor zero-shot", "Q-Anchor static query", "Q-Anchor prompt-tuned"):
        try:  # the cached embeddings of the run.py run with these flags (else computed once)
            rows = quality.ROWS[label](ctx)
        except quality.RowSkipped:  # the tuned row without --tune-steps
            continue
        per = {}
        for s in ctx.scenarios:
            e = rows[s.name]
            per[s.name] = []
            for rep in range(args.reps + 1):
                x = e if rep == 0 else perturb(e, args.rel, rep)
                p = ev.probe(x, ctx.world, s, (0,), subsample=1.0, c_choice=args.c_choice)
                per[s.name].append((p.c, p.auc_mean))
            a = np.array([v for _, v in per[s.name]])
            lines.append(f"| {label} | {s.name} | {' '.join(f'{c:g}' for c, _ in per[s.name])} | {a[0]:.4f} | "
                         f"{a.min():.4f} - {a.max():.4f} | {a.max() - a.min():.4f} |")
        summary[label] = summarise(per)
    lines += ["", "| row | scenarios where C flips | largest per-scenario spread | spread of the average |",
              "|---|---|---|---|"]
    for label, s in summary.items():
        lines.append(f"| {label} | {s['scenarios_with_c_flips']:.0f} of {len(ctx.scenarios)} | "
                     f"{s['max_scenario_spread']:.4f} | {s['average_spread']:.4f} |")
    md = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(md + "\n`python benchmarks/quality/probe_stability.py " + " ".join(
            argv if argv is not None else sys.argv[1:]) + "`\n")
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
