"""Label budget: the quality table's rows when a team has only n labelled users for a scenario.

The case for a scenario query is that it puts the scenario's signal where a probe finds it. With 1,000 labelled
users a linear probe finds it in a static embedding too (docs/quality.md), so run.py's table cannot show what the
query is worth with few labels. This measures the same rows, users and cached embeddings at smaller budgets:

    .venv-model/bin/python benchmarks/quality/label_budget.py --dataset ml-1m --checkpoint artifacts/default \\
        --train-users 1000 --val-users 300 --eval-users 625 --tune-steps 200 --embed-cache var/embcache \\
        --budgets 25 50 100 200 400 1000 --repeats 10

For each budget n and scenario: `--repeats` stratified draws of n labelled train users (the same draws for every
row: they depend on the labels only); a logistic probe on each draw (C as in run.py: by 5-fold over the draw + the
val users, or with `--c-choice val` on the val users, as every budget table before 2026-12-05 evening), scored on
every test user. A row's number at n is the AUC averaged over draws, then over scenarios; 95% intervals
bootstrap the test users with the same resamples for every row, so a paired difference cancels shared test-user
luck. The spread between draws is averaged, not resampled, in those intervals; a second table (since 2026-12-07)
adds it: the noise of a mean over K draws is their sd / sqrt(K), beside the test-user sd. The prompt-tuned
row's prompts were tuned on all train users' labels, so it is shown at the full budget only.
Writes benchmarks/results/quality_budget.{md,json,png}; prints the table last.
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
from benchmarks.machine import command_line, describe, footer, utc_now  # noqa: E402

from benchmarks.quality import run as quality  # noqa: E402
from benchmarks.quality.intervals import (CLAIM_HEADER, RowBootstrap, claim_cells, paired_claims,  # noqa: E402
                                          both_half_width, scenario_aucs, scenario_means, verdict)
from training import evaluate as ev  # noqa: E402

ZS, STATIC, TUNED = "Q-Anchor zero-shot", "Q-Anchor static query", "Q-Anchor prompt-tuned"
MINILM, BAG = "mean MiniLM of event texts", "bag_of_items+genres (LR)"
DEFAULT_ROWS = [STATIC, ZS, TUNED, MINILM, "dense user vector (LR)", BAG]
# (better, worse): the paper's ordering at every budget; tuned only where it exists (the full budget)
CLAIMS = [(ZS, STATIC), (ZS, MINILM), (STATIC, MINILM), (TUNED, ZS), (ZS, BAG)]


def budget_table(ctx: quality.Context, names: list[str], budgets: list[int], repeats: int,
                 draws: int) -> list[dict]:
    """One entry per budget: {"budget", "n_labels" (per scenario), "rows": [...], "claims": [...]}."""
    n_full = len(ctx.world.users("train"))
    embs = {}
    for name in names:
        try:
            embs[name] = quality.ROWS[name](ctx)
        except quality.RowSkipped as exc:
            quality.log.info("row_skipped row=%r reason=%s", name, exc)
    out = []
    for n in budgets:
        t0 = time.perf_counter()
        rows = []
        for name, emb in embs.items():
            if name == TUNED and n < n_full:
                continue  # its prompts saw every train label: not a few-label row
            probes = []
            for s in ctx.scenarios:
                probes += ev.probe_budget(emb[s.name] if isinstance(emb, dict) else emb, ctx.world, s, n, repeats,
                                          c_choice=ctx.c_choice)
            n_labels = {p.scenario: int(p.n_train) for p in probes}  # every draw of a scenario has the same size
            rows.append({"row": name, "probes": probes, "n_labels": n_labels,
                         "auc_avg": float(np.mean(list(scenario_means(probes).values()))),
                         "auc_avg_by_seed": draw_averages(probes)})
        boot = RowBootstrap(rows, draws=draws)
        claims = paired_claims(rows, CLAIMS, boot, averaged_draws=n < n_full)
        for r in rows:
            r["auc_ci"] = boot.row_interval(r["row"])
            r.pop("probes")
        out.append({"budget": n, "rows": rows, "claims": claims})
        quality.log.info("budget_done n=%d rows=%d seconds=%.1f %s", n, len(rows), time.perf_counter() - t0,
                         " ".join(f"{c['better']!r}-{c['worse']!r}={c['diff']:+.4f}" for c in claims[:2]))
    return out


def draw_averages(probes: list) -> list[float]:
    """Per draw index (the k-th draw of every scenario: the same users for every row), the AUC averaged over
    scenarios; what the spread between draws is read from. Empty when the scenarios have different numbers of
    draws (a budget at or above one scenario's labelled users is one draw there: all of them)."""
    per = scenario_aucs(probes)
    if len({len(v) for v in per.values()}) != 1:
        return []
    return np.mean(list(per.values()), axis=0).tolist()


def _budget_label(entry: dict, n_full: int) -> str:
    return f"all ({n_full})" if entry["budget"] >= n_full else str(entry["budget"])


def markdown(table: list[dict], meta: dict) -> str:
    n_full = meta["n_train"]
    names = list(dict.fromkeys(r["row"] for e in table for r in e["rows"]))
    c_note = (f"C by 5-fold over each draw + {meta['n_val']} val users" if meta.get("c_choice") == "cv"
              else f"C chosen on {meta['n_val']} val users")
    lines = [f"Linear-probe AUC (average over {len(meta['scenario_names'])} scenarios) when only n of the "
             f"{n_full} train users are labelled: {meta['repeats']} stratified draws per (n, scenario), the same "
             f"for every row; {c_note}; scored on {meta['n_test']} test users; "
             f"95% intervals bootstrap the test users ({meta['draws']} draws).", "",
             "| labelled users | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for e in table:
        cells = {r["row"]: f"{r['auc_avg']:.4f} ({r['auc_ci'][0]:.3f}-{r['auc_ci'][1]:.3f})" for r in e["rows"]}
        lines.append(f"| {_budget_label(e, n_full)} | " + " | ".join(cells.get(n, "") for n in names) + " |")
    lines += ["", "Paired differences (same test-user resamples for both rows):", "",
              "| labelled users " + CLAIM_HEADER[0], "|---" + CLAIM_HEADER[1]]
    for e in table:
        lines += [f"| {_budget_label(e, n_full)} " + claim_cells(c) for c in e["claims"]]
    noisy = [(e, c) for e in table for c in e["claims"] if "train_sd" in c]
    if noisy:
        lines += ["", f"The same differences with the spread between the {noisy[0][1]['train_draws']} draws of "
                      "labelled users counted: a row's number is their mean, whose noise from the draws is their sd "
                      "/ sqrt(draws) (a floor: the pool of train users the draws come from is one sample too); "
                      "'both' adds it to the test-user sd as variances.", "",
                  "| labelled users | claim | difference | sd over draws | sd of the mean | test-user sd | "
                  "both: 95% interval | holds with both |", "|---|---|---|---|---|---|---|---|"]
        for e, c in noisy:
            half = both_half_width(c)
            low, high = c["diff"] - half, c["diff"] + half
            lines.append(f"| {_budget_label(e, n_full)} | {c['better']} > {c['worse']} | {c['diff']:+.4f} | "
                         f"{c['train_draws_sd']:.4f} | {c['train_sd']:.4f} | {c['sd']:.4f} | "
                         f"{low:+.4f} - {high:+.4f} | {verdict(c['diff'], low)} |")
    return "\n".join(lines) + "\n"


def _budget_axes(ax, ylabel: str, title: str) -> None:
    ax.set_xscale("log")
    ax.set_xlabel("labelled train users per scenario")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot(table: list[dict], path: Path, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5))
    names = list(dict.fromkeys(r["row"] for e in table for r in e["rows"]))
    for name in names:
        pts = [(e["budget"], r) for e in table for r in e["rows"] if r["row"] == name]
        x = np.array([min(b, meta["n_train"]) for b, _ in pts], float)
        y = np.array([r["auc_avg"] for _, r in pts])
        lo = np.array([r["auc_ci"][0] for _, r in pts])
        hi = np.array([r["auc_ci"][1] for _, r in pts])
        style = "o-" if name.startswith("Q-Anchor") else "s--"
        ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt=style, capsize=3, label=name)
    _budget_axes(ax, "average test AUC (linear probe), 95% interval", "Quality by label budget")
    for better, worse in CLAIMS[:3]:
        pts = [(e["budget"], c) for e in table for c in e["claims"] if (c["better"], c["worse"]) == (better, worse)]
        if not pts:
            continue
        x = np.array([min(b, meta["n_train"]) for b, _ in pts], float)
        d = np.array([c["diff"] for _, c in pts])
        bx.errorbar(x, d, yerr=[d - np.array([c["low"] for _, c in pts]), np.array([c["high"] for _, c in pts]) - d],
                    fmt="o-", capsize=3, label=f"{better} - {worse}")
    bx.axhline(0, color="black", lw=0.8)
    _budget_axes(bx, "paired AUC difference, 95% interval", "What the scenario query adds, by label budget")
    fig.suptitle(f"{meta['dataset']}, {meta['n_test']} test users, checkpoint {meta['checkpoint']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    quality.add_population_args(p)
    p.add_argument("--rows", nargs="*", default=DEFAULT_ROWS, help=f"rows (default: {DEFAULT_ROWS})")
    p.add_argument("--budgets", nargs="+", type=int, default=[25, 50, 100, 200, 400, 1000],
                   help="labelled train users per scenario (>= the train users: all of them)")
    p.add_argument("--repeats", type=int, default=10, help="stratified draws per (budget, scenario)")
    p.add_argument("--draws", type=int, default=1000, help="bootstrap draws over test users")
    p.add_argument("--out", default=str(quality.RESULTS / "quality_budget"), help="output path stem")
    args = p.parse_args(argv)
    unknown = [n for n in args.rows if n not in quality.ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; known: {list(quality.ROWS)}")
    if min(args.budgets) < 4 or args.repeats < 1:
        p.error("budgets must be >= 4 (two users of each class) and --repeats >= 1")
    ctx = quality.build_context(args, same_question=False)
    t0 = time.perf_counter()
    table = budget_table(ctx, args.rows, sorted(set(args.budgets)), args.repeats, args.draws)
    meta = {"dataset": args.dataset, "checkpoint": args.checkpoint, "scenario_names": [s.name for s in ctx.scenarios],
            "n_train": len(ctx.world.users("train")), "n_val": len(ctx.world.users("val")),
            "n_test": len(ctx.world.users("test")), "repeats": args.repeats, "draws": args.draws,
            "tune_steps": args.tune_steps, "c_choice": ctx.c_choice, "seconds": round(time.perf_counter() - t0, 1),
            "machine": describe(),
            "date": utc_now(), "command": command_line("benchmarks/quality/label_budget.py", argv)}
    meta = json.loads(json.dumps(meta).replace(str(ROOT) + "/", ""))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = markdown(table, meta)
    out.with_suffix(".md").write_text(md + "\n" + footer(meta["machine"], meta["date"], meta["command"]) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "budgets": table}, indent=1))
    plot(table, out.with_suffix(".png"), meta)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
