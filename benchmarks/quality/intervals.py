"""Bootstrap intervals over test users for the quality table: every row, and the paired differences the paper's
ordering claims (the same resamples for both rows of a pair, so shared test-user luck cancels).

    boot = RowBootstrap(rows, draws=1000)        # rows: run_row outputs that kept their probes' test scores
    boot.row_interval("Q-Anchor zero-shot")      # (low, high) of the average AUC over scenarios
    boot.difference("Q-Anchor zero-shot", "Q-Anchor static query")  # {"diff", "low", "high", "p_above_zero",
                                                                    #  "by_scenario": {name: {"low", "high"}}}
    paired_claims(rows, CLAIMS, boot)            # the reported claims, point differences; claim_cells renders one

The bootstrap resamples test users only; the probes' own training sample is a second source of noise. With probes
refitted on several seeded subsamples of the train users (run.py --seeds N: 80% each), `paired_claims(...,
subsample=0.8)` adds to each claim the spread of the paired difference over those draws and, from it, a
delete-d jackknife estimate of the train-sample sd of the full-train difference (Shao & Wu 1989: the draws' variance
times f / (1 - f) for subsamples of a fraction f), and `train_noise_lines` renders both next to the test-user sd.
In such a run every interval resamples the seed-averaged scores (each seed's probe scored on the same resample), so
it is centred where the reported point, the average over seeds, is.
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
        # [seeds, draws]: one row per probe seed (a seeded run's draws of the train users), else one
        self.avg: dict[str, np.ndarray] = {}  # row -> the average AUC over scenarios
        self.scenario: dict[str, dict[str, np.ndarray]] = {}  # row -> scenario -> its AUC
        for r in done:
            per_scenario: dict[str, list[np.ndarray]] = {}  # several probes of one scenario (label-budget draws)
            for p in r["probes"]:                            # are averaged first: every scenario weighs the same
                cols = np.array([self.index[int(u)] for u in p.test_users])
                scores = p.test_scores if p.test_scores is not None else [p.test_score]
                per_scenario.setdefault(p.scenario, []).append(
                    np.stack([weighted_auc(p.test_y, s, self.counts[:, cols]) for s in scores]))
            self.scenario[r["row"]] = {name: np.mean(v, axis=0) for name, v in per_scenario.items()}
            self.avg[r["row"]] = np.mean(list(self.scenario[r["row"]].values()), axis=0)

    def row_interval(self, row: str) -> tuple[float, float]:
        return interval(self.avg[row].mean(axis=0))

    def difference(self, better: str, worse: str) -> dict[str, float] | None:
        """The paired difference's interval over test users, of the seed-averaged scores in a seeded run (so it is
        centred where the seed-averaged point is); there also "sd_within", the test-user sd of one draw's
        difference averaged over the draws (as variances): the test-user term of a full-train probe's noise."""
        if better not in self.avg or worse not in self.avg:
            return None
        by_seed = _paired(self.avg[better], self.avg[worse])
        d = by_seed.mean(axis=0)
        low, high = interval(d)
        by_scenario = {}  # is one scenario's difference more than test-user noise?
        for name in self.scenario[better].keys() & self.scenario[worse].keys():
            ds = _paired(self.scenario[better][name], self.scenario[worse][name]).mean(axis=0)
            by_scenario[name] = dict(zip(("low", "high"), interval(ds)))
        out = {"diff": float(np.nanmean(d)), "low": low, "high": high, "sd": float(np.nanstd(d)),
               "p_above_zero": float(np.nanmean(d > 0)), "by_scenario": by_scenario}
        if len(by_seed) > 1:
            out["sd_within"] = float(np.sqrt(np.mean(np.nanvar(by_seed, axis=1))))
        return out


def _paired(better: np.ndarray, worse: np.ndarray) -> np.ndarray:
    """[seeds, draws] differences; rows probed with different seed counts are compared by their seed averages."""
    if better.shape != worse.shape:
        better, worse = better.mean(axis=0, keepdims=True), worse.mean(axis=0, keepdims=True)
    return better - worse


def paired_claims(rows: list[dict], pairs: list[tuple[str, str]], boot: RowBootstrap,
                  subsample: float = 1.0, averaged_draws: bool = False) -> list[dict]:
    """Each (better, worse) pair whose rows both ran: {"better", "worse", "diff", "low", "high", "sd",
    "p_above_zero", "by_scenario"}. "diff" is the point difference of the two rows' average AUCs (per scenario too),
    the interval and "sd" are the paired bootstrap's over test users. With probes fitted on several seeded
    subsamples of a fraction `subsample` < 1 of the train users, also "train_draws", "train_draws_sd" (the paired
    difference's sd over those draws) and "train_sd" (the train-sample sd it implies for the full-train difference;
    module docstring). With `averaged_draws` (the label-budget table: a row's number is the mean over K draws of n
    labelled users, n small beside the pool), "train_sd" is the draws' sd / sqrt(K), the noise of that mean.
    The one place a claim is built (the table, the label-budget table, the diagnostics)."""
    by_name = {r["row"]: r for r in rows if "skipped" not in r}
    out = []
    for better, worse in pairs:
        d = boot.difference(better, worse)
        if d is None:
            continue
        b, w = scenario_means(by_name[better]["probes"]), scenario_means(by_name[worse]["probes"])
        for name, s in d["by_scenario"].items():
            s["diff"] = b[name] - w[name]
        claim = {"better": better, "worse": worse, **d, "diff": by_name[better]["auc_avg"] - by_name[worse]["auc_avg"]}
        draws = seed_average_difference(by_name[better], by_name[worse])
        if draws is not None and (averaged_draws or 0 < subsample < 1):
            spread = float(np.std(draws, ddof=1))
            scale = 1 / np.sqrt(len(draws)) if averaged_draws else np.sqrt(subsample / (1 - subsample))
            claim |= {"train_draws": len(draws), "train_draws_sd": spread, "train_sd": spread * float(scale)}
            if not averaged_draws:
                claim["train_fraction"] = subsample
        out.append(claim)
    return out


def seed_average_difference(better: dict, worse: dict) -> np.ndarray | None:
    """Per probe seed (or label-budget draw), the difference of the two rows' average AUC over scenarios (their
    `auc_avg_by_seed`); None unless both rows were probed with the same two or more seeds."""
    b, w = (np.asarray(row.get("auc_avg_by_seed") or [], dtype=float) for row in (better, worse))
    return b - w if len(b) >= 2 and b.shape == w.shape else None


def train_noise_lines(claims: list[dict]) -> list[str]:
    """Markdown: each claim's test-user and train-sample noise side by side, where the probes had seeded draws."""
    noisy = [c for c in claims if "train_sd" in c]
    if not noisy:
        return []
    first = noisy[0]
    share = f"{first['train_fraction']:.0%} of them each" if "train_fraction" in first else "subsamples"
    lines = ["", f"Both sources of noise of a probe fitted on all train users (refitted on {first['train_draws']} "
                 f"seeded draws of the train users, {share}; the interval above bootstraps test users only). "
                 "Its variance is the test-user variance given the train sample (averaged over the draws) plus the "
                 "train-sample variance (law of total variance; the latter, read on one test set, also holds their "
                 "interaction, so the sum leans wide):", "",
             "| claim | sd over train draws | train-sample sd (jackknife) | test-user sd (bootstrap) | "
             "both: 95% half-width |", "|---|---|---|---|---|"]
    for c in noisy:
        lines.append(f"| {c['better']} > {c['worse']} | {c['train_draws_sd']:.4f} | {c['train_sd']:.4f} | "
                     f"{test_user_sd(c):.4f} | {both_half_width(c):.4f} |")
    return lines


def test_user_sd(c: dict) -> float:
    """A claim's test-user sd for its combined width: one draw's (averaged over draws) where the run had seeds."""
    return c.get("sd_within", c["sd"])


def both_half_width(c: dict) -> float:
    """95% half-width of a claim with its train-sample noise ("train_sd") and test-user noise added as variances."""
    return 1.96 * float(np.hypot(c["train_sd"], test_user_sd(c)))


def scenario_aucs(probes: list) -> dict[str, list[float]]:
    """Scenario -> the test AUCs of its probes, in probe order (a label budget's draws of one scenario)."""
    per: dict[str, list[float]] = {}
    for p in probes:
        per.setdefault(p.scenario, []).append(p.auc_mean)
    return per


def scenario_means(probes: list) -> dict[str, float]:
    """Scenario -> mean test AUC of its probes (several draws of one scenario count once in a row's average)."""
    return {name: float(np.mean(v)) for name, v in scenario_aucs(probes).items()}


CLAIM_HEADER = ["| claim | difference | 95% interval | holds (interval above 0) |", "|---|---|---|---|"]


def verdict(diff: float, low: float) -> str:
    """'yes' only when the whole 95% interval is above zero."""
    return "yes" if low > 0 else ("point estimate only" if diff > 0 else "no")


def claim_cells(c: dict) -> str:
    """One claim as markdown cells, with its verdict."""
    return (f"| {c['better']} > {c['worse']} | {c['diff']:+.4f} | {c['low']:+.4f} - {c['high']:+.4f} | "
            f"{verdict(c['diff'], c['low'])} |")


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
