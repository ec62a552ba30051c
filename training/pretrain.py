"""Pretraining: contrastive (InfoNCE, anchor vs answer) + NTP on UserU-style pairs of a user world.

    python -m training.pretrain --config tiny --dataset ml-100k --steps 30 --out runs/tiny
    python -m training.pretrain --config tiny --dataset offline --log-root var/eventlog --steps 30 --out runs/own
    python -m training.pretrain --config smollm2 --dataset ml-1m --steps 2000 --out runs/smollm2 --device cuda
    torchrun --nproc-per-node 2 -m training.pretrain --config smollm2 ...     # DDP, negatives gathered

Worlds: `ml-1m` / `ml-100k` read MovieLens from its package (training.data.world, pairs from
training.data.pairs); `offline` reads the platform's own event log (training.data.event_world: any team's raw events
as ingest validated them, pairs from generic event facts in training.data.event_pairs; docs/own-data.md).

One optimiser step = `optim.batch_size` pairs per rank: one pair per user (a user never meets itself as a negative),
except with `optim.questions_per_user` q > 1, where each user of a grouped batch answers q questions (its own
answers to other questions are then negatives that only the question beats; training.data.sampler).
The step is GradCache (training.losses explains it) extended across ranks: pass-1 embeddings of every rank are
all-gathered, so each anchor sees world_size * batch_size - 1 negatives; gradients are then summed over ranks.
Output dir: checkpoint/ (training.artifacts, safetensors), trainer/ (optimiser + schedule + data position, for
--resume), metrics.jsonl, curve.png.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from training.artifacts import checkpoint_id, init_from_checkpoint, load_checkpoint
from training.config import QAnchorConfig, SourceConfig, load_config
from training.curves import plot_curve
from training.data.collate import UserCollator
from training.data.encoder import cached_text_vectors
from training.data.event_log import EVENT_LOG_DIR_ENV, default_log_root, parse_time
from training.data.event_pairs import build_event_pairs
from training.data.event_world import EventWorld, build_event_world
from training.data.features import fit_normalisation, train_users
from training.data.identity import fingerprints
from training.data.pairs import build_pairs
from training.data.sampler import PairSampler
from training.data.world import UserWorld, WorldConfig, build_world
from training.heldout import HeldOutEval
from training.losses import grad_cache_step
from training.model.embedder import QAnchorModel
from training.model.inputs import UserBatch
from training.precision import apply_precision, resolve_precision
from training.precision import autocast as precision_autocast
from training.run_state import load_trainer_state, save_trainer_state

log = logging.getLogger(__name__)

# data.tie_shuffle's draws: a stream of their own, a function of (seed, step), so a resumed run reads the same orders
TIE_SHUFFLE_STREAM = 7


# ---- setup ---------------------------------------------------------------------------------------------------
def align_config(cfg: QAnchorConfig, world: "UserWorld | EventWorld") -> QAnchorConfig:
    """The model's prefix layout must match the data: sources and K from sources.yaml, tabular width."""
    cfg.input.sources = [SourceConfig(s.name, s.k) for s in world.sources.sources]
    cfg.input.d_enc = world.sources.encoder_dim
    cfg.input.d_tab = world.sources.tabular_dim
    return cfg


def parse_cutoff(text: str | None, flag: str = "--cutoff") -> float | None:
    """`flag`'s value: unix seconds or an ISO time (a time without a zone is UTC) -> unix seconds."""
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise SystemExit(f"{flag}: {exc}") from None


def load_pretrained(checkpoint: str | Path, device: str = "cpu") -> QAnchorModel:
    """A pretrained model for evaluation (benchmarks/quality uses this)."""
    model, _, _ = load_checkpoint(checkpoint, device=device)
    return model


def lr_lambda(step: int, warmup: int, total: int, schedule: str) -> float:
    """Linear warm-up to 1, then cosine to 0 (or constant)."""
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(total - warmup, 1))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: QAnchorModel, lr: float, new_scale: float) -> list[dict]:
    """Trainable parameters in two groups: LoRA factors at `lr`, parts trained from scratch (adapters, head,
    added-token rows, identity views) at `lr * new_scale`. A group that would be empty is left out."""
    lora, new = [], []
    for name, q in model.named_parameters():
        if q.requires_grad:
            (lora if "lora_" in name else new).append(q)
    groups = [{"params": lora, "lr": lr, "name": "lora"}, {"params": new, "lr": lr * new_scale, "name": "new"}]
    return [g for g in groups if g["params"]]


# ---- one step ------------------------------------------------------------------------------------------------
def _gather(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows, this rank's rows replaced by `x` itself (so gradient flows to them). -> ([R*B, D], offset)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    rank = dist.get_rank()
    parts[rank] = x
    return torch.cat(parts), rank * x.shape[0]


def _all_sum(value: float, device: torch.device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def train_step(model: QAnchorModel, users: UserBatch, queries: list[str], answers: list[str],
               cfg: QAnchorConfig, autocast: torch.autocast | None) -> dict[str, float]:
    """Accumulate into .grad the gradient of the global-batch loss (GradCache across chunks and ranks)."""
    device = model.device
    ddp = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    stats = grad_cache_step(model.pretrain_forward, users, queries, answers, cfg.loss, cfg.optim.chunk_size,
                            autocast=autocast, gather=_gather if ddp else None,
                            all_sum=(lambda v: _all_sum(v, device)) if ddp else None)
    if ddp:
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)  # sum: each rank holds its rows' part of one global loss
    stats.pop("chunks", None)
    return stats


# ---- loop ----------------------------------------------------------------------------------------------------
def keep_metrics_through(path: Path, step: int) -> int:
    """On resume: keep the rows of `path` up to the checkpoint's `step` and drop the rest (what a killed run logged
    after its last checkpoint, and a line cut off mid-write), so the resumed run's rows are not written twice.
    Returns how many lines were dropped."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if int(row.get("step", 0)) <= step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:  # written aside and renamed: a crash here leaves the old file, never half of one
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(x + "\n" for x in kept))
        tmp.replace(path)
    return dropped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="smollm2", help="preset (tiny, smollm2, qwen2.5-0.5b) or YAML path")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override")
    p.add_argument("--dataset", default="ml-1m", choices=["ml-1m", "ml-100k", "offline"],
                   help="a MovieLens world, or `offline`: the platform's event log (--log-root)")
    p.add_argument("--log-root", default=None,
                   help=f"offline: the event log folder (default ${EVENT_LOG_DIR_ENV}, else the local stack's "
                        "$QANCHOR_STATE_DIR/eventlog: where the eventlog service writes and Feast reads)")
    p.add_argument("--cutoff", default=None, metavar="TIME",
                   help="offline: one time cut for every user, unix seconds or an ISO time (UTC when no zone); "
                        "default: each user's own cut at data.history_frac of their events")
    p.add_argument("--steps", type=int, default=None, help="override optim.steps")
    p.add_argument("--batch-size", type=int, default=None, help="override optim.batch_size (users per rank)")
    p.add_argument("--lr", type=float, default=None, help="override optim.lr")
    p.add_argument("--max-users", type=int, default=None, help="keep the first N users (quick runs)")
    p.add_argument("--min-history", type=int, default=WorldConfig.min_history,
                   help="users with fewer history-window events are left out")
    p.add_argument("--min-future", type=int, default=WorldConfig.min_future,
                   help="users with fewer future-window events are left out")
    p.add_argument("--top-k", type=int, default=None, help="QA pairs per user (override data.top_k)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint + OUT/trainer")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start from a checkpoint's weights (fresh optimiser, step 0): a second stage with other "
                        "optim/loss settings, e.g. --set optim.question_group=4")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--eval-every", type=int, default=25, help="score the held-out pairs every N steps (0 = off)")
    p.add_argument("--eval-pairs", type=int, default=64, help="held-out val users scored (one pair each)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device(args.device)
    if world_size > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    overrides = list(args.set)
    for key, val in (("optim.steps", args.steps), ("optim.batch_size", args.batch_size), ("optim.lr", args.lr),
                     ("data.top_k", args.top_k)):
        if val is not None:
            overrides.append(f"{key}={val}")
    cfg = load_config(args.config, overrides)
    if args.dataset == "offline":
        args.log_root = Path(args.log_root) if args.log_root else default_log_root()
        if not args.log_root.is_dir():
            p.error(f"--dataset offline reads the event log, and there is none at {args.log_root}: start the stack's "
                    f"eventlog service (qanchor stack up eventlog), or pass --log-root DIR / set {EVENT_LOG_DIR_ENV}")
        world = build_event_world(args.log_root, WorldConfig(dataset="offline", max_users=args.max_users,
                                                             min_history=args.min_history,
                                                             min_future=args.min_future),
                                  cutoff=parse_cutoff(args.cutoff))
        pair_builder = build_event_pairs
    else:
        world = build_world(WorldConfig(dataset=args.dataset, max_users=args.max_users,
                                        min_history=args.min_history, min_future=args.min_future))
        pair_builder = build_pairs
    cfg = align_config(cfg, world)
    o = cfg.optim
    torch.manual_seed(o.seed + rank)
    vecs = cached_text_vectors(world.texts, args.dataset, progress=rank == 0)
    # The dense user vector's constants ship with every checkpoint: ingest standardises raw events' statistics
    # with them.
    provenance_data = {"dataset": args.dataset, "max_users": args.max_users, "train_users": len(train_users(world)),
                       "split_salt": world.cfg.split_salt, "min_history": world.cfg.min_history,
                       "min_future": world.cfg.min_future}
    if args.dataset == "offline":
        provenance_data.update(log_root=str(args.log_root), cutoff=world.cutoff)
    # ... and the fingerprints of the users they were fitted on, who are the users pretraining reads: an evaluation
    # refuses to test on them (training.data.identity)
    normalisation = (fit_normalisation(world, vecs), provenance_data, fingerprints(world, train_users(world)))
    # train users only: val/test stay unseen
    pairs = pair_builder(world, world.users("train"), **cfg.data.pair_options())
    sampler, collate = PairSampler(pairs, o.seed, group=o.question_group, group_from=o.question_group_from,
                           schedule=o.group_schedule(), per_user=o.questions_per_user), UserCollator(world, vecs)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = QAnchorModel(cfg).to(device)
    dtype = resolve_precision(cfg.backbone.compute, device)
    apply_precision(model, dtype)  # frozen backbone in bf16 where the hardware runs it natively
    autocast = precision_autocast(dtype, device) if dtype != torch.float32 else None
    groups = param_groups(model, o.lr, o.new_params_lr_scale)
    params = [q for g in groups for q in g["params"]]
    opt = torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, o.warmup_steps, o.steps, o.schedule))
    start, provenance = 0, {}
    if args.init_from:
        provenance = {"init_from": str(args.init_from), "init_from_id": checkpoint_id(args.init_from)}
    if args.init_from and not args.resume:  # on resume the run's own checkpoint already holds these weights
        init_from_checkpoint(model, args.init_from)
        log.info("init_from checkpoint=%s id=%s", args.init_from, provenance["init_from_id"][:12])
    if args.resume:
        start = load_trainer_state(out_dir, model, opt, sched, device)
        log.info("resumed step=%d out=%s", start, out_dir)
    metrics_path = out_dir / "metrics.jsonl"
    if rank == 0 and not args.resume:
        metrics_path.write_text("")
    elif rank == 0:
        dropped = keep_metrics_through(metrics_path, start)
        if dropped:
            log.info("metrics_truncated path=%s dropped=%d after_step=%d", metrics_path, dropped, start)
    from tqdm.auto import tqdm

    held_out = HeldOutEval(world, collate, args.eval_pairs, cfg.data, o.seed, pair_builder=pair_builder) \
        if args.eval_every > 0 else None

    def evaluate(step: int) -> None:
        if held_out is None or rank != 0:
            return
        ev = held_out(model, cfg, autocast)
        log.info("eval step=%d %s", step, " ".join(f"{k}={v:.4f}" for k, v in ev.items()))
        with metrics_path.open("a") as f:
            f.write(json.dumps({"step": step, **ev}) + "\n")

    if start == 0:
        evaluate(0)
    bar = tqdm(range(start, o.steps), desc="pretrain", disable=rank != 0, initial=start, total=o.steps)
    model.train()
    for step in bar:
        t0 = time.perf_counter()
        batch = sampler.batch(step, o.batch_size, rank, world_size)
        ties = np.random.default_rng((o.seed, step, TIE_SHUFFLE_STREAM)) if cfg.data.tie_shuffle else None
        users = collate.batch([x.user for x in batch], ties).to(device)
        opt.zero_grad(set_to_none=True)
        stats = train_step(model, users, [x.query for x in batch], [x.answer for x in batch], cfg, autocast)
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, o.grad_clip))
        opt.step()
        sched.step()
        stats.update(step=step + 1, lr=sched.get_last_lr()[0], grad_norm=gnorm, seconds=time.perf_counter() - t0,
                     n_future=sum(x.kind == "future" for x in batch))
        if rank == 0:
            bar.set_postfix(loss=f"{stats['loss']:.3f}", con=f"{stats['contrastive']:.3f}", ntp=f"{stats['ntp']:.3f}")
            if (step + 1) % args.log_every == 0 or step + 1 == o.steps:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(stats) + "\n")
            if args.eval_every > 0 and ((step + 1) % args.eval_every == 0 or step + 1 == o.steps):
                evaluate(step + 1)
            if (step + 1) % args.save_every == 0 or step + 1 == o.steps:
                save_trainer_state(out_dir, model, cfg, opt, sched, step + 1, extra=provenance,
                                   normalisation=normalisation)
    if rank == 0:
        plot_curve(metrics_path, out_dir / "curve.png")
        log.info("pretrain_done steps=%d out=%s", o.steps, out_dir)
    if world_size > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
