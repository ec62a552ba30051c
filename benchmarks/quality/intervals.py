"""Bootstrap intervals over test users for the quality table: every row, and the paired differences the paper's
ordering claims (the same resamples for both rows of a pair, so shared test-user luck cancels).

    boot = RowBootstrap(rows, draws=1000)        # rows: run_row outputs that kept their probes' test scores
    boot.row_interval("Q-Anchor zero-shot")      # (low, high) of the average AUC over scenarios
    boot.difference("Q-Anchor zero-shot", "Q-Anchor static query")  # {"diff", "low", "high", "p_above_zero",
                                                                    #  "by_scenario": {name: {"low", "high"}}}
    paired_claims(rows, CLAIMS, boot)            # the reported claims, point differences; claim_cells renders one
"""
from __future__ import annotations

import numpy as np

from training.evaluate import bootstrap_counts, interval, weighted_auc

# (better, worse) as the paper orders them: tuned > base > static > general text embedder; tuned vs the ID baseline
CLAIMS: list[tuple[str, str]] = [
    ("Q-Anchor prompt-tuned", "Q-Anchor zero-shot"),
    ("Q-Anchor prompt-tuned where val improves", "Q-Anchor zero-shot"),
    ("Q-Anchor zero-shot", "Q-Anchor static query"),
    ("Q-Anchor static query", "mean MiniLM of event texts"),
    ("Q-Anchor zero-shot", "mean MiniLM of event texts"),
    ("Q-Anchor prompt-tuned", "bag_of_items+genres (LR)"),
]


class RowBootstrap:
    def __init__(self, rows: list[dict], draws: int = 1000, seed: int = 0) -> None:
        done = [r for r in rows if "skipped" not in r]
        users = sorted({int(u) for r in done for p in r["probes"] for u in p.test_users})
        self.index = {u: i for i, u in enumerate(users)}
        self.counts = bootstrap_counts(len(users), draws, seed)  # [draws, n_test_users], shared by every row
        self.avg: dict[str, np.ndarray] = {}  # row -> [draws] average AUC over scenarios
        self.scenario: dict[str, dict[str, np.ndarray]] = {}  # row -> scenario -> [draws] its AUC
        for r in done:
            per_scenario: dict[str, list[np.ndarray]] = {}  # several probes of one scenario (label-budget draws)
            for p in r["probes"]:                            # are averaged first: every scenario weighs the same
                cols = np.array([self.index[int(u)] for u in p.test_users])
                per_scenario.setdefault(p.scenario, []).append(
                    weighted_auc(p.test_y, p.test_score, self.counts[:, cols]))
            self.scenario[r["row"]] = {name: np.mean(v, axis=0) for name, v in per_scenario.items()}
            self.avg[r["row"]] = np.mean(list(self.scenario[r["row"]].values()), axis=0)

    def row_interval(self, row: str) -> tuple[float, float]:
        return interval(self.avg[row])

    def difference(self, better: str, worse: str) -> dict[str, float] | None:
        if better not in self.avg or worse not in self.avg:
            return None
        d = self.avg[better] - self.avg[worse]
        low, high = interval(d)
        by_scenario = {}  # is one scenario's difference more than test-user noise?
        for name in self.scenario[better].keys() & self.scenario[worse].keys():
            ds = self.scenario[better][name] - self.scenario[worse][name]
            by_scenario[name] = dict(zip(("low", "high"), interval(ds)))
        return {"diff": float(np.nanmean(d)), "low": low, "high": high,
                "p_above_zero": float(np.nanmean(d > 0)), "by_scenario": by_scenario}


def paired_claims(rows: list[dict], pairs: list[tuple[str, str]], boot: RowBootstrap) -> list[dict]:
    """Each (better, worse) pair whose rows both ran: {"better", "worse", "diff", "low", "high", "p_above_zero",
    "by_scenario"}. "diff" is the point difference of the two rows' average AUCs (per scenario too), the interval is
    the paired bootstrap's. The one place a claim is built (the table, the label-budget table, the diagnostics)."""
    by_name = {r["row"]: r for r in rows if "skipped" not in r}
    out = []
    for better, worse in pairs:
        d = boot.difference(better, worse)
        if d is None:
            continue
        b, w = scenario_means(by_name[better]["probes"]), scenario_means(by_name[worse]["probes"])
        for name, s in d["by_scenario"].items():
            s["diff"] = b[name] - w[name]
        out.append({"better": better, "worse": worse, **d,
                    "diff": by_name[better]["auc_avg"] - by_name[worse]["auc_avg"]})
    return out


def scenario_means(probes: list) -> dict[str, float]:
    """Scenario -> mean test AUC of its probes (several draws of one scenario count once in a row's average)."""
    per: dict[str, list[float]] = {}
    for p in probes:
        per.setdefault(p.scenario, []).append(p.auc_mean)
    return {name: float(np.mean(v)) for name, v in per.items()}


CLAIM_HEADER = ["| claim | difference | 95% interval | holds (interval above 0) |", "|---|---|---|---|"]


def claim_cells(c: dict) -> str:
    """One claim as markdown cells: 'yes' only when its whole 95% interval is above zero."""
    verdict = "yes" if c["low"] > 0 else ("point estimate only" if c["diff"] > 0 else "no")
    return f"| {c['better']} > {c['worse']} | {c['diff']:+.4f} | {c['low']:+.4f} - {c['high']:+.4f} | {verdict} |"


def paired_tables(rows: list[dict], pairs: list[tuple[str, str]], draws: int = 1000,
                  scenarios: list[str] | None = None) -> str:
    """Markdown for a diagnostic's own rows (each {"row", "probes", "auc_avg"}): every row with its 95% interval
    (and its AUC per scenario, when `scenarios` names them in probe order), then each (better, worse) pair's
    paired difference on the same bootstrap draws."""
    boot = RowBootstrap(rows, draws=draws)
    extra = scenarios or []
    lines = ["| row | avg AUC | 95% interval |" + "".join(f" {n} |" for n in extra), "|---" * (3 + len(extra)) + "|"]
    for r in rows:
        low, high = boot.row_interval(r["row"])
        lines.append(f"| {r['row']} | {r['auc_avg']:.4f} | {low:.4f} - {high:.4f} |"
                     + "".join(f" {p.auc_mean:.3f} |" for p in r["probes"][:len(extra)]))
    lines += ["", *CLAIM_HEADER]
    lines += [claim_cells(c) for c in paired_claims(rows, pairs, boot)]
    return "\n".join(lines)
