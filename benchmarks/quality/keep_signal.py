"""Can a keep-or-not rule pick the scenarios where a tuned prompt helps? Reads quality-table results (run.py's JSON,
runs with a tuned row and its tune_heldout log) and compares, scenario by scenario, what a rule may read before
the test users (held-out AUC differences: the tuning's own split, the table's val users, both pooled) with the
test difference it is meant to predict (prompt-tuned - zero-shot test AUC).

    .venv-model/bin/python benchmarks/quality/keep_signal.py benchmarks/results/quality_default_probe_tuned.json \\
        benchmarks/results/quality_unseen_default_probe_tuned.json --out benchmarks/results/keep_signal.md

Use runs in which every tuned prompt was returned (before the kept-zero-shot rule, or min_val_gain=-1): where the
rule kept the query, the held-out differences are 0 by construction. The "oracle" line is an upper bound for any
rule: each scenario's test difference where it is positive, 0 elsewhere (it reads the test users; a bound, not a
method).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

TUNED, ZERO = "Q-Anchor prompt-tuned", "Q-Anchor zero-shot"
# signal name -> held-out AUC difference (tuned - query) from one scenario's tune_heldout entry
SIGNALS = {
    "tuning split, its own read-out (the rule's)": lambda h: h["own"],
    "tuning split, refitted probe": lambda h: h["probe_auc"] - h["probe_auc_zero_shot"],
    "table val users": lambda h: h["val_probe_auc"] - h["val_probe_auc_zero_shot"],
    "both pooled (by users)": lambda h: (h["n_val"] * (h["probe_auc"] - h["probe_auc_zero_shot"])
                                         + h["val_n"] * (h["val_probe_auc"] - h["val_probe_auc_zero_shot"]))
                                        / (h["n_val"] + h["val_n"]),
}


def collect(results: list[dict]) -> list[dict]:
    """One record per (run, scenario): the test difference and every held-out signal the run logged."""
    out = []
    for res in results:
        meta = res["meta"]
        auc = {r["row"]: {s["scenario"]: s["auc_mean"] for s in r["scenarios"]} for r in res["rows"]
               if "scenarios" in r}
        if TUNED not in auc or ZERO not in auc:
            raise ValueError(f"{meta.get('command', 'a result')}: needs the rows {TUNED!r} and {ZERO!r}")
        for name, held in meta["tune_heldout"].items():
            # the tuning's read-out of its prompt against the query's: the trained head against the query's probe
            # (probe objective), the prototypes against the query's class centroids (prototype objective)
            bar = held["probe_auc_zero_shot"] if meta.get("tune_objective") == "probe" else held["auc_zero_shot"]
            held = {**held, "val_n": meta["n_val"], "own": held["auc"] - bar}
            rec = {"run": Path(meta["scenarios"]).stem, "scenario": name, "test": auc[TUNED][name] - auc[ZERO][name]}
            for sig, f in SIGNALS.items():
                try:
                    rec[sig] = float(f(held))
                except KeyError:  # a run without the val-selected row logs no val AUCs
                    pass
            out.append(rec)
    return out


def summarise(recs: list[dict]) -> dict[str, dict[str, float]]:
    """Per signal: Pearson and Spearman correlation with the test difference, the share of scenarios whose sign it
    gets right, and the mean test difference of the scenarios it would keep tuned."""
    from scipy.stats import pearsonr, spearmanr

    test = np.array([r["test"] for r in recs])
    out = {}
    for sig in SIGNALS:
        if not all(sig in r for r in recs):
            continue
        x = np.array([r[sig] for r in recs])
        out[sig] = {"pearson": float(pearsonr(x, test)[0]), "spearman": float(spearmanr(x, test)[0]),
                    "sign_agreement": float(np.mean(np.sign(x) == np.sign(test))),
                    "rule_mean": float(np.mean(np.where(x > 0, test, 0.0)))}
    out["(always tuned)"] = {"rule_mean": float(test.mean())}
    out["(oracle, reads test)"] = {"rule_mean": float(np.mean(np.maximum(test, 0.0)))}
    return out


def markdown(recs: list[dict], summary: dict[str, dict[str, float]]) -> str:
    sigs = [s for s in SIGNALS if s in summary]
    lines = ["| run | scenario | test: tuned - zero-shot | " + " | ".join(sigs) + " |", "|---" * (3 + len(sigs)) + "|"]
    for r in recs:
        lines.append(f"| {r['run']} | {r['scenario']} | {r['test']:+.4f} | "
                     + " | ".join(f"{r[s]:+.4f}" for s in sigs) + " |")
    lines += ["", f"{len(recs)} scenarios. Mean test difference (prompt-tuned - zero-shot) of what each rule keeps "
              "(tuned where its signal is above 0, the query elsewhere):", "",
              "| rule | Pearson r | Spearman r | sign agreement | mean test difference |", "|---|---|---|---|---|"]
    for name, s in summary.items():
        corr = (f"{s['pearson']:+.2f} | {s['spearman']:+.2f} | {s['sign_agreement']:.2f}" if "pearson" in s
                else " | | ")
        lines.append(f"| {name} | {corr} | {s['rule_mean']:+.4f} |")
    test = np.array([r["test"] for r in recs])
    lines += ["", f"Spread of the test differences over scenarios: sd {test.std(ddof=1):.4f}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="run.py result JSONs with a prompt-tuned row")
    ap.add_argument("--out", help="also write the markdown here")
    args = ap.parse_args(argv)
    recs = collect([json.loads(Path(p).read_text()) for p in args.results])
    md = markdown(recs, summarise(recs))
    if args.out:
        Path(args.out).write_text(md + "\nFrom: " + " ".join(args.results) + "\n")
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
