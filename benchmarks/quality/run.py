"""Quality benchmark: linear-probe AUC / KS of user embeddings on the ten MovieLens scenarios.

    python benchmarks/quality/run.py --dataset ml-1m                      # baselines
    python benchmarks/quality/run.py --dataset ml-1m --checkpoint DIR     # + model rows from a pretrain checkpoint

Each row is a function returning user embeddings ([n_users, d] for all scenarios, or a dict scenario -> matrix
for scenario-specific embeddings). Rows that cannot run (no checkpoint, model API missing) are listed as skipped
with the reason. Writes benchmarks/results/quality.{md,json,png}; prints the table last.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import command_line, describe, footer, utc_now  # noqa: E402

from benchmarks.quality.intervals import (  # noqa: E402
    CLAIM_HEADER, CLAIMS, RowBootstrap, claim_cells, paired_claims, train_noise_lines)
from training import evaluate as ev  # noqa: E402
from training.config import ConfigError, parse_readout  # noqa: E402
from training.data.encoder import cached_text_vectors  # noqa: E402
from training.data.scenarios import Scenario, load_scenarios  # noqa: E402
from training.data.world import UserWorld, WorldConfig, build_world  # noqa: E402

log = logging.getLogger("benchmarks.quality")
RESULTS = ROOT / "benchmarks" / "results"


class RowSkipped(Exception):
    """A row that cannot run here; the message says what it needs."""


@dataclass
class Context:
    world: UserWorld
    vecs: np.ndarray  # [n_texts, 384] float16 event-text vectors
    scenarios: list[Scenario]
    checkpoint: str | None
    device: str
    model_users: int | None  # kept for callers; caps now live in CappedWorld (--train-users/--eval-users)
    tune_steps: int = 0  # prompt-tuned row: training.tune steps per scenario (0 = row skipped)
    tune_objective: str = "prototype"  # training.tune's objective for the tuned rows
    tune_anchor: float = 0.0  # training.tune's anchor_weight (pull toward the zero-shot embedding)
    tune_depth: str = "input"  # training.tune's depth: soft tokens in the suffix, or keys/values at every layer
    tune_verdict: float = 0.0  # training.tune's verdict_fraction (held-out users that only score); main: its default
    model_cache: dict = field(default_factory=dict)  # one embedding pass per model, shared by its rows
    tune_log: dict = field(default_factory=dict)  # scenario -> training.tune held-out metrics
    embed_cache: str | None = None  # directory for model embeddings (.npz), reused across runs
    ablations: dict = field(default_factory=dict)  # row label -> checkpoint of a separately pretrained variant
    ablation_embedding: dict = field(default_factory=dict)  # row label -> its head.embedding, where given
    subsample: float = 1.0  # share of train users each seed's probe is fitted on (1.0: all; intervals bootstrap)
    same_question: bool = True  # model rows: held-out same-question retrieval on the test users (a model pass)
    same_q: dict = field(default_factory=dict)  # model key -> {"acc1", "chance"}, memoised
    c_choice: str = "cv"  # how every row's probe picks C (training.evaluate.probe): "val" users or "cv" folds
    embedding: str | None = None  # the model rows' embedding (head.embedding) if not the checkpoint's own
    served: str | None = None  # served.py fetch output: the model rows as the public API returned them
    transfer: dict | None = None  # users the checkpoint was not pretrained on: what the model reads (transfer_of)
    # model key -> the dense-vector constants its model reads where they are not the world's own (a Normalisation;
    # None: refitted on the world's train users): on a transfer run, each --ablation checkpoint's own and the
    # --compare-constants rows' (inputs_world)
    constants: dict = field(default_factory=dict)
    input_worlds: dict = field(default_factory=dict)  # model key -> the world its model reads, memoised


class CappedWorld:
    """A UserWorld whose splits are seeded random subsets: CPU runs of the model rows probe fewer users.

    Every row of one run sees the same subsets, so baselines recomputed in that run are comparable to the model
    rows; the full-population baseline table (benchmarks/results/quality.*) is a different population.
    """

    def __init__(self, world: UserWorld, caps: dict[str, int | None], seed: int = 0) -> None:
        self._world = world
        self._users: dict[str, list[int]] = {}
        for split, cap in caps.items():
            users = world.users(split)
            if cap and cap < len(users):
                rng = np.random.default_rng([seed, len(split)])  # one fixed subset per split
                users = sorted(rng.choice(users, cap, replace=False).tolist())
            self._users[split] = list(users)

    def users(self, split: str | None = None) -> list[int]:
        if split is None:
            return sorted(u for us in self._users.values() for u in us)
        return list(self._users[split])

    def __getattr__(self, name: str) -> Any:  # everything else (ratings, tabular, labels' inputs) is the world's
        return getattr(self._world, name)


def full_world(world: UserWorld | CappedWorld) -> UserWorld:
    """The world a model reads its inputs from: a CappedWorld caps who is *scored*, never what the model sees. The
    dense user vector is standardised with train-user moments (training.data.features), and those must be the
    whole train split's, as in the checkpoint's normalisation.json that serving standardises with; a capped world's
    train users (1,000 of 4,826, or 20) would give other inputs than the served model reads."""
    return world._world if isinstance(world, CappedWorld) else world


def inputs_world(ctx: Context, key: str = "trained") -> UserWorld:
    """The world the model of `key` reads its users from: the whole world (full_world), standardising the dense
    user vector with the constants that key is read with (Context.constants; the world's own otherwise). A key with
    other constants reads a shallow copy (the data shared, the dense-vector memo its own)."""
    world = full_world(ctx.world)
    if key not in ctx.constants or ctx.constants[key] is world.normalisation:
        return world
    if key not in ctx.input_worlds:
        other = copy.copy(world)
        other.__dict__.pop("_dense_cache", None)  # training.data.features' memo of the world's own constants
        other.normalisation = ctx.constants[key]
        ctx.input_worlds[key] = other
    return ctx.input_worlds[key]


def constants_tag(ctx: Context, key: str) -> str | None:
    """What identifies the dense-vector constants the model of `key` reads, for the embedding cache's key: on a
    transfer run (or wherever constants are given) a digest of them, or of the train users they are refitted on;
    None where they are pretraining's own (the dataset and split the checkpoint was trained on: ML-1M's files keep
    their key). A checkpoint's id does not cover its normalisation.json (training.normalisation), so the tag does."""
    import hashlib

    world = inputs_world(ctx, key)
    if world.normalisation is not None:
        return "inputs:constants-" + hashlib.sha256(world.normalisation.to_json().encode()).hexdigest()[:16]
    if ctx.transfer:
        train = json.dumps(world.users("train"))
        return "inputs:refit-on-train-" + hashlib.sha256(train.encode()).hexdigest()[:16]
    return None


def model_collator(ctx: Context, model, key: str = "trained", world: UserWorld | None = None):
    """The one collator every model pass of the harness reads users through: the inputs of `key` (inputs_world: the
    whole world's, with the constants that key reads; `world`: another view of the users, e.g. tuning_as_of.py's
    today's store), at the checkpoint's tabular width (older checkpoints read fewer columns)."""
    from training.data.collate import UserCollator

    return UserCollator(world if world is not None else inputs_world(ctx, key), ctx.vecs, d_tab=model.cfg.input.d_tab)


# ---- baseline rows -------------------------------------------------------------------------------------------
def row_bag_of_items(ctx: Context):
    return ev.bag_of_items(ctx.world)


def row_bag_of_genres(ctx: Context):
    return ev.bag_of_genres(ctx.world)


def row_tabular(ctx: Context):
    return ctx.world.tabular


def row_minilm_mean(ctx: Context):
    return ev.mean_text_vector(ctx.world, ctx.vecs)


def row_dense_vector(ctx: Context):
    """What the prefix's tabular token reads: statistics + the whole-history mean event vector (LR on 400 dims)."""
    from training.data.features import dense_user_features

    return dense_user_features(full_world(ctx.world), ctx.vecs)


def row_minilm_source_mean(ctx: Context):
    return ev.mean_text_vector(ctx.world, ctx.vecs, per_source=True)


# ---- model rows (need a pretrain checkpoint) -----------------------------------------------------------------
# What the model rows' inputs were when their embeddings were cached; every embedding cache key ends with these, so a
# change of inputs never loads older embeddings. Since 2026-12-06: the dense user vector standardised with the whole
# train split's moments (as served), not the capped train users' (full_world); since that night the prefix keeps
# each source's events within its window_days, as ingest does (training.data.collate.user_record).
INPUT_TAGS = ("inputs:full-train-moments", "prefix:source-window")
STATIC_QUERY = "Describe this user."  # one query for every scenario: a static user embedding (FOUND-like)


def _checkpoint(ctx: Context, key: str) -> str:
    """The checkpoint behind one model key: "trained"/"untrained"/REFIT use --checkpoint, others are --ablation
    rows."""
    path = ctx.ablations.get(key) if key not in ("trained", "untrained", REFIT) else ctx.checkpoint
    if not path:
        raise RowSkipped("needs --checkpoint (a training.pretrain output directory)")
    return path


def load_model(ctx: Context, key: str = "trained"):
    """The model behind `key` (see model_embeddings), in eval mode, with the read-out its rows serve."""
    path = _checkpoint(ctx, key)
    try:
        from training.pretrain import load_pretrained
    except ImportError as exc:  # the model API is still landing
        raise RowSkipped(f"model API unavailable: {exc}") from None
    if key != "untrained":
        model = load_pretrained(path, device=ctx.device).eval()
    else:  # ablation: same config (LoRA B starts at zero = the plain backbone), projectors and head at their init
        from training.artifacts import load_checkpoint
        from training.model.embedder import QAnchorModel

        _, cfg, _ = load_checkpoint(path, device="cpu")
        model = QAnchorModel(cfg).to(ctx.device).eval()
    embedding, layer = parse_readout(_embedding_of(ctx, key))
    if layer is not None and layer > model.n_layers:
        raise SystemExit(f"read-out {embedding}@{layer}: the backbone has layers 1..{model.n_layers}")
    model.cfg.head.embedding, model.cfg.head.layer = embedding, layer
    return model


def load_model_at_precision(ctx: Context, key: str = "trained"):
    """load_model, then its frozen backbone in the dtype its config computes in on ctx.device (training.precision):
    what every embedding pass runs. -> (model, dtype)."""
    from training.precision import apply_precision, resolve_precision

    model = load_model(ctx, key)
    dtype = resolve_precision(model.cfg.backbone.compute, ctx.device)
    apply_precision(model, dtype)
    return model, dtype


def _embedding_of(ctx: Context, key: str) -> str:
    """The read-out the model rows of `key` serve ("projected", "hidden", "hidden@LAYER"): the --ablation's
    #EMBEDDING, --embedding, else the checkpoint's config."""
    chosen = ctx.ablation_embedding.get(key) or ctx.embedding
    if chosen:
        return chosen
    cfg = _config_of(ctx, key)
    return cfg.head.readout if cfg is not None else "projected"


def _config_of(ctx: Context, key: str):
    """The QAnchorConfig of `key`'s checkpoint, or None where it is not a checkpoint (loading it fails with the
    message that says so)."""
    from training.config import QAnchorConfig

    config = Path(_checkpoint(ctx, key)) / "config.json"
    return QAnchorConfig.from_dict(json.loads(config.read_text())) if config.is_file() else None


def _compute_dtype(ctx: Context, key: str) -> str:
    """The dtype a model pass of `key` computes in here ("bfloat16" / "float32"): its config's backbone.compute
    resolved on ctx.device (training.precision; QANCHOR_PRECISION overrides), as model_embeddings will."""
    from training.precision import resolve_precision

    cfg = _config_of(ctx, key)
    return str(resolve_precision(cfg.backbone.compute if cfg else "auto", ctx.device)).removeprefix("torch.")


def model_users(ctx: Context) -> list[int]:
    """Every user a model pass embeds (train + val + test of the capped world), sorted: the embedding caches' rows."""
    return sorted(ctx.world.users("train") + ctx.world.users("val") + ctx.world.users("test"))


def scatter_users(ctx: Context, users: list[int], emb: np.ndarray) -> np.ndarray:
    """The model users' rows [len(users), D] as the probes index them: [all users, D], fp32, zeros elsewhere."""
    full = np.zeros((ctx.world.n_users, emb.shape[1]), np.float32)
    full[np.asarray(users)] = emb
    return full


def query_specs(ctx: Context) -> dict[tuple[str, str], Any]:
    """The query-only specs every model pass embeds: ("static", "static") and ("zero_shot", scenario) each."""
    from training.model.suffix import ScenarioSpec

    specs = {("static", "static"): ScenarioSpec(STATIC_QUERY)}
    specs.update({("zero_shot", s.name): ScenarioSpec(s.query) for s in ctx.scenarios})
    return specs


def model_embeddings(ctx: Context, key: str = "trained") -> dict[str, dict[str, np.ndarray]]:
    """All model embeddings of one model, memoised: {"static": {...}, "zero_shot": {...}, "tuned": {...}}.

    `key`: "trained" (--checkpoint), "untrained" (its config at init) or an --ablation label. The prefix is
    encoded once per user and every spec (static + per-scenario queries + tuned prompts) is packed into one
    suffix pass over that cache: on CPU this is what makes the model rows affordable. With --embed-cache the
    query rows (static, zero-shot) and the tuned rows live in two files: a tuned run reuses the query rows of any
    run of the same model and users, and a run without tuning reuses a tuned run's.
    """
    if key in ctx.model_cache:
        return ctx.model_cache[key]
    if key == SERVED:
        ctx.model_cache[key] = served_embeddings(ctx)
        return ctx.model_cache[key]
    users = model_users(ctx)
    tuned_run = bool(ctx.tune_steps) and key == "trained"
    query_disk = _disk_cache_path(ctx, key, users, tuned=False)
    tuned_disk = _disk_cache_path(ctx, key, users) if tuned_run else None
    out: dict[str, dict[str, np.ndarray]] = {}
    # a tuned run's file written before the split (2026-12-06) holds its query rows too: read it first
    for disk in (tuned_disk, query_disk):
        if disk is not None and disk.is_file() and not _has_rows(out, tuned_run):
            _load_embeddings(ctx, disk, users, out)
    if _has_rows(out, tuned_run):
        if query_disk is not None and not query_disk.is_file():  # from a file of every row: runs without tuning too
            save_npz(query_disk, {f"{kind}::{name}": out[kind][name][users] for kind, name in query_specs(ctx)})
        ctx.model_cache[key] = out
        return out
    import torch

    from training.model.suffix import ScenarioSpec
    from training.precision import autocast

    model, dtype = load_model_at_precision(ctx, key)
    from training.tune import with_deep

    specs = query_specs(ctx) if "zero_shot" not in out else {}
    deep = {}  # ("tuned", scenario) -> (query, deep prompt): embedded one scenario per pass over the grown cache
    if tuned_run and "tuned" not in out:  # tuning reads the train users' prefixes every step: keep those
        in_train = set(ctx.world.users("train"))
        train = [u for u in users if u in in_train]
        cache = encode_prefixes(ctx, model, train, dtype, key)
        tuned = _tune_prompts(ctx, model, cache, train)
        if ctx.tune_depth == "deep":
            deep = {("tuned", n): qp for n, qp in tuned.items()}
        else:
            specs.update({("tuned", n): ScenarioSpec(q, p) for n, (q, p) in tuned.items()})
        batches = _kept_then_encoded(ctx, model, users, train, cache, dtype, key)
    else:  # each prefix is read once: encode, embed and drop 16 users at a time (the memory of one batch)
        batches = ((list(range(i, i + part.batch_size)), part)
                   for i, part in prefix_batches(ctx, model, users, dtype, key))
    names = [*specs, *deep]
    emb_all = np.zeros((len(users), len(names), model.embedding_dim), np.float32)
    t0, done = time.perf_counter(), 0
    with torch.inference_mode(), autocast(dtype, ctx.device):
        for rows, part in batches:
            if specs:
                emb_all[rows, :len(specs)] = model.embed(part, list(specs.values())).float().cpu().numpy()
            for j, (q, prompt) in enumerate(deep.values(), start=len(specs)):
                got = model.embed(with_deep(part, prompt), [ScenarioSpec(q)])[:, 0]
                emb_all[rows, j] = got.float().cpu().numpy()
            done += len(rows)
            log.info("model_embed_progress model=%s users=%d/%d seconds=%.0f", key, done, len(users),
                     time.perf_counter() - t0)
    log.info("model_embed_done model=%s users=%d specs=%d seconds=%.1f", key, len(users), len(names),
             time.perf_counter() - t0)
    for j, (kind, name) in enumerate(names):
        out.setdefault(kind, {})[name] = scatter_users(ctx, users, emb_all[:, j])
    ctx.model_cache[key] = out
    files = {"query": {}, "tuned": {}}  # the rows this pass embedded, by the cache file they belong in
    for j, (kind, name) in enumerate(names):
        files["tuned" if kind == "tuned" else "query"][f"{kind}::{name}"] = emb_all[:, j]
    if query_disk is not None and files["query"] and not query_disk.is_file():
        save_npz(query_disk, files["query"])
    if tuned_disk is not None and files["tuned"]:
        if ctx.tune_log:
            files["tuned"]["meta::tune_log"] = np.array(json.dumps(ctx.tune_log))
        save_npz(tuned_disk, files["tuned"])
    return out


def served_embeddings(ctx: Context) -> dict[str, dict[str, np.ndarray]]:
    """The query rows (static, zero-shot) of every model user from `--served` (benchmarks/quality/served.py: fetched
    through the gateway of a running stack), checked against this run's users, scenarios and static query."""
    from benchmarks.quality.served import load_served, spec_names

    user_ids, names, emb, meta = load_served(Path(ctx.served))
    if meta.get("static_query") != STATIC_QUERY:
        raise SystemExit(f"--served {ctx.served}: its static row asked {meta.get('static_query')!r}, this harness "
                         f"asks {STATIC_QUERY!r}")
    have = meta.get("queries") or {}
    other = [s.name for s in ctx.scenarios if have.get(s.name) != s.query]
    if other:
        raise SystemExit(f"--served {ctx.served} was fetched without {other} or in other wording (it has "
                         f"{sorted(have)}); fetch it with the --scenarios file this run gets")
    world = full_world(ctx.world)
    index = {str(world.user_id(i)): i for i in range(world.n_users)}
    # an event log's users are named as the API knows them (the replay's --user-prefix + the dataset's user id)
    prefix = meta.get("user_prefix", "") if world.cfg.dataset == "offline" else ""
    row_of = {index[prefix + uid]: j for j, uid in enumerate(user_ids) if prefix + uid in index}
    users = model_users(ctx)
    missing = [u for u in users if u not in row_of]
    if missing:
        raise SystemExit(f"--served {ctx.served} lacks {len(missing)} of this run's {len(users)} users (e.g. "
                         f"{world.user_id(missing[0])}): its events step had other population flags")
    rows = emb[[row_of[u] for u in users]]
    out: dict[str, dict[str, np.ndarray]] = {}
    wanted = set(spec_names([{"name": s.name} for s in ctx.scenarios]))  # the file may hold more scenarios
    for j, name in enumerate(names):
        if name in wanted:
            kind, _, scenario = name.partition("::")
            out.setdefault(kind, {})[scenario] = scatter_users(ctx, users, rows[:, j])
    log.info("served_rows file=%s model_version=%s users=%d rows=%d", ctx.served, meta.get("model_version"),
             len(users), len(names))
    return out


def served_parity(ctx: Context) -> dict[str, Any]:
    """Cosine between each served embedding and the checkpoint's own (run.py's model pass) on the test users, per
    query row: what the public API returns vs what the artifact computes for the same user and query."""
    served, own = model_embeddings(ctx, SERVED), model_embeddings(ctx, "trained")
    test = np.asarray(ctx.world.users("test"))
    cos = []
    for kind in ("static", "zero_shot"):
        for name, a in served[kind].items():
            a, b = a[test], own[kind][name][test]
            cos.append(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12))
    cos = np.concatenate(cos)
    return {"mean": float(cos.mean()), "p01": float(np.quantile(cos, 0.01)), "min": float(cos.min()),
            "pairs": int(cos.size)}


def served_meta(ctx: Context) -> dict[str, Any]:
    """The --served file's provenance (model version, replay and fetch times) and, with a checkpoint, its parity."""
    from benchmarks.quality.served import load_served

    meta = {"file": ctx.served, **load_served(Path(ctx.served))[3]}
    if ctx.checkpoint:
        meta["cosine_to_checkpoint"] = served_parity(ctx)
    return meta


def _has_rows(out: dict, tuned_run: bool) -> bool:
    """Whether the embeddings read so far hold every row this run scores (the tuned ones only on a tuned run)."""
    return "zero_shot" in out and "static" in out and (not tuned_run or "tuned" in out)


def _load_embeddings(ctx: Context, disk: Path, users: list[int], out: dict) -> None:
    """Adds the rows of one --embed-cache file to `out` (kind -> scenario -> [all users, D]); a tuned file's
    held-out tuning metrics go to ctx.tune_log, so a rerun's JSON still reports them."""
    with np.load(disk) as z:
        for name in z.files:
            kind, scen = name.split("::")
            if kind == "meta":
                ctx.tune_log.update(json.loads(str(z[name])))
                continue
            out.setdefault(kind, {})[scen] = scatter_users(ctx, users, z[name])
    log.info("model_embeddings_loaded path=%s", disk)


def save_npz(disk: Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes one --embed-cache file whole or not at all (a parallel run reads either nothing or all of it): the
    model rows' files here, the layer scan's in layer_scan.py."""
    disk.parent.mkdir(parents=True, exist_ok=True)
    np.savez(disk.with_suffix(".tmp.npz"), **arrays)
    disk.with_suffix(".tmp.npz").rename(disk)


def prefix_batches(ctx: Context, model, users: list[int], dtype, label: str = "trained",
                   world: UserWorld | None = None):
    """(position of the first user, PrefixCache of users[i:i + 16]) in user order, encoded on demand, with progress
    lines an operator can grep. `label`: the model key (its users are read through inputs_world, or from `world`)."""
    import torch

    from training.precision import autocast

    collate = model_collator(ctx, model, label, world)
    t0 = time.perf_counter()
    for i in range(0, len(users), 16):
        with torch.inference_mode(), autocast(dtype, ctx.device):
            part = model.encode_prefix(collate.batch(users[i:i + 16]))
        log.info("model_prefix_progress model=%s users=%d/%d seconds=%.0f", label, min(i + 16, len(users)),
                 len(users), time.perf_counter() - t0)
        yield i, part


def _kept_then_encoded(ctx: Context, model, users: list[int], kept: list[int], cache, dtype, label: str):
    """(rows of `users`, PrefixCache of those users), 16 at a time: first the `kept` users, read from `cache` (their
    prefixes, in `kept` order), then the others, encoded on demand. Prompt tuning keeps only the train users'
    prefixes (1,000 of 1,925 ML-1M users in fp32: 3.3 GB less than keeping every user's)."""
    pos = {u: i for i, u in enumerate(users)}
    for i in range(0, len(kept), 16):
        yield [pos[u] for u in kept[i:i + 16]], cache[i:i + 16]  # a view of the kept cache, not a copy
    held = set(kept)
    rest = [u for u in users if u not in held]
    for i, part in prefix_batches(ctx, model, rest, dtype, label):
        yield [pos[u] for u in rest[i:i + 16]], part


def encode_prefixes(ctx: Context, model, users: list[int], dtype, label: str = "trained",
                    world: UserWorld | None = None):
    """One PrefixCache of `users`, for passes that read every prefix more than once (prompt tuning: the train users').
    Written outside inference mode: prompt tuning back-propagates through suffixes that read it."""
    from training.model.prefix_cache import PrefixCache

    t0 = time.perf_counter()
    cache = PrefixCache.collect((part for _, part in prefix_batches(ctx, model, users, dtype, label, world)),
                                len(users))
    log.info("model_prefix_done model=%s users=%d cache_mb=%.0f seconds=%.1f", label, len(users),
             cache.nbytes / 2**20, time.perf_counter() - t0)
    return cache


def _disk_cache_path(ctx: Context, key: str, users: list[int], tuned: bool = True) -> Path | None:
    """Embeddings on disk, keyed by checkpoint id, model variant, users and tuning steps (never stale). `tuned`
    False: the file of the query rows, keyed as a run without tuning is (tuning settings never change them)."""
    if not ctx.embed_cache:
        return None
    import hashlib

    from training.artifacts import checkpoint_id

    # the untrained ablation depends only on the config, so any checkpoint of the same run shares it
    path = _checkpoint(ctx, key)
    model_ident = checkpoint_id(path) if key != "untrained" else (Path(path) / "config.json").read_text()
    kind = "trained" if key not in ("trained", "untrained") else key  # ablations: the checkpoint id tells apart
    # since 2026-12-04 a tuning run that does not beat the query alone on its held-out users keeps the query
    tuning = [ctx.tune_steps, ctx.tune_objective, ctx.tune_anchor, "kept_zero_shot"] if ctx.tune_steps else 0
    if ctx.tune_steps and ctx.tune_depth != "input":
        tuning.append(ctx.tune_depth)
    if ctx.tune_steps and ctx.tune_verdict:  # since 2026-12-06 the keep decision reads the selection users only
        tuning.append(f"verdict:{ctx.tune_verdict:g}")
    parts = [model_ident, kind, users, tuning if key == "trained" and tuned else 0, STATIC_QUERY,
             [s.query for s in ctx.scenarios]]
    embedding = _embedding_of(ctx, key)
    if embedding != "projected":  # the key of the head's output is the one caches written before the option have
        parts.append(embedding)
    # bf16 rounding moves a scenario's rows by up to ~0.05 AUC (docs/quality.md "Yes/no checks"): an fp32 pass (a CPU
    # without AMX, or QANCHOR_PRECISION=fp32) never loads bf16 embeddings
    dtype = _compute_dtype(ctx, key)
    if dtype != "bfloat16":
        parts.append(dtype)
    parts.extend(INPUT_TAGS)
    world = full_world(ctx.world)
    if world.cfg.dataset != "ml-1m":  # the users are indices into the dataset's own user list
        parts.append(f"dataset:{world.cfg.dataset}")
    if world.cfg.dataset == "offline":  # a log grows, and --as-of moves the cut: key by what the model reads
        parts.append(f"log:{world.content_digest()}")
    tag = constants_tag(ctx, key)
    if tag:
        parts.append(tag)
    ident = json.dumps(parts)
    return Path(ctx.embed_cache) / f"{kind}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.npz"


def _tune_prompts(ctx: Context, model, cache, users: list[int]) -> dict[str, tuple[str, Any]]:
    """Paper §3.2.3: 6 soft tokens per scenario (--tune-depth deep: 6 keys/values per layer), tuned (training.tune)
    on the train users' cached prefixes only."""
    from training.tune import tune_soft_prompt

    pos = {u: i for i, u in enumerate(users)}
    out = {}
    for s in ctx.scenarios:
        tr_u, tr_y = s.labels(ctx.world, ctx.world.users("train"))
        probe = ctx.tune_objective == "probe"  # keeps its best evaluated step: evaluate four times
        res = tune_soft_prompt(model, cache[[pos[u] for u in tr_u]], tr_y, s.query, n_tokens=6,
                               steps=ctx.tune_steps, batch_size=32, objective=ctx.tune_objective,
                               anchor_weight=ctx.tune_anchor, depth=ctx.tune_depth,
                               verdict_fraction=ctx.tune_verdict,
                               eval_every=max(1, ctx.tune_steps // 4) if probe else ctx.tune_steps)
        ctx.tune_log[s.name] = {k: round(v, 4) for k, v in res.metrics.items()}
        out[s.name] = (s.query, res.prompt)
    return out


def row_static_query(ctx: Context):
    same = model_embeddings(ctx)["static"]["static"]
    return {s.name: same for s in ctx.scenarios}


def row_qanchor_zero_shot(ctx: Context):
    return model_embeddings(ctx)["zero_shot"]


def row_qanchor_prompt_tuned(ctx: Context):
    if not ctx.tune_steps:
        raise RowSkipped("needs --tune-steps N (soft prompts tuned per scenario on train users)")
    return model_embeddings(ctx)["tuned"]


def row_qanchor_tuned_val_selected(ctx: Context):
    """Per scenario, the tuned prompt only where its probe beats the zero-shot query's on the val users (fit on train,
    C chosen as in the table; test users untouched), else the query alone: what a team gets that promotes a tuned
    prompt only when it helps. The choice and both val AUCs land in the run's tune_heldout."""
    if not ctx.tune_steps:
        raise RowSkipped("needs --tune-steps N (soft prompts tuned per scenario on train users)")
    got = model_embeddings(ctx)
    out = {}
    for s in ctx.scenarios:
        tuned, zero = (ev.val_auc(got[kind][s.name], ctx.world, s) for kind in ("tuned", "zero_shot"))
        keep = bool(tuned > zero)
        out[s.name] = got["tuned" if keep else "zero_shot"][s.name]
        ctx.tune_log.setdefault(s.name, {}).update(val_probe_auc=round(tuned, 4),
                                                   val_probe_auc_zero_shot=round(zero, 4), kept_tuned=keep)
        log.info("tune_selection scenario=%s kept=%s val_auc_tuned=%.4f val_auc_zero_shot=%.4f", s.name,
                 "tuned" if keep else "zero_shot", tuned, zero)
    return out


def row_served_static(ctx: Context):
    same = model_embeddings(ctx, SERVED)["static"]["static"]
    return {s.name: same for s in ctx.scenarios}


def row_served_zero_shot(ctx: Context):
    return model_embeddings(ctx, SERVED)["zero_shot"]


def row_untrained_zero_shot(ctx: Context):
    return model_embeddings(ctx, "untrained")["zero_shot"]


def row_refit_static(ctx: Context):
    same = model_embeddings(ctx, REFIT)["static"]["static"]
    return {s.name: same for s in ctx.scenarios}


def row_refit_zero_shot(ctx: Context):
    return model_embeddings(ctx, REFIT)["zero_shot"]


ABLATION_PREFIX = "ablation: zero-shot, "
SERVED = "served"  # model key of the rows fetched through the public API (--served)
SERVED_STATIC, SERVED_ZERO_SHOT = "served: static query", "served: zero-shot"
# --compare-constants: the checkpoint read with constants refitted on a new dataset's train users, beside the rows
# read with the constants it ships (as ingest serves them): does refitting them help, and the query's gain under each
REFIT = "refitted constants"  # model key
REFIT_STATIC, REFIT_ZERO_SHOT = "Q-Anchor static query, refitted constants", "Q-Anchor zero-shot, refitted constants"
REFIT_CLAIMS = [(REFIT_ZERO_SHOT, "Q-Anchor zero-shot"), (REFIT_STATIC, "Q-Anchor static query"),
                (REFIT_ZERO_SHOT, REFIT_STATIC)]
# --served: is the scenario query worth anything through the API, and does the API serve what the artifact computes
SERVED_CLAIMS = [(SERVED_ZERO_SHOT, SERVED_STATIC), (SERVED_ZERO_SHOT, "Q-Anchor zero-shot")]
TUNED_VAL_SELECTED = "Q-Anchor prompt-tuned where val improves"


def claim_pairs(claims: list[tuple[str, str]], ablations: dict) -> list[tuple[str, str]]:
    """The paired differences to report: the paper's ordering, then this checkpoint's zero-shot row against each
    --ablation variant's (same users, same bootstrap draws: is the variant better or worse, and is it resolvable)."""
    return list(claims) + [("Q-Anchor zero-shot", ABLATION_PREFIX + label) for label in ablations]


def row_ablation(label: str) -> Callable[[Context], Any]:
    """Zero-shot rows of a separately pretrained variant (--ablation LABEL=CHECKPOINT), as in the paper's Table 3."""
    def row(ctx: Context):
        return model_embeddings(ctx, label)["zero_shot"]
    return row


ROWS: dict[str, Callable[[Context], Any]] = {
    "bag_of_items+genres (LR)": row_bag_of_items,
    "bag_of_genres (LR)": row_bag_of_genres,
    "tabular stats (LR)": row_tabular,
    "mean MiniLM of event texts": row_minilm_mean,
    "per-source mean MiniLM": row_minilm_source_mean,
    "dense user vector (LR)": row_dense_vector,
    "Q-Anchor static query": row_static_query,
    "Q-Anchor zero-shot": row_qanchor_zero_shot,
    "Q-Anchor prompt-tuned": row_qanchor_prompt_tuned,
    TUNED_VAL_SELECTED: row_qanchor_tuned_val_selected,
    "ablation: zero-shot, no pretraining": row_untrained_zero_shot,
}
BASELINES = list(ROWS)[:6]


# model rows -> which model's same-question retrieval they report (the model, not the probe, is measured there)
MODEL_KEYS = {"Q-Anchor static query": "trained", "Q-Anchor zero-shot": "trained",
              "Q-Anchor prompt-tuned": "trained", TUNED_VAL_SELECTED: "trained",
              "ablation: zero-shot, no pretraining": "untrained", SERVED_STATIC: SERVED, SERVED_ZERO_SHOT: SERVED,
              REFIT_STATIC: REFIT, REFIT_ZERO_SHOT: REFIT}


def _user_share(ctx: Context, emb: dict[str, np.ndarray]) -> float | None:
    """Share of the test users' embedding variance that is the user (users x scenarios decomposition)."""
    stacked = np.stack([np.asarray(emb[s.name]) for s in ctx.scenarios], axis=1)  # [n_users, S, D]
    test = np.asarray(ctx.world.users("test"))
    if len({id(emb[s.name]) for s in ctx.scenarios}) == 1:
        return None  # one embedding for every scenario: nothing to decompose
    return ev.variance_shares(stacked[test])["user"]


def _query_dependence(ctx: Context, key: str, emb: dict[str, np.ndarray]) -> float | None:
    """1 - linear CKA between each scenario's embeddings and the same model's static-query embeddings of the test
    users, averaged over scenarios: 0 when a scenario query only shifts the embedding (a probe then finds in the
    static embedding whatever the query would give), larger when the query changes which user differences it keeps."""
    static = model_embeddings(ctx, key).get("static", {}).get("static")
    if static is None or len({id(emb[s.name]) for s in ctx.scenarios}) == 1:
        return None
    test = np.asarray(ctx.world.users("test"))
    return float(np.mean([1.0 - ev.linear_cka(np.asarray(emb[s.name])[test], static[test]) for s in ctx.scenarios]))


def _same_question(ctx: Context, key: str) -> dict[str, float]:
    """Held-out same-question retrieval of one model on the test users (chance = 1 / group)."""
    if key in ctx.same_q:
        return ctx.same_q[key]
    import torch

    from training.heldout import HeldOutEval
    from training.precision import autocast

    model, dtype = load_model_at_precision(ctx, key)
    collate = model_collator(ctx, model, key)
    ho = HeldOutEval(ctx.world, collate, 256, model.cfg.data, seed=0, split="test")
    got = ho.same_question(model, model.cfg, autocast(dtype, ctx.device) if dtype != torch.float32 else None)
    ctx.same_q[key] = {"acc1": got.get("val_acc1_same_q"), "chance": 1.0 / got.get("val_same_q_group", 1.0)}
    log.info("same_question model=%s acc1=%.4f chance=%.4f", key, ctx.same_q[key]["acc1"], ctx.same_q[key]["chance"])
    return ctx.same_q[key]


def run_row(name: str, ctx: Context, seeds: tuple[int, ...]) -> dict:
    t0 = time.perf_counter()
    try:
        emb = ROWS[name](ctx)
    except RowSkipped as exc:
        log.info("row_skipped row=%r reason=%s", name, exc)
        return {"row": name, "skipped": str(exc)}
    probes = []
    for s in ctx.scenarios:
        e = emb[s.name] if isinstance(emb, dict) else emb
        probes.append(ev.probe(e, ctx.world, s, seeds, subsample=ctx.subsample, c_choice=ctx.c_choice))
    results = [{k: v for k, v in asdict(p).items() if not k.startswith("test_")} for p in probes]
    key = MODEL_KEYS.get(name, name.removeprefix(ABLATION_PREFIX) if name.startswith(ABLATION_PREFIX) else None)
    diagnostics = {}
    if isinstance(emb, dict):
        diagnostics["user_share"] = _user_share(ctx, emb)
        if key is not None:
            diagnostics["query_dependence"] = _query_dependence(ctx, key, emb)
    if key is not None and key != SERVED and ctx.same_question:  # retrieval needs the model itself, not its API
        diagnostics["same_q"] = _same_question(ctx, key)
    by_seed = np.mean([r["aucs"] for r in results], axis=0)  # the average over scenarios, per probe seed
    row = {"row": name, "scenarios": results, "probes": probes, **diagnostics,
           "seconds": round(time.perf_counter() - t0, 1),
           "auc_avg": float(np.mean([r["auc_mean"] for r in results])),
           "ks_avg": float(np.mean([r["ks_mean"] for r in results])),
           # spread of the average over seeds: average per seed, then std
           "auc_avg_by_seed": by_seed.tolist(), "auc_avg_std": float(np.std(by_seed)),
           "ks_avg_std": float(np.std(np.mean([r["kss"] for r in results], axis=0)))}
    log.info("row_done row=%r auc_avg=%.4f ks_avg=%.4f seconds=%.1f", name, row["auc_avg"], row["ks_avg"],
             row["seconds"])
    return row


def _fmt(x, spec=".3f") -> str:
    return "" if x is None else format(x, spec)


def markdown(rows: list[dict], scenarios: list[Scenario], meta: dict) -> str:
    done = [r for r in rows if "skipped" not in r]
    log_of = meta.get("log")
    where = f"the event log {log_of['root']} (each user embedded from {log_of['as_of']})" if log_of else meta["dataset"]
    lines = [f"Linear-probe AUC on {where}: the same {meta['n_train']} train / {meta.get('n_val', '?')} val "
             f"({'C by 5-fold over train + val' if meta.get('c_choice') == 'cv' else 'C choice'}) / "
             f"{meta['n_test']} test users for every row; 95% intervals bootstrap the test users "
             f"({meta.get('draws', 0)} draws). User share: share of the test users' embedding variance that is the "
             "user (users x scenarios); query dependence: 1 - linear CKA between each scenario's embeddings and the "
             "static query's (0: the query only shifts the embedding); same-q acc@1: the model's held-out retrieval "
             "among test users answering one pretraining question.", "",
             "| row | avg AUC | 95% interval | avg KS | user share | query dependence | same-q acc@1 (chance) |",
             "|---|---|---|---|---|---|---|"]
    transfer = meta.get("transfer")
    if transfer:
        old = transfer.get("pretraining_users_read")
        new_to_it = (f"{old} of this run's {meta['dataset']} users were among its pretraining users, none of the test "
                     "users" if old else f"so every {meta['dataset']} user is new to it")
        lines[0] += (f" Transfer: the checkpoint was pretrained on {transfer['checkpoint_dataset']}, {new_to_it} "
                     f"(probe split {transfer['split']}); the model reads the dense user vector standardised with "
                     + ("the checkpoint's constants, as ingest serves it" if transfer["constants"] == "checkpoint"
                        else f"constants refitted on {meta['dataset']}'s train users")
                     + (f"; the rows marked \"{REFIT}\" read it standardised with constants refitted on "
                        f"{meta['dataset']}'s train users." if transfer.get("compare") else "."))
    for r in sorted(done, key=lambda r: -r["auc_avg"]):
        ci = r.get("auc_ci")
        sq = r.get("same_q")
        ci_text = f"{ci[0]:.4f} - {ci[1]:.4f}" if ci else ""
        sq_text = f"{sq['acc1']:.3f} ({sq['chance']:.3f})" if sq else ""
        lines.append(f"| {r['row']} | {r['auc_avg']:.4f} | {ci_text} | {r['ks_avg']:.4f} | "
                     f"{_fmt(r.get('user_share'))} | {_fmt(r.get('query_dependence'))} | {sq_text} |")
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['row']} | skipped: {r['skipped']} | | | | | |")
    claims = meta.get("claims") or []
    if claims:
        lines += ["", "Paired differences (the same bootstrap draws for both rows):", "",
                  *CLAIM_HEADER]
        lines += [claim_cells(c) for c in claims]
        lines += train_noise_lines(claims)
    lines += claims_by_scenario(claims, scenarios)
    served = meta.get("served")
    if served:
        lines += ["", f"Served rows: fetched through the gateway of a running stack (`benchmarks/quality/served.py`): "
                      f"model {served['model_version']} ({served.get('model_source')}), {served['users']} users' "
                      f"{served['events']} events replayed through Kafka in {served['replay_s']:.0f} s, "
                      f"GetUserEmbeddings in {served['fetch_s']:.0f} s, {served['date']}."]
        par = served.get("cosine_to_checkpoint")
        if par:
            lines += [f"Cosine between the served and the checkpoint's own embeddings ({par['pairs']} test user x "
                      f"query pairs): mean {par['mean']:.5f}, 1st percentile {par['p01']:.5f}, min {par['min']:.5f}."]
    lines += ["", "Per scenario (test AUC):", "", "| row | " + " | ".join(s.name for s in scenarios) + " |",
              "|" + "---|" * (1 + len(scenarios))]
    for r in sorted(done, key=lambda r: -r["auc_avg"]):
        lines.append(f"| {r['row']} | " + " | ".join(f"{x['auc_mean']:.3f}" for x in r["scenarios"]) + " |")
    return "\n".join(lines) + "\n"


def claims_by_scenario(claims: list[dict], scenarios: list[Scenario]) -> list[str]:
    """Markdown lines: each claim's paired difference per scenario with its 95% interval over test users (does one
    scenario's gain stand out of test-user noise, or only the average?)."""
    claims = [c for c in claims if c.get("by_scenario")]
    if not claims:
        return []
    lines = ["", "Paired differences per scenario (95% interval over test users):", "",
             "| scenario | " + " | ".join(f"{c['better']} - {c['worse']}" for c in claims) + " |",
             "|" + "---|" * (1 + len(claims))]
    for s in scenarios:
        cells = []
        for c in claims:
            d = c["by_scenario"].get(s.name)
            cells.append("" if d is None else f"{d['diff']:+.4f} ({d['low']:+.4f} - {d['high']:+.4f})")
        lines.append(f"| {s.name} | " + " | ".join(cells) + " |")
    return lines


def plot(rows: list[dict], scenarios: list[Scenario], path: Path, meta: dict | None = None):
    """Writes the rows with their intervals to `path`; returns the (closed) figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = sorted([r for r in rows if "skipped" not in r], key=lambda r: r["auc_avg"])
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(done) + 1.6))
    y = np.arange(len(done))
    vals = np.array([r["auc_avg"] for r in done])
    ci = np.array([r.get("auc_ci") or (r["auc_avg"], r["auc_avg"]) for r in done])
    colors = ["tab:blue" if r["row"].startswith(("Q-Anchor", "ablation:", "served:")) else "tab:grey" for r in done]
    # one [2, rows] array: a list of two arrays of one row each trips matplotlib's scalar check
    ax.errorbar(vals, y, xerr=np.vstack([vals - ci[:, 0], ci[:, 1] - vals]), fmt="none", ecolor="black", capsize=3)
    ax.scatter(vals, y, c=colors, zorder=3)
    ax.set_yticks(y, [r["row"] for r in done])
    ax.set_xlabel("average test AUC over the scenarios (linear probe)\nwith its 95% bootstrap interval over test users")
    # title and axis label on two lines: centred on the axes beside long row labels, one line ran past the figure
    dataset = f" {meta['dataset']}" if meta and meta.get("dataset") else ""
    if meta and meta.get("log"):
        dataset = " event-log"
    n = f"\n{meta['n_train']} train / {meta['n_test']} test users" if meta else ""
    # which model the Q-Anchor rows are (a candidate's table looks like the default's otherwise; ablation rows
    # name their own variant)
    model = f"\nQ-Anchor rows: {meta['checkpoint']}" if meta and meta.get("checkpoint") else ""
    ax.set_title(f"User-embedding quality on {len(scenarios)}{dataset} scenarios{n}{model}")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)  # pyplot would keep every figure drawn in one process
    return fig


def _readout_arg(text: str) -> str:
    try:
        parse_readout(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def require_checkpoint(p: argparse.ArgumentParser, flag: str, path: str) -> None:
    """Refuse (argparse error) a path that is not a checkpoint directory, saying what to do."""
    if not (Path(path) / "manifest.json").is_file():
        p.error(f"{flag}: {path} is not a checkpoint directory (no manifest.json); pretrain it first")


def parse_ablations(p: argparse.ArgumentParser, flag: str, items: list[str]) -> tuple[dict, dict]:
    """LABEL=CHECKPOINT[#EMBEDDING] arguments -> ({label: checkpoint}, {label: read-out where given}); argparse
    errors that say what is wrong."""
    ablations, ablation_embedding = {}, {}
    for item in items:
        label, sep, path = item.partition("=")
        path, hash_, embedding = path.partition("#")
        if not sep or not label or not path:
            p.error(f"{flag} wants LABEL=CHECKPOINT[#EMBEDDING], got {item!r}")
        if hash_:
            try:
                parse_readout(embedding)
            except ConfigError as exc:
                p.error(f"{flag} {label}: {exc}")
            ablation_embedding[label] = embedding
        require_checkpoint(p, f"{flag} {label}", path)
        ablations[label] = path
    return ablations, ablation_embedding


def add_population_args(p: argparse.ArgumentParser) -> None:
    """Which model, users and scenarios a run measures (shared with label_budget.py, so both see the same users)."""
    p.add_argument("--dataset", default="ml-1m", choices=["ml-1m", "ml-100k", "offline"],
                   help="a MovieLens world, or `offline`: the platform's event log (--log-root), its users scored on "
                        "the --scenarios file's labels: labels files, or the events after --as-of (docs/own-data.md)")
    p.add_argument("--log-root", default=None,
                   help="offline: the event log folder (default $QANCHOR_EVENT_LOG_DIR, else the local stack's)")
    p.add_argument("--as-of", default=None, metavar="TIME",
                   help="offline: embed each user from the events before TIME (unix seconds or an ISO time, UTC when "
                        "no zone), as the feature store held them then (default: every event in the log)")
    p.add_argument("--checkpoint", default=os.environ.get("QANCHOR_CHECKPOINT"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--embedding", default=None, type=_readout_arg, metavar="READOUT",
                   help="the model rows' embedding: projected (the head's output), hidden (the <USER_EMB> state) or "
                        "hidden@LAYER (that state at decoder layer LAYER; head.layer) (default: the checkpoint's "
                        "config)")
    p.add_argument("--model-users", type=int, default=None, help="alias of --train-users (older CLI)")
    p.add_argument("--train-users", type=int, default=None, help="probe on a seeded subset of N train users")
    p.add_argument("--eval-users", type=int, default=None,
                   help="probe on seeded subsets of N val and N test users (CPU runs of the model rows)")
    p.add_argument("--val-users", type=int, default=None, help="val subset size (default: --eval-users)")
    p.add_argument("--embed-cache", default=None, help="directory to keep model embeddings in (reused by reruns)")
    p.add_argument("--tune-steps", type=int, default=0,
                   help="prompt-tuned row: training.tune steps per scenario on the train users (0 = skip row)")
    from training.config import TUNE_OBJECTIVES

    p.add_argument("--tune-objective", default="prototype", choices=TUNE_OBJECTIVES,
                   help="training.tune objective of the tuned rows: prototype softmax (the paper's) or a logistic "
                        "head started at the linear probe (docs/tuning.md)")
    p.add_argument("--tune-anchor", type=float, default=0.0, metavar="W",
                   help="training.tune anchor_weight of the tuned rows: W * (1 - cos to the zero-shot embedding)")
    from training.tune import DEPTHS

    p.add_argument("--tune-depth", default="input", choices=DEPTHS,
                   help="training.tune depth of the tuned rows: 6 soft tokens after the query (the paper's) or 6 "
                        "learned keys/values at every decoder layer (deep prompt tuning; docs/tuning.md)")
    from training.config import TuneConfig

    p.add_argument("--tune-verdict", type=float, default=TuneConfig.verdict_fraction, metavar="F",
                   help="training.tune verdict_fraction of the tuned rows: the share of its held-out users that make "
                        "no choice and only score the result (default: a tuning job's; 0: one set chooses and "
                        "reports, as before 2026-12-06)")
    p.add_argument("--scenarios", default=None,
                   help="scenario YAML (default: training/data/scenarios.yaml; benchmarks/quality/"
                        "scenarios_unseen.yaml holds eight that no recipe decision saw)")
    p.add_argument("--split", type=float, nargs=3, default=None, metavar=("TRAIN", "VAL", "TEST"),
                   help="the probe's user split as shares (e.g. 0.5 0.1 0.4), for users the checkpoint was not "
                        "pretrained on (a run whose test users include any it was pretrained on is refused): default, "
                        "the salted 0.8 / 0.1 / 0.1 split pretraining uses")
    p.add_argument("--transfer-constants", default="checkpoint", choices=["checkpoint", "dataset"],
                   help="on users the checkpoint was not pretrained on, what standardises the dense user vector: "
                        "the checkpoint's normalisation.json, as ingest serves a new dataset's users (default), or "
                        "this dataset's train users' moments (constants refitted for the new data)")


def add_probe_args(p: argparse.ArgumentParser) -> None:
    """How the rows' probes are fitted (run.py and probe_stability.py)."""
    p.add_argument("--c-choice", default="cv", choices=ev.C_CHOICES,
                   help="how each probe picks C: by 5-fold over train + val users (the default since 2026-12-05: "
                        "stable under bf16-sized changes of the embeddings; docs/quality.md) or on the val users "
                        "(every table written before 2026-12-05 whose command has no --c-choice)")


def checkpoint_dataset(checkpoint: str | None) -> str | None:
    """The dataset a checkpoint was pretrained on (the one its dense-vector constants were fitted on, recorded in
    its manifest); None without a checkpoint or for one trained before the constants shipped."""
    from training.artifact_io import MANIFEST
    from training.normalisation import MANIFEST_KEY

    if not checkpoint:
        return None
    entry = json.loads((Path(checkpoint) / MANIFEST).read_text()).get(MANIFEST_KEY) or {}
    return entry.get("dataset")


def split_fracs(split: list[float] | None, dataset: str, checkpoint: str | None,
                trained_on: str | None) -> tuple[float, float, float]:
    """The world's user split: `--split`, else the default. Refuses (SystemExit, saying what to do) a bad split, or
    one for a checkpoint that does not record what it was pretrained on (`trained_on`: checkpoint_dataset): nothing
    could then tell whether it puts pretraining users among the probe's test users (check_unseen does, by user)."""
    if split is None:
        return WorldConfig.split_fracs
    given = " ".join(f"{f:g}" for f in split)
    if any(f < 0 for f in split) or abs(sum(split) - 1) > 1e-6 or not (split[0] > 0 and split[2] > 0):
        raise SystemExit(f"--split {given}: give three shares (train, val, test) that sum to 1, train and test "
                         "above 0, e.g. --split 0.5 0.1 0.4")
    if checkpoint and trained_on is None:
        raise SystemExit(f"--split {given}: {checkpoint} does not record the dataset it was pretrained on (no "
                         "normalisation entry in its manifest), so a split could put its pretraining users among the "
                         f"probe's test users; record it: python -m training.normalisation --checkpoint {checkpoint} "
                         "--dataset DATASET")
    return (float(split[0]), float(split[1]), float(split[2]))


def pretraining_users(checkpoint: str | None) -> dict[str, str] | None:
    """{user id: fingerprint} of the users a checkpoint was pretrained on (training.normalisation:
    checkpoint_train_users); None without a checkpoint or for one that records neither them nor a MovieLens
    dataset."""
    from training.normalisation import checkpoint_train_users

    return checkpoint_train_users(Path(checkpoint)) if checkpoint else None


def check_unseen(world, checkpoints: dict[str, dict[str, str] | None], split: list[float] | None) -> None:
    """Refuse (SystemExit, saying what to do) a run that would score the probe on users a checkpoint was
    pretrained on: compared by user (training.data.identity: their earliest events), not by dataset name, so another
    `--split` of the checkpoint's own dataset, or its users replayed into an event log under other ids, are caught,
    and another team's log is not taken for the checkpoint's own. `checkpoints`: {path: pretraining_users(path)}."""
    from training.data.identity import fingerprints

    test = fingerprints(world, world.users("test"))
    for path, seen in checkpoints.items():
        if seen is None and split is not None and checkpoint_dataset(path) == world.cfg.dataset:
            raise SystemExit(f"--split: {path} was pretrained on {world.cfg.dataset} before checkpoints recorded their "
                             "users, so nothing can tell whether this split puts some of them among the probe's test "
                             "users; drop --split (the default split is pretraining's)")
        if not seen:
            continue
        seen_as = {fp: uid for uid, fp in seen.items()}
        hit = [(uid, seen_as[fp]) for uid, fp in test.items() if fp in seen_as]
        log.info("unseen_check checkpoint=%s pretraining_users=%d test_users=%d seen=%d", path, len(seen), len(test),
                 len(hit))
        if not hit:
            continue
        example = hit[0][0] if hit[0][0] == hit[0][1] else f"{hit[0][0]}, pretrained on as {hit[0][1]}"
        fix = ("drop --split (the default split is pretraining's: its test users are not its train users) or measure "
               "users the checkpoint never saw (e.g. --dataset ml-100k)" if split is not None else
               "their earliest events are those of users it was pretrained on, under other ids (a replay of its "
               "dataset?): measure users it never saw, or a checkpoint pretrained without them")
        raise SystemExit(f"{len(hit)} of this run's {len(test)} test users are users {path} was pretrained on (e.g. "
                         f"{example}), so the probe would be scored on users the model has seen; {fix}")


def same_users(world, seen: dict[str, str] | None, trained_on: str | None) -> bool:
    """Whether this world's train users are the users the checkpoint was pretrained on (its constants are then
    their moments, which the model rows read anyway): by user where the checkpoint records them, else by dataset
    name (True without a checkpoint)."""
    from training.data.features import train_users
    from training.data.identity import fingerprints

    if seen is None:
        return trained_on in (None, world.cfg.dataset)
    return set(fingerprints(world, train_users(world)).values()) == set(seen.values())


def seen_count(world, seen: dict[str, str] | None) -> int:
    """How many of a world's users the checkpoint was pretrained on (0 where it records none): a transfer run's
    header says so where they are not all new (a grown log: check_unseen keeps them out of the test users)."""
    from training.data.identity import fingerprints

    known = set((seen or {}).values())
    return sum(fp in known for fp in fingerprints(world, world.users()).values())


def transfer_normalisation(checkpoint: str, world: UserWorld):
    """The checkpoint's dense-vector constants for a world it was not trained on: ingest standardises a new
    dataset's users with them (docs/own-data.md), so the model rows read that world as the platform would serve
    it, not with the new users' own moments."""
    from training.data.features import stats_spec
    from training.data.stats import Normalisation
    from training.normalisation import checkpoint_normalisation

    path = checkpoint_normalisation(Path(checkpoint))
    if path is None:
        raise SystemExit(f"{checkpoint} has no normalisation.json, so {world.cfg.dataset} cannot be read the way it "
                         f"would be served; write it: python -m training.normalisation --checkpoint {checkpoint}")
    norm = Normalisation.load(path)
    norm.check(stats_spec(world), world.feature_spec.encoder_dim, str(path))
    return norm


def transfer_of(trained_on: str | None, pretrained_here: bool, dataset: str, fracs: tuple[float, float, float],
                constants: str, seen_here: int = 0) -> dict | None:
    """What a run on users the checkpoint was not pretrained on reads (None when `pretrained_here`: this world's
    train users are its pretraining users, same_users): the log line, the table's header and its JSON meta. Refuses
    (SystemExit) constants other than the checkpoint's where there are no such users: the model rows already read
    the world's own train-user moments, the checkpoint's constants, there. `seen_here`: seen_count."""
    if pretrained_here:
        if constants != "checkpoint":
            raise SystemExit(f"--transfer-constants {constants}: only for users the checkpoint was not pretrained on "
                             f"(this one was pretrained on {trained_on or 'an unrecorded dataset, or none given'}"
                             f"{', these train users' if trained_on else ''}); its rows here already read {dataset}'s "
                             "own train-user moments: drop the option")
        return None
    meta = {"checkpoint_dataset": trained_on, "split": " / ".join(f"{f:g}" for f in fracs), "constants": constants}
    return {**meta, "pretraining_users_read": seen_here} if seen_here else meta


def log_world(args: argparse.Namespace, fracs: tuple[float, float, float], scenarios: list[Scenario]):
    """`--dataset offline`: the platform's event log as a world (training.data.event_world), each user's history
    the events before --as-of (all of them by default), the users restricted to those a scenario labels: from a
    labels file (`given`) or from the events after --as-of (the future labels, training.data.scenarios). Refuses
    (SystemExit, saying what to do) a missing log, a label that reads MovieLens' user table, or future labels
    without --as-of."""
    from training.data.event_log import EVENT_LOG_DIR_ENV, default_log_root
    from training.data.event_world import build_event_world
    from training.data.scenarios import FUTURE_LABELS, USER_TABLE_LABELS
    from training.pretrain import parse_cutoff

    root = Path(args.log_root) if args.log_root else default_log_root()
    args.log_root = str(root)  # the table says which log it read
    if not root.is_dir():
        raise SystemExit(f"--dataset offline reads the event log, and there is none at {root}: start the stack's "
                         f"eventlog service (qanchor stack up eventlog), or pass --log-root DIR / set "
                         f"{EVENT_LOG_DIR_ENV}")
    table = [s.name for s in scenarios if s.label in USER_TABLE_LABELS]
    if table:
        raise SystemExit(f"--dataset offline: scenarios {table} read MovieLens' user table, which an event log does "
                         "not have; give those labels as a file: `label: given`, `params: {file: labels.csv}` (header "
                         "user_id,label; docs/own-data.md)")
    future = [s.name for s in scenarios if s.label in FUTURE_LABELS]
    if future and args.as_of is None:
        raise SystemExit(f"--dataset offline: scenarios {future} label each user from the events after --as-of (the "
                         "model reads those before it); give --as-of TIME, e.g. --as-of 2026-06-01")
    as_of = parse_cutoff(args.as_of, "--as-of")
    world = build_event_world(root, WorldConfig(dataset="offline", split_fracs=fracs, min_history=1, min_future=0),
                              cutoff=np.inf if as_of is None else as_of)
    labelled = {u for s in scenarios for u in s.labels(world, world.users())[0].tolist()}
    for u in [u for u in world.timelines if u not in labelled]:
        del world.timelines[u], world.split[u]
        world.excluded[u] = "no_label"
    if not world.timelines:
        raise SystemExit(f"--dataset offline: no user of the log at {root} has events before --as-of and a label in "
                         f"the scenarios' files (the files' user_id must be the id events were sent with)")
    log.info("log_world root=%s as_of=%s users=%d labelled=%d train=%d val=%d test=%d", root, args.as_of or "end",
             world.n_users, len(world.timelines), *(len(world.users(s)) for s in ("train", "val", "test")))
    return world


def build_context(args: argparse.Namespace, **extra: Any) -> Context:
    """The world (capped to the seeded user subsets), event-text vectors and scenarios of `add_population_args`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from threadpoolctl import threadpool_limits

    # tiny LR fits: BLAS threads only contend on a shared machine. BLAS only: a bare limit also caps OpenMP, and
    # with it torch's intra-op threads (the model rows ran on one core of two until this said user_api="blas")
    threadpool_limits(1, user_api="blas")
    split, trained_on = getattr(args, "split", None), checkpoint_dataset(args.checkpoint)
    fracs = split_fracs(split, args.dataset, args.checkpoint, trained_on)
    scenarios = load_scenarios(Path(args.scenarios) if args.scenarios else None)
    if args.dataset == "offline":
        world = log_world(args, fracs, scenarios)
    else:
        world = build_world(WorldConfig(dataset=args.dataset, split_fracs=fracs))
    seen = {path: pretraining_users(path) for path in [args.checkpoint, *extra.get("ablations", {}).values()] if path}
    check_unseen(world, seen, split)
    vecs = cached_text_vectors(world.texts, args.dataset)
    constants_choice = getattr(args, "transfer_constants", "checkpoint")
    main_seen = seen.get(args.checkpoint)
    transfer = transfer_of(trained_on, same_users(world, main_seen, trained_on), args.dataset, fracs,
                           constants_choice, seen_count(world, main_seen))
    constants = {}
    if transfer:
        if transfer["constants"] == "checkpoint":
            world.normalisation = transfer_normalisation(args.checkpoint, world)
            # each --ablation checkpoint is served with the constants it ships, not the main checkpoint's; one that
            # ships the same constants reads the world itself (no copy, no second dense-vector pass)
            shipped = {label: transfer_normalisation(path, world) for label, path in extra.get("ablations", {}).items()}
            constants = {label: norm for label, norm in shipped.items()
                         if norm.to_json() != world.normalisation.to_json()}
        log.info("transfer checkpoint_dataset=%s dataset=%s split=%r dense_vector_constants=%s",
                 trained_on, args.dataset, transfer["split"], transfer["constants"])
    n_train = args.train_users or args.model_users
    n_val = args.val_users or args.eval_users
    if n_train or n_val or args.eval_users:
        world = CappedWorld(world, {"train": n_train, "val": n_val, "test": args.eval_users})
    return Context(world, vecs, scenarios, args.checkpoint, args.device, n_train, args.tune_steps,
                   embed_cache=args.embed_cache, tune_objective=args.tune_objective,
                   tune_anchor=args.tune_anchor, tune_depth=args.tune_depth, c_choice=getattr(args, "c_choice", "cv"),
                   tune_verdict=getattr(args, "tune_verdict", 0.0), embedding=getattr(args, "embedding", None),
                   transfer=transfer, constants=constants, **extra)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="*", default=None, help=f"subset of rows (default: all); known: {list(ROWS)}")
    p.add_argument("--seeds", type=int, default=1,
                   help="probe refits per scenario; with more than 1, each fits on a seeded draw of the train users")
    p.add_argument("--subsample", type=float, default=0.8, metavar="F",
                   help="with --seeds above 1: the share of train users each draw fits on (default 0.8); the "
                        "train-sample noise a run reports is scaled from it to the full train set")
    p.add_argument("--draws", type=int, default=1000, help="bootstrap draws over test users (0 = no intervals)")
    p.add_argument("--no-same-question", action="store_true",
                   help="skip the model rows' held-out same-question retrieval column (a model pass)")
    add_population_args(p)
    add_probe_args(p)
    p.add_argument("--ablation", action="append", default=[], metavar="LABEL=CHECKPOINT[#EMBEDDING]",
                   help="zero-shot row of a separately pretrained variant (repeatable; "
                        "benchmarks/quality/ablations.sh); CHECKPOINT#hidden or #projected reads it out that way "
                        "or #hidden@LAYER (the same checkpoint's other read-out: a paired difference of the two)")
    p.add_argument("--served", default=None, metavar="FILE",
                   help="add the static and zero-shot rows as the public API served them (benchmarks/quality/"
                        "served.py fetch), their paired differences and their cosine to the checkpoint's own")
    p.add_argument("--compare-constants", action="store_true",
                   help="on users the checkpoint was not pretrained on (its constants served, the default "
                        "--transfer-constants): add the static and zero-shot rows read with constants refitted on "
                        "this dataset's train users, paired with the rows read with the checkpoint's")
    p.add_argument("--out", default=str(RESULTS / "quality"), help="output path stem (.md/.json/.png added)")
    args = p.parse_args(argv)
    if not 0 < args.subsample < 1:
        p.error(f"--subsample {args.subsample}: give a share of the train users between 0 and 1, e.g. 0.8")
    if args.compare_constants and (args.transfer_constants != "checkpoint" or not args.checkpoint):
        p.error("--compare-constants: needs a checkpoint and users it was not pretrained on (e.g. --dataset "
                "ml-100k --split 0.5 0.1 0.4), read with the constants it ships (no --transfer-constants)")
    if args.served:
        if not Path(args.served).is_file():
            p.error(f"--served {args.served}: no such file (benchmarks/quality/served.py fetch writes it)")
        ROWS[SERVED_STATIC], ROWS[SERVED_ZERO_SHOT] = row_served_static, row_served_zero_shot
    ablations, ablation_embedding = parse_ablations(p, "--ablation", args.ablation)
    for label in ablations:
        ROWS[ABLATION_PREFIX + label] = row_ablation(label)
    ctx = build_context(args, ablations=ablations, ablation_embedding=ablation_embedding,
                        subsample=1.0 if args.seeds == 1 else args.subsample,
                        same_question=not args.no_same_question, served=args.served)
    if args.dataset == "offline" and ctx.same_question:
        log.info("same_question skipped: an event log world has no future windows to ask pretraining's questions of")
        ctx.same_question = False
    if args.compare_constants:
        if not ctx.transfer:
            raise SystemExit(f"--compare-constants: {args.checkpoint} was pretrained on these train users, so its "
                             "constants are their moments: there is nothing to compare; measure users it never saw "
                             "(e.g. --dataset ml-100k --split 0.5 0.1 0.4)")
        ctx.constants[REFIT] = None  # refitted on this world's train users (training.data.features)
        ctx.transfer["compare"] = True
        ROWS[REFIT_STATIC], ROWS[REFIT_ZERO_SHOT] = row_refit_static, row_refit_zero_shot
    world, scenarios = ctx.world, ctx.scenarios
    seeds = tuple(range(args.seeds))
    base = list(ROWS) if args.rows is None else args.rows  # `--rows` with no names: only the --ablation rows
    names = list(dict.fromkeys(base + [ABLATION_PREFIX + a for a in ablations]
                               + ([SERVED_STATIC, SERVED_ZERO_SHOT] if args.served else [])
                               + ([REFIT_STATIC, REFIT_ZERO_SHOT] if args.compare_constants else [])))
    rows = [run_row(n, ctx, seeds) for n in names]
    claims = []
    if args.draws:
        boot = RowBootstrap(rows, draws=args.draws)
        for r in rows:
            if "skipped" not in r:
                r["auc_ci"] = boot.row_interval(r["row"])
        pairs = (claim_pairs(CLAIMS, ablations) + (SERVED_CLAIMS if args.served else [])
                 + (REFIT_CLAIMS if args.compare_constants else []))
        claims = paired_claims(rows, pairs, boot, subsample=ctx.subsample)
    for r in rows:
        r.pop("probes", None)
    meta = {"dataset": args.dataset, "scenarios": args.scenarios or "training/data/scenarios.yaml",
            "n_train": len(world.users("train")), "n_val": len(world.users("val")),
            "n_test": len(world.users("test")), "checkpoint": args.checkpoint, "tune_steps": args.tune_steps,
            "tune_objective": args.tune_objective, "tune_anchor": args.tune_anchor, "tune_depth": args.tune_depth,
            "tune_verdict": args.tune_verdict, "ablations": ablations, "c_choice": args.c_choice,
            "embedding": _embedding_of(ctx, "trained") if args.checkpoint else None,
            "tune_heldout": ctx.tune_log, "draws": args.draws, "claims": claims,
            "served": served_meta(ctx) if args.served else None,
            "seeds": len(seeds), "subsample": ctx.subsample, "transfer": ctx.transfer,
            "log": {"root": args.log_root,
                    "as_of": f"the events before {args.as_of}" if args.as_of else "every event the log holds"}
            if args.dataset == "offline" else None,
            "machine": describe(),
            "date": utc_now(), "command": command_line("benchmarks/quality/run.py", argv)}
    meta = json.loads(json.dumps(meta).replace(str(ROOT) + "/", ""))  # results name checkout-relative paths only
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = markdown(rows, scenarios, meta)
    out.with_suffix(".md").write_text(md + "\n" + footer(meta["machine"], meta["date"], meta["command"]) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    plot(rows, scenarios, out.with_suffix(".png"), meta)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
