"""What tuning on today's features costs a label about the future: a tuning job's own held-out AUC against the AUC
its prompt gives when the future is still unknown (docs/tuning.md, "Labels as of a time").

For each future scenario (labels from the users' future window; training/data/scenarios.yaml), two prompts are tuned
on the same train users and labels, as a tuning job tunes them (training.tune, the model's `tune` section, verdict
users), on two views of the users:
- **as of the label's time**: each user's prefix and dense vector from the history window only (what a labels file
  with an `as_of` column gives the job: the row ingest built from the events before it);
- **today's store**: history *and* future window (what the online store holds once the labelled period is over,
  which a labels file without `as_of` gives the job).
Each job reports its held-out AUC (its verdict users, in its own view). Then both prompts embed the test users as
of the time, which is what a prediction about the future is made from, and their own read-outs (the prompt's class
prototypes) score them: the AUC the job would actually deliver, with 95% bootstrap intervals over test users and
the paired difference.

    .venv-model/bin/python benchmarks/quality/tuning_as_of.py --checkpoint artifacts/default \\
        --train-users 1000 --val-users 300 --eval-users 625 --out benchmarks/results/tuning_as_of
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.quality import run as quality  # noqa: E402

log = logging.getLogger("tuning_as_of")
DRAWS = 1000


def todays_store(world, vecs):
    """`world` as the online store holds it once the labels' future has happened: each user's future events join
    the history their prefix and dense vector read (labels still come from the original world's future window). The
    dense vector is standardised with the constants the as-of world reads (serving's constants do not move when
    time does), not refitted on the longer histories."""
    from training.data.features import fit_normalisation
    from training.data.world import Timeline

    constants = getattr(world, "normalisation", None) or fit_normalisation(world, vecs)
    seen = copy.copy(world)
    seen.__dict__.pop("_dense_cache", None)  # training.data.features' memo of the history-only dense vector
    seen.timelines = {u: Timeline(np.concatenate([t.history, t.future]), t.future, t.cutoff_ts)
                      for u, t in world.timelines.items()}
    seen.normalisation = constants
    return seen


def prompt_scores(model, cache, result, tau: float, dtype, device) -> np.ndarray:
    """The tuned prompt's own read-out on `cache`'s users: P(positive) from its class prototypes."""
    import torch

    from training.model.suffix import ScenarioSpec
    from training.precision import autocast
    from training.tune import _embed, _scores

    spec = ScenarioSpec(result.query, result.prompt if result.prompt.shape[0] else None)
    with torch.inference_mode(), autocast(dtype, device):
        emb = _embed(model, cache, np.arange(cache.valid.shape[0]), spec, 32, grad=False)
        logits = _scores(emb.float(), result.prototypes, tau)
    prob = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    return prob[:, list(result.classes).index(1)]


def paired_bootstrap(y: np.ndarray, a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict[str, tuple[float, float]]:
    """95% intervals over test users of AUC(a), AUC(b) and AUC(a) - AUC(b), on the same resamples (the quality
    table's bootstrap: training.evaluate)."""
    from training import evaluate as ev

    w = ev.bootstrap_counts(len(y), DRAWS, seed)
    da, db = ev.weighted_auc(y, a, w), ev.weighted_auc(y, b, w)
    return {"a": ev.interval(da), "b": ev.interval(db), "diff": ev.interval(da - db)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    quality.add_population_args(p)
    quality.add_probe_args(p)
    p.add_argument("--steps", type=int, default=None,
                   help="tuning steps per prompt (default: the model's own `tune.steps`, as a job without params)")
    p.add_argument("--out", default="benchmarks/results/tuning_as_of")
    args = p.parse_args(argv)
    if args.dataset != "ml-1m" and args.dataset != "ml-100k":
        raise SystemExit("tuning_as_of.py needs a MovieLens world: its users' future windows are the labels")
    ctx = quality.build_context(args)
    from training import evaluate as ev
    from training.data.scenarios import FUTURE_LABELS
    from training.tune import tune_soft_prompt

    scenarios = [s for s in ctx.scenarios if s.label in FUTURE_LABELS]
    if not scenarios:
        raise SystemExit("no future scenario in --scenarios: this measures labels about the users' future")
    model, dtype = quality.load_model_at_precision(ctx)
    cfg = model.cfg.tune  # what a tuning job without params runs (services.tuning.jobs.resolve_tune_params)
    steps = args.steps or cfg.steps
    as_of = quality.inputs_world(ctx)
    today = todays_store(as_of, ctx.vecs)
    train, test = ctx.world.users("train"), ctx.world.users("test")
    t0 = time.perf_counter()
    caches = {"test": quality.encode_prefixes(ctx, model, test, dtype, "as_of test", as_of)}
    results: dict[str, dict] = {s.name: {} for s in scenarios}
    for view, world in (("as_of", as_of), ("today", today)):
        cache = quality.encode_prefixes(ctx, model, train, dtype, f"{view} train", world)
        pos = {u: i for i, u in enumerate(train)}
        for s in scenarios:
            tr_u, tr_y = s.labels(ctx.world, train)
            res = tune_soft_prompt(model, cache[[pos[u] for u in tr_u]], tr_y, s.query, n_tokens=cfg.n_tokens,
                                   steps=steps, lr=cfg.lr, tau=cfg.tau, seed=cfg.seed, val_fraction=cfg.val_fraction,
                                   batch_size=cfg.batch_size, eval_every=max(1, steps // 5), objective=cfg.objective,
                                   anchor_weight=cfg.anchor_weight, min_val_gain=cfg.min_val_gain,
                                   verdict_fraction=cfg.verdict_fraction)
            te_u, te_y = s.labels(ctx.world, test)
            te_pos = {u: i for i, u in enumerate(test)}
            scores = prompt_scores(model, caches["test"][[te_pos[u] for u in te_u]], res, cfg.tau, dtype, ctx.device)
            results[s.name][view] = {"job_auc": float(res.metrics["auc"]),
                                     "job_probe_auc": float(res.metrics.get("probe_auc", float("nan"))),
                                     "kept_zero_shot": float(res.metrics.get("kept_zero_shot", 0.0)),
                                     "test_auc": ev.auc(te_y, scores), "scores": scores, "y": te_y}
            log.info("tuned scenario=%s view=%s job_auc=%.4f test_auc=%.4f seconds=%.0f", s.name, view,
                     res.metrics["auc"], results[s.name][view]["test_auc"], time.perf_counter() - t0)
    rows = []
    for s in scenarios:
        a, b = results[s.name]["today"], results[s.name]["as_of"]
        ci = paired_bootstrap(a["y"], a["scores"], b["scores"])
        rows.append({"scenario": s.name, "query": s.query, "test_users": int(len(a["y"])),
                     "positives": int(a["y"].sum()),
                     **{f"{v}_{k}": results[s.name][v][k] for v in ("today", "as_of")
                        for k in ("job_auc", "job_probe_auc", "kept_zero_shot", "test_auc")},
                     "today_test_ci": ci["a"], "as_of_test_ci": ci["b"],
                     "today_minus_as_of": a["test_auc"] - b["test_auc"], "today_minus_as_of_ci": ci["diff"]})
    meta = {"checkpoint": args.checkpoint, "steps": steps, "train_users": len(train), "test_users": len(test),
            "dtype": str(dtype), "date": time.strftime("%Y-%m-%d"), "seconds": round(time.perf_counter() - t0)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = [f"Tuning on today's store vs as of the label's time ({meta['date']}, {meta['dtype']}, {steps} steps, "
          f"{len(train)} train / {len(test)} test users; test users embedded as of the time)", "",
          "| scenario | job's held-out AUC: today / as of | test AUC, today's prompt | test AUC, as-of prompt | "
          "today - as of (test, 95%) |", "|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['scenario']} | {r['today_job_auc']:.3f} / {r['as_of_job_auc']:.3f} | "
                  f"{r['today_test_auc']:.3f} ({r['today_test_ci'][0]:.3f}-{r['today_test_ci'][1]:.3f}) | "
                  f"{r['as_of_test_auc']:.3f} "
                  f"({r['as_of_test_ci'][0]:.3f}-{r['as_of_test_ci'][1]:.3f}) | {r['today_minus_as_of']:+.4f} "
                  f"({r['today_minus_as_of_ci'][0]:+.4f} to {r['today_minus_as_of_ci'][1]:+.4f}) |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
