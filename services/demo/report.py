"""The demo's report: plain dataclasses filled by the steps, rendered as compact text tables (and JSON).

Pure: no I/O besides building strings, so it is unit-tested without a stack.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class EmbeddingRow:
    """One embedding as the gateway returned it (the facts a caller sees)."""

    user_id: str
    scenario: str
    dim: int
    model_version: str
    prompt_version: str
    arm: str
    feature_version: int
    cache_hit: bool
    fallback: bool
    ms: float  # client-side wall time of the call that returned it
    head: list[float] = field(default_factory=list)  # first values, to show it is a real vector


@dataclass
class MultiScenarioCall:
    """One GetUserEmbeddings call: one user, many scenarios, one prefix."""

    user_id: str
    scenarios: int
    ok: int
    cache_hit: bool
    ms: float
    server_ms: float
    model_ms: float


@dataclass
class TunedArm:
    """What one A/B arm of the tuned scenario served."""

    arm: str
    users: int
    prompt_version: str
    model_version: str
    example_user: str
    head: list[float] = field(default_factory=list)


@dataclass
class TuningResult:
    """The demo's tuning job and the A/B split on its prompt version."""

    scenario: str
    query: str
    job_id: str
    steps: int
    seconds: float
    version: int
    metrics: dict[str, float] = field(default_factory=dict)  # training.tune's: auc, ks, probe_auc, ... (+ zero-shot)
    arms: list[TunedArm] = field(default_factory=list)


@dataclass
class DemoReport:
    model_version: str = ""
    model_trained: bool = False
    model_source: str = ""
    users_replayed: int = 0
    events_sent: int = 0
    replay_s: float = 0.0
    users_with_features: int = 0
    # what ingest did with this replay: its counters' change (applied / duplicate / dlq, and "dlq:<reason>");
    # None when its metrics endpoint could not be read
    ingest_outcomes: dict[str, int] | None = None
    scenarios: dict[str, str] = field(default_factory=dict)  # name -> query text
    scenarios_registered: int = 0
    scenarios_reused: int = 0
    single: list[EmbeddingRow] = field(default_factory=list)
    cold: EmbeddingRow | None = None
    batch_items: int = 0
    batch_ok: int = 0
    batch_errors: list[str] = field(default_factory=list)
    batch_ms: float = 0.0
    multi: list[MultiScenarioCall] = field(default_factory=list)
    similarity_user: str = ""
    similarity_scenarios: list[str] = field(default_factory=list)
    similarity: list[list[float]] = field(default_factory=list)
    # users x scenarios: how much of the embeddings' spread says who the user is (variance decomposition)
    spread_users: int = 0
    user_share: float | None = None
    scenario_share: float | None = None
    cos_same_scenario: float | None = None  # mean cosine of two different users under one scenario
    cos_same_user: float | None = None  # mean cosine of one user under two different scenarios
    tuning: TuningResult | None = None
    endpoints: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def counter_change(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """after - before per key, for Prometheus counters read around one step. A key that went down means the
    process restarted in between (its counters started again from 0): that key's change is its value after."""
    return {k: int(round(v - before.get(k, 0.0) if v >= before.get(k, 0.0) else v)) for k, v in after.items()}


def render_ingest(sent: int, outcomes: dict[str, int] | None) -> str:
    """One line (two with dead letters) saying what ingest did with the replayed events."""
    if outcomes is None:
        return "ingest outcomes: unavailable (its metrics endpoint did not answer; `qanchor stack status`)"
    applied, dup, dlq = (outcomes.get(k, 0) for k in ("applied", "duplicate", "dlq"))
    line = f"ingest: {applied} applied, {dup} duplicates, {dlq} dead-lettered"
    counted = applied + dup + dlq
    if counted < sent:
        line += f" ({sent - counted} of the {sent} sent not counted: ingest restarted between the two reads)"
    elif counted > sent:
        line += f" ({counted - sent} more than the {sent} sent: another producer wrote at the same time)"
    if dup or dlq:
        line += ("\n  the store already held events of these users (an earlier run?): ingest applies an event once, "
                 "and an old one it no longer remembers goes to the DLQ instead of counting twice")
    reasons = sorted((k.split(":", 1)[1], n) for k, n in outcomes.items() if k.startswith("dlq:") and n)
    if reasons:
        line += "\n  DLQ reasons: " + ", ".join(f"{r} {n}" for r, n in reasons) + \
                " (`.venv/bin/qanchor events dlq` prints them)"
    return line


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """[n, d] -> [n, n] cosine similarities (rows need not be normalised)."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    unit = v / np.where(norms == 0, 1.0, norms)  # a zero row (error) compares as 0, not NaN
    return unit @ unit.T


def spread(emb: np.ndarray) -> dict[str, float]:
    """emb [U users, S scenarios, D]: shares of the total sum of squares that are the user (user means around the
    grand mean) and the scenario (scenario means), and the two mean cosines people read off such a grid."""
    e = np.asarray(emb, np.float64)
    n_users, n_scen = e.shape[:2]
    grand = e.mean(axis=(0, 1))
    total = max(float(((e - grand) ** 2).sum()), 1e-12)
    unit = e / np.maximum(np.linalg.norm(e, axis=2, keepdims=True), 1e-12)
    by_scenario = np.einsum("usd,vsd->suv", unit, unit)  # [S, U, U]
    by_user = np.einsum("usd,utd->ust", unit, unit)  # [U, S, S]
    return {"user_share": n_scen * float(((e.mean(axis=1) - grand) ** 2).sum()) / total,
            "scenario_share": n_users * float(((e.mean(axis=0) - grand) ** 2).sum()) / total,
            "cos_same_scenario": float(np.mean([off_diagonal(m).mean() for m in by_scenario])),
            "cos_same_user": float(np.mean([off_diagonal(m).mean() for m in by_user]))}


def off_diagonal(m: np.ndarray) -> np.ndarray:
    n = m.shape[0]
    return m[~np.eye(n, dtype=bool)]


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [[str(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _yes(b: bool) -> str:
    return "yes" if b else "no"


def _row(e: EmbeddingRow) -> list[Any]:
    head = " ".join(f"{x:+.3f}" for x in e.head[:4])
    return [e.user_id, e.scenario, e.dim, e.feature_version, e.arm, e.prompt_version, _yes(e.cache_hit),
            _yes(e.fallback), f"{e.ms:.1f}", head]


ROW_HEADER = ["user", "scenario", "dim", "feat.ver", "arm", "prompt", "cache", "fallback", "ms", "embedding[:4]"]


def render(r: DemoReport) -> str:
    out: list[str] = []
    status = "trained" if r.model_trained else "UNTRAINED: freshly initialised adapters, embeddings are not " \
                                               "meaningful yet (train one into artifacts/ and run again)"
    out.append(f"model  {r.model_version}  ({status})\n       source: {r.model_source}")
    out.append(f"\n== 1. events -> Kafka -> ingest -> Feast\n"
               f"replayed {r.events_sent} MovieLens-1M events of {r.users_replayed} users; "
               f"{r.users_with_features}/{r.users_replayed} users have features ({r.replay_s:.1f} s)\n"
               + render_ingest(r.events_sent, r.ingest_outcomes))
    out.append(f"\n== 2. scenarios registered by query text ({r.scenarios_registered} new, {r.scenarios_reused} "
               f"already there)\n" + table([[n, q] for n, q in r.scenarios.items()], ["scenario", "query"]))
    out.append("\n== 3. GetEmbedding\n" + table([_row(e) for e in r.single], ROW_HEADER))
    if r.cold:
        out.append("\n== 4. cold start: a user the feature store has never seen\n" + table([_row(r.cold)], ROW_HEADER))
    out.append(f"\n== 5. BatchGetEmbeddings: {r.batch_items} (user, scenario) items, {r.batch_ok} ok, "
               f"{len(r.batch_errors)} errors, {r.batch_ms:.1f} ms")
    for err in r.batch_errors[:5]:
        out.append(f"   error: {err}")
    out.append("\n== 6. GetUserEmbeddings: one user, many scenarios, the user's prefix computed once\n" + table(
        [[f"call {i + 1}", m.user_id, m.scenarios, m.ok, _yes(m.cache_hit), f"{m.ms:.1f}", f"{m.server_ms:.1f}",
          f"{m.model_ms:.1f}"] for i, m in enumerate(r.multi)],
        ["", "user", "scenarios", "ok", "prefix cache hit", "ms", "server ms", "model ms"]))
    if len(r.multi) >= 2 and r.multi[1].ms > 0:
        out.append(f"second call {r.multi[0].ms / r.multi[1].ms:.1f}x faster than the first "
                   f"(the user's prefix KV came from Triton's cache)")
    if r.similarity:
        m = np.asarray(r.similarity)
        off = off_diagonal(m)
        out.append(f"\n== 7. cosine similarity of user {r.similarity_user}'s embeddings across scenarios "
                   f"(off-diagonal min {off.min():.3f}, mean {off.mean():.3f}, max {off.max():.3f}: "
                   f"one user, a different embedding per scenario)")
        names = [s[:14] for s in r.similarity_scenarios]
        rows = [[names[i], *[f"{x:.2f}" for x in m[i]]] for i in range(len(names))]
        out.append(table(rows, ["", *[f"s{i + 1}" for i in range(len(names))]]))
        out.append("   " + "  ".join(f"s{i + 1}={n}" for i, n in enumerate(names)))
    if r.user_share is not None:
        out.append(f"\n== 8. whose embedding is it? {r.spread_users} users x {len(r.scenarios)} scenarios\n"
                   f"user share of the embeddings' variance {r.user_share:.1%} (scenario share "
                   f"{r.scenario_share:.1%}); two users under one scenario: mean cosine {r.cos_same_scenario:.2f}; "
                   f"one user under two scenarios: {r.cos_same_user:.2f}")
    if r.tuning:
        out.append(render_tuning(r.tuning))
    if r.endpoints:
        out.append("\n== where everything listens\n" + table([[k, v] for k, v in r.endpoints.items()],
                                                           ["component", "address"]))
    return "\n".join(out)


def render_tuning(t: TuningResult) -> str:
    m = t.metrics
    n_report = m.get("n_verdict", m.get("n_val", 0))  # the held-out users the numbers read (training.tune)
    lines = [f"\n== 9. a tuned soft prompt in an A/B arm: {t.scenario} (\"{t.query}\")",
             f"tuning job {t.job_id}: {t.steps} steps on {m.get('n_train', 0):.0f} labelled users in {t.seconds:.0f} s "
             f"-> prompt version {t.version}",
             table([["zero-shot (query alone)", "1", f"{m.get('auc_zero_shot', float('nan')):.3f}",
                     f"{m.get('ks_zero_shot', float('nan')):.3f}",
                     f"{m.get('probe_auc_zero_shot', float('nan')):.3f}"],
                    [f"tuned ({m.get('steps', t.steps):.0f} steps)", str(t.version),
                     f"{m.get('auc', float('nan')):.3f}", f"{m.get('ks', float('nan')):.3f}",
                     f"{m.get('probe_auc', float('nan')):.3f}"]],
                   ["prompt", "version", f"held-out AUC ({n_report:.0f} users, prototypes)", "KS", "linear-probe AUC"])]
    if m.get("kept_zero_shot") == 1.0:
        lines.append(f"no tuned step beat the query alone on the {m.get('n_select', m.get('n_val', 0)):.0f} held-out "
                     f"selection users: version {t.version} kept the query (an empty prompt) and serves the zero-shot "
                     "embedding")
    elif "val_gain_low" in m:  # on the verdict users, who made none of the tuning's choices (docs/tuning.md)
        lines.append(f"held-out AUC gain over the query alone {m['val_gain']:+.3f} (95% {m['val_gain_low']:+.3f} to "
                     f"{m['val_gain_high']:+.3f} on {n_report:.0f} verdict users): " +
                     ("resolved" if m["val_gain_low"] > 0 else "not resolved at this size"))
    if "probe_auc" in m and m.get("kept_zero_shot") != 1.0:  # what a downstream model fitted on the embedding sees
        helps = m["probe_auc"] > m.get("probe_auc_zero_shot", float("inf"))
        lines.append("linear-probe AUC: a model fitted on the embedding reads the label " +
                     ("better with the tuned prompt (worth promoting)" if helps else
                      "as well from the query alone (keep the zero-shot version as the default arm)"))
    if t.arms:
        lines.append(f"A/B split 50/50 (the stack's A/B file), GetEmbedding for {sum(a.users for a in t.arms)} users:")
        lines.append(table([[a.arm, a.users, a.prompt_version, a.model_version, a.example_user,
                             " ".join(f"{x:+.3f}" for x in a.head[:4])] for a in t.arms],
                           ["arm", "users", "prompt", "model", "e.g. user", "embedding[:4]"]))
    return "\n".join(lines)
