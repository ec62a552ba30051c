"""Paired claims of several quality tables side by side: one forest plot and one markdown table.

Each table of benchmarks/quality/run.py stores its paired claims (point difference and 95% interval over test users).
Comparing candidate checkpoints means reading the same claim out of several JSONs; this puts them on one axis:

    python benchmarks/quality/forest.py --out benchmarks/results/second_stages_forest \
        --result "grid, visible=benchmarks/results/quality_grid_450_vs_default.json" \
        --result "grid, unseen=benchmarks/results/quality_unseen_grid_450_vs_default.json" \
        --claim "Q-Anchor zero-shot > ablation: zero-shot, cpu default" \
        --claim "Q-Anchor zero-shot > Q-Anchor static query"

A result without a claim leaves its row empty in that panel. Reads JSON only (seconds, no model).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.quality.intervals import claim_cells  # noqa: E402


def _pair(text: str, sep: str, what: str, last: bool = False) -> tuple[str, str]:
    left, found, right = text.rpartition(sep) if last else text.partition(sep)
    if not found or not left.strip() or not right.strip():
        raise argparse.ArgumentTypeError(f"{what} {text!r}: expected LEFT{sep}RIGHT")
    return left.strip(), right.strip()


def result_arg(text: str) -> tuple[str, str]:
    return _pair(text, "=", "--result", last=True)  # the label may hold "=" ("lr=1e-4, visible=PATH")


def claim_arg(text: str) -> tuple[str, str]:
    return _pair(text, ">", "--claim")


def collect(results: list[tuple[str, dict]], claims: list[tuple[str, str]]) -> dict[tuple[str, str], list]:
    """claim -> [(label, claim dict or None)] in the order of `results`."""
    out = {}
    for better, worse in claims:
        out[(better, worse)] = [
            (label, next((c for c in table["meta"].get("claims", [])
                          if (c["better"], c["worse"]) == (better, worse)), None))
            for label, table in results]
    return out


def markdown(found: dict[tuple[str, str], list], sources: list[tuple[str, str]]) -> str:
    lines = ["Paired claims of several quality tables (point difference, 95% interval over test users; each table's "
             "own users and bootstrap draws).", "", "| result | claim | difference | 95% interval | holds |",
             "|---|---|---|---|---|"]
    for (better, worse), rows in found.items():
        for label, c in rows:
            lines.append(f"| {label} " + (claim_cells(c) if c else f"| {better} > {worse} | not in this table | | |"))
    lines += ["", "Sources:", ""] + [f"- {label}: `{path}`" for label, path in sources]
    return "\n".join(lines) + "\n"


def plot(found: dict[tuple[str, str], list], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    n_rows = max(len(rows) for rows in found.values())
    fig, axes = plt.subplots(1, len(found), figsize=(5.2 * len(found), 0.42 * n_rows + 1.8), sharey=True,
                             squeeze=False)
    for ax, ((better, worse), rows) in zip(axes[0], found.items()):
        for y, (label, c) in enumerate(rows):
            if c is None:
                continue
            color = "tab:green" if c["low"] > 0 else ("tab:red" if c["high"] < 0 else "tab:grey")
            ax.errorbar(c["diff"], y, xerr=[[c["diff"] - c["low"]], [c["high"] - c["diff"]]], fmt="o",
                        color=color, ecolor="black", capsize=3)
        ax.axvline(0.0, color="k", lw=0.8, ls="--")
        ax.set_yticks(range(len(rows)), [label for label, _ in rows])
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_xlabel("paired difference in average AUC (95% interval)")
        ax.set_title(f"{better}\n- {worse}", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].invert_yaxis()  # the panels share it: first result on top
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--result", action="append", type=result_arg, required=True, metavar="LABEL=JSON",
                   help="a run.py result (its .json); repeat, in the order the rows should read")
    p.add_argument("--claim", action="append", type=claim_arg, required=True, metavar="BETTER > WORSE",
                   help="a claim as run.py names it, e.g. 'Q-Anchor zero-shot > Q-Anchor static query'; repeat")
    p.add_argument("--title", default="Paired claims across quality tables")
    p.add_argument("--out", required=True, help="path without extension: writes OUT.md and OUT.png")
    args = p.parse_args(argv)
    results = []
    for label, path in args.result:
        try:
            results.append((label, json.loads(Path(path).read_text())))
        except (OSError, ValueError) as exc:
            p.error(f"--result {label}={path}: cannot read a run.py result JSON ({exc}); run "
                    "benchmarks/quality/run.py --out ... first")
    found = collect(results, args.claim)
    if not any(c for rows in found.values() for _, c in rows):
        p.error("no --claim is in any --result: name claims as the tables do (see the 'claim' column of their .md)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(markdown(found, args.result))
    plot(found, out.with_suffix(".png"), args.title)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
