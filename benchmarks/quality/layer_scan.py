"""Which decoder layer's `<USER_EMB>` state probes best: the static and zero-shot rows read out at several layers.

    .venv-model/bin/python benchmarks/quality/layer_scan.py --checkpoint artifacts/default --train-users 1000 \
        --val-users 300 --eval-users 625 --layers 4 8 12 16 20 22 24 26 28 29 30 --paired 24 \
        --embed-cache var/embcache --out benchmarks/results/layer_scan_visible

The served embedding is the last layer's state after the final norm (`head.embedding: hidden`). A state read at an
earlier layer l (its residual stream through the same final norm, then L2-normalised, as a model cut after layer l
would serve it) may keep more of what the prefix holds. One prefix pass and one packed suffix pass per user with
hooks on the chosen layers; each (layer, row, scenario) probe picks C on the val users (a scan: choose a layer
by the val column, then measure it with run.py's protocol); the test AUCs are written too, never used to choose.
With --embed-cache the states are kept there (fp16, ~270 MB for the command above), so a rerun only probes.
`--paired LAYER` then measures LAYER against the last layer with run.py's protocol; run.py itself reads any layer
out as `--ablation "LABEL=CHECKPOINT#hidden@LAYER"` (head.layer: a model cut after that layer).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import stamp  # noqa: E402

from benchmarks.quality.run import (INPUT_TAGS, STATIC_QUERY, add_population_args, build_context,  # noqa: E402
                                    load_model_at_precision, model_users, prefix_batches, query_specs, save_npz,
                                    scatter_users)
from training import evaluate as ev  # noqa: E402

log = logging.getLogger("benchmarks.quality.layer_scan")


def embed_layers(ctx, layers: list[int]) -> tuple[np.ndarray, list[tuple[str, str]], list[int]]:
    """[n_users, n_specs, n_layers, hidden] states at `<USER_EMB>` (final norm applied, L2-normalised)."""
    import torch

    from training.precision import autocast

    model, dtype = load_model_at_precision(ctx, "trained")
    model.cfg.head.embedding, model.cfg.head.layer = "hidden", None  # every layer runs; the hooks read them
    lm = model._lm().model
    n_layers = len(lm.layers)
    bad = [l for l in layers if not 1 <= l <= n_layers]
    if bad:
        raise SystemExit(f"--layers {bad}: this backbone has layers 1..{n_layers}")
    users = model_users(ctx)
    specs = query_specs(ctx)
    names = list(specs)
    captured: dict[int, torch.Tensor] = {}

    def hook(index):
        def grab(_module, _inputs, output):
            captured[index] = output[0] if isinstance(output, tuple) else output
        return grab

    handles = [lm.layers[l - 1].register_forward_hook(hook(l)) for l in layers]
    emb_all = np.zeros((len(users), len(names), len(layers), model.hidden), np.float16)
    try:
        with torch.inference_mode(), autocast(dtype, ctx.device):
            # each prefix is read once; prefix_batches logs the progress (its seconds count the suffix passes too)
            for i, part in prefix_batches(ctx, model, users, dtype, "layer scan"):
                states = _embed_hooked(model, part, [specs[n] for n in names], captured, layers)
                emb_all[i:i + part.batch_size] = states.cpu().numpy().astype(np.float16)
    finally:
        for h in handles:
            h.remove()
    return emb_all, names, users


def _embed_hooked(model, cache, specs, captured, layers):
    """One packed suffix pass (embed_per_user's); the hooked layers' states at each scenario's `<USER_EMB>`."""
    import torch
    import torch.nn.functional as F

    lm = model._lm().model
    b = cache.batch_size
    hidden, lay = model.decode_suffixes(cache, [specs] * b)  # runs the hooks
    r, c = lay.gather_row.to(hidden.device), lay.gather_col.to(hidden.device)
    states = [F.normalize(lm.norm(captured[l][r, c]).float(), dim=-1) for l in layers]
    if layers[-1] == len(lm.layers):  # the hook + norm path must reproduce what is served
        gap = float((states[-1] - model.served(hidden[r, c]).float()).abs().max())
        if gap > 1e-2:
            raise RuntimeError(f"hooked last layer differs from the served embedding by {gap}")
    return torch.stack(states, dim=1).view(b, len(specs), len(layers), -1)


def _cache_path(ctx, layers: list[int]) -> Path | None:
    """The scan's embeddings in --embed-cache, keyed by checkpoint id, users, layers and queries (never stale)."""
    if not ctx.embed_cache:
        return None
    import hashlib

    from training.artifacts import checkpoint_id

    ident = json.dumps([checkpoint_id(ctx.checkpoint), model_users(ctx), layers, STATIC_QUERY,
                        [s.query for s in ctx.scenarios], *INPUT_TAGS])
    return Path(ctx.embed_cache) / f"layers-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.npz"


def _full(ctx, emb_all: np.ndarray, names, users, li: int) -> dict[tuple[str, str], np.ndarray]:
    """Layer li's embeddings as the probes index them: [n_users_total, hidden] per (row, scenario)."""
    return {key: scatter_users(ctx, users, emb_all[:, j, li]) for j, key in enumerate(names)}


def paired(ctx, emb_all: np.ndarray, names, users, layers: list[int], li: int, draws: int) -> str:
    """Static and zero-shot rows of layer li and of the last scanned layer, probed as run.py probes (C by folds),
    with the paired differences that decide whether layer li would serve better."""
    from benchmarks.quality.intervals import paired_tables

    rows = []
    for at in (li, len(layers) - 1):
        full = _full(ctx, emb_all, names, users, at)
        for kind in ("static", "zero_shot"):
            probes = [ev.probe(full[("static", "static")] if kind == "static" else full[("zero_shot", s.name)],
                               ctx.world, s, seeds=(0,), subsample=1.0, c_choice="cv") for s in ctx.scenarios]
            rows.append({"row": f"{kind} @ layer {layers[at]}", "probes": probes,
                         "auc_avg": float(np.mean([p.auc_mean for p in probes]))})
    a, b = layers[li], layers[-1]
    return paired_tables(rows, [(f"zero_shot @ layer {a}", f"zero_shot @ layer {b}"),
                                (f"static @ layer {a}", f"static @ layer {b}"),
                                (f"zero_shot @ layer {a}", f"static @ layer {a}"),
                                (f"zero_shot @ layer {b}", f"static @ layer {b}")], draws)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_population_args(p)
    p.add_argument("--layers", type=int, nargs="+", default=[4, 8, 12, 16, 20, 22, 24, 26, 28, 29, 30],
                   help="decoder layers to read (1-based); the last one is the reference of --paired")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "layer_scan"))
    p.add_argument("--paired", type=int, default=None, metavar="LAYER",
                   help="after the scan: LAYER against the last scanned layer with run.py's protocol (C by 5-fold, "
                        "paired 95%% bootstrap intervals over the test users)")
    p.add_argument("--draws", type=int, default=1000)
    args = p.parse_args(argv)
    ctx = build_context(args)
    out = Path(args.out)
    npz = _cache_path(ctx, sorted(set(args.layers)))
    if npz is not None and npz.is_file():
        with np.load(npz, allow_pickle=False) as z:
            emb_all, users = z["emb"], z["users"].tolist()
            names = [tuple(n.split("::")) for n in z["names"].tolist()]
            layers = z["layers"].tolist()
        log.info("layer_scan_loaded path=%s", npz)
    else:
        layers = sorted(set(args.layers))
        emb_all, names, users = embed_layers(ctx, layers)
        if npz is not None:
            save_npz(npz, {"emb": emb_all, "users": np.asarray(users), "layers": np.asarray(layers),
                           "names": np.asarray(["::".join(n) for n in names])})
    table = []
    for li, layer in enumerate(layers):
        full = _full(ctx, emb_all, names, users, li)
        for kind in ("static", "zero_shot"):
            vals, tests = [], []
            for s in ctx.scenarios:
                x = full[("static", "static")] if kind == "static" else full[("zero_shot", s.name)]
                vals.append(ev.val_auc(x, ctx.world, s))
                tests.append(ev.probe(x, ctx.world, s, seeds=(0,), c_choice="val").auc_mean)
            table.append({"layer": layer, "row": kind, "val_auc": float(np.mean(vals)),
                          "test_auc": float(np.mean(tests)), "val": vals, "test": tests})
            log.info("layer_scan layer=%d row=%s val_auc=%.4f test_auc=%.4f", layer, kind, table[-1]["val_auc"],
                     table[-1]["test_auc"])
    lines = ["| layer | static val | zero-shot val | zs - static val | static test | zero-shot test |",
             "|---|---|---|---|---|---|"]
    for layer in layers:
        st, zs = (next(t for t in table if t["layer"] == layer and t["row"] == k) for k in ("static", "zero_shot"))
        lines.append(f"| {layer} | {st['val_auc']:.4f} | {zs['val_auc']:.4f} | {zs['val_auc'] - st['val_auc']:+.4f} "
                     f"| {st['test_auc']:.4f} | {zs['test_auc']:.4f} |")
    md = "\n".join(lines)
    if args.paired is not None:
        if args.paired not in layers:
            raise SystemExit(f"--paired {args.paired}: not a scanned layer {layers}")
        md += "\n\n" + paired(ctx, emb_all, names, users, layers, layers.index(args.paired), args.draws)
    footer = stamp("benchmarks/quality/layer_scan.py", argv)
    out.with_suffix(".md").write_text(md + "\n\n" + footer + "\n")
    out.with_suffix(".json").write_text(json.dumps({"layers": layers, "rows": table,
                                                    "scenarios": [s.name for s in ctx.scenarios]}, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
