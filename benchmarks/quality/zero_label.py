"""Zero-label scores: does the state under a scenario's query carry that scenario's yes/no, with no labels at all?

    .venv-model/bin/python benchmarks/quality/zero_label.py --checkpoint artifacts/default --train-users 1000 \
        --val-users 300 --eval-users 625 --embed-cache var/embcache --out benchmarks/results/zero_label_visible
    # the unseen eight: add --scenarios benchmarks/quality/scenarios_unseen.yaml (and another --out)

The `<USER_EMB>` position predicts an answer's first token (pretraining's NTP). A model whose answers to yes/no
questions lead with "Yes" / "No" (`data.future_checks`, docs/model.md) can then be read without a probe: the score
of a user under the scenario's query is the served state (the normalised `<USER_EMB>` state, `head.embedding:
hidden`) times the difference of the tied vocabulary rows of those two tokens (the sign of the logit difference
"Yes" - "No"; its size is per user up to the state's norm). AUC of that score on the test users against the
scenario's labels, 95% bootstrap interval over them; 0.5 = the query carries nothing of its answer in that
direction. The same read-out of the generic query's state ("Describe this user.") is the control: a direction
that scores users well whatever the question is a prior (activity, taste), not the query's answer. The last
column removes that prior user by user: the scenario state's read-out minus the static state's, (zero-shot - static)
. direction, still with nothing fitted (what the question moves, not where the user already sat). Reads the
embeddings run.py keeps in --embed-cache (same key), so it costs seconds after a table of the same checkpoint.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import stamp  # noqa: E402

from benchmarks.quality.run import add_population_args, build_context, load_model, model_embeddings  # noqa: E402
from training import evaluate as ev  # noqa: E402


def verdict_direction(model, yes: str = "Yes", no: str = "No") -> np.ndarray:
    """W[first token of "<yes>: ..."] - W[first token of "<no>: ..."] (the answer tokenization of pretraining)."""
    if model.cfg.head.embedding != "hidden":
        raise SystemExit(f"this checkpoint serves the head's output ({model.cfg.head.embedding!r}); the vocabulary "
                         "rows read the <USER_EMB> state: use --embedding hidden")
    ids = [model.tokenizer(f"{w}: x", add_special_tokens=False)["input_ids"][0] for w in (yes, no)]
    if ids[0] == ids[1]:
        raise SystemExit(f"{yes!r} and {no!r} start with the same token")
    w = model._lm().get_output_embeddings().weight.detach().float().cpu().numpy()
    return w[ids[0]] - w[ids[1]]


def scores(ctx, direction: np.ndarray, draws: int) -> list[dict]:
    """Per scenario: zero-label AUC of the scenario state and of the static state, intervals and paired diff. One
    set of resamples of the test users serves every scenario (a scenario without a label for a user drops it)."""
    emb = model_embeddings(ctx)
    test = np.asarray(ctx.world.users("test"))
    counts = ev.bootstrap_counts(len(test), draws, 0)
    column = {u: i for i, u in enumerate(test.tolist())}
    out = []
    for s in ctx.scenarios:
        te_u, te_y = s.labels(ctx.world, test.tolist())
        w = counts[:, [column[u] for u in np.asarray(te_u).tolist()]]
        zs = emb["zero_shot"][s.name][te_u] @ direction
        st = emb["static"]["static"][te_u] @ direction
        b_zs, b_st = ev.weighted_auc(te_y, zs, w), ev.weighted_auc(te_y, st, w)
        out.append({"scenario": s.name, "n": len(te_u),
                    "moved": ev.auc(te_y, zs - st), "moved_ci": ev.interval(ev.weighted_auc(te_y, zs - st, w)),
                    "zero_shot": ev.auc(te_y, zs), "zero_shot_ci": ev.interval(b_zs),
                    "static": ev.auc(te_y, st), "static_ci": ev.interval(b_st),
                    "diff": ev.auc(te_y, zs) - ev.auc(te_y, st), "diff_ci": ev.interval(b_zs - b_st),
                    "boot_zs": b_zs, "boot_st": b_st})
    return out


def markdown(rows: list[dict]) -> str:
    def ci(lo_hi):
        return f"{lo_hi[0]:.3f} - {lo_hi[1]:.3f}"

    lines = ["| scenario | zero-label AUC, scenario query (95%) | the same read-out of the static state (95%) | "
             "scenario - static (95%) | what the query moves: AUC of the per-user difference (95%) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scenario']} | {r['zero_shot']:.3f} ({ci(r['zero_shot_ci'])}) | {r['static']:.3f} "
                     f"({ci(r['static_ci'])}) | {r['diff']:+.3f} ({r['diff_ci'][0]:+.3f} to {r['diff_ci'][1]:+.3f}) | "
                     f"{r['moved']:.3f} ({ci(r['moved_ci'])}) |")
    boot_zs, boot_st = (np.mean([r[k] for r in rows], axis=0) for k in ("boot_zs", "boot_st"))  # same resamples
    avg_zs, avg_st = np.mean([r["zero_shot"] for r in rows]), np.mean([r["static"] for r in rows])
    lo, hi = ev.interval(boot_zs - boot_st)
    lines.append(f"| **average** | **{avg_zs:.3f} ({ci(ev.interval(boot_zs))})** | {avg_st:.3f} "
                 f"({ci(ev.interval(boot_st))}) | **{avg_zs - avg_st:+.3f} ({lo:+.3f} to {hi:+.3f})** | "
                 f"{np.mean([r['moved'] for r in rows]):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_population_args(p)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--yes", default="Yes", help="the answer word of a yes (its first token is read)")
    p.add_argument("--no", default="No", help="the answer word of a no")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "zero_label"))
    args = p.parse_args(argv)
    if args.tune_steps:
        raise SystemExit("--tune-steps: zero-label scores read the query-only states; leave it at 0")
    ctx = build_context(args)
    direction = verdict_direction(load_model(ctx), args.yes, args.no)
    md = markdown(scores(ctx, direction, args.draws))
    footer = stamp("benchmarks/quality/zero_label.py", argv)
    Path(args.out).with_suffix(".md").write_text(f"Checkpoint {args.checkpoint}.\n\n{md}\n\n{footer}\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
