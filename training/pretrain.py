"""Pretraining: contrastive (InfoNCE, anchor vs answer) + NTP on UserU-style pairs of a MovieLens world.

    python -m training.pretrain --config tiny --dataset ml-100k --steps 30 --out runs/tiny
    python -m training.pretrain --config smollm2 --dataset ml-1m --steps 2000 --out runs/smollm2 --device cuda
    torchrun --nproc-per-node 2 -m training.pretrain --config smollm2 ...     # DDP, negatives gathered

One optimiser step = `optim.batch_size` users per rank, one pair each (a user never meets itself as a negative).
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
from safetensors.torch import load_file, save_file

from training.artifacts import checkpoint_id, init_from_checkpoint, load_checkpoint, save_checkpoint
from training.config import QAnchorConfig, SourceConfig, load_config
from training.data.collate import UserCollator
from training.data.encoder import cached_text_vectors
from training.data.pairs import Pair, build_pairs
from training.data.world import UserWorld, WorldConfig, build_world
from training.losses import contrastive_loss, grad_cache_step
from training.model.embedder import QAnchorModel
from training.model.inputs import UserBatch

log = logging.getLogger(__name__)


# ---- setup ---------------------------------------------------------------------------------------------------
def align_config(cfg: QAnchorConfig, world: UserWorld) -> QAnchorConfig:
    """The model's prefix layout must match the data: sources and K from sources.yaml, tabular width."""
    cfg.input.sources = [SourceConfig(s.name, s.k) for s in world.sources.sources]
    cfg.input.d_enc = world.sources.encoder_dim
    cfg.input.d_tab = world.sources.tabular_dim
    return cfg


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


class PairSampler:
    """Batch `step` is a pure function of (seed, step, rank): resuming replays the same data.

    `group` (optim.question_group): 1 draws one pair per user, any question. g > 1 draws the batch as groups of g
    distinct users answering the *same* question (topics picked in proportion to how many users have them), so an
    anchor's in-batch negatives include g - 1 answers to its own question: only the user can tell them apart.
    """

    def __init__(self, pairs: list[Pair], seed: int, group: int = 1) -> None:
        self.by_user: dict[int, list[Pair]] = {}
        self.by_topic: dict[str, list[Pair]] = {}
        for p in pairs:
            self.by_user.setdefault(p.user, []).append(p)
            self.by_topic.setdefault(p.topic, []).append(p)
        self.users = sorted(self.by_user)
        self.seed, self.group = seed, group
        self.topics = sorted(t for t, ps in self.by_topic.items() if len(ps) >= group)
        if group > 1 and not self.topics:
            raise ValueError(f"no question is answered by {group} users; lower optim.question_group")

    def batch(self, step: int, size: int, rank: int = 0, world_size: int = 1) -> list[Pair]:
        rng = np.random.default_rng([self.seed, step])
        if self.group > 1:
            return self._grouped(rng, size * world_size)[rank * size:(rank + 1) * size]  # disjoint across ranks
        n = min(size * world_size, len(self.users))
        picked = rng.choice(len(self.users), n, replace=False)[rank::world_size][:size]  # disjoint across ranks
        out = []
        for i in picked:
            ps = self.by_user[self.users[int(i)]]
            out.append(ps[int(rng.integers(len(ps)))])
        return out

    def _grouped(self, rng: np.random.Generator, n: int) -> list[Pair]:
        """Up to n pairs in whole groups (fewer only when no question has `group` users left to draw)."""
        weight = np.array([len(self.by_topic[t]) for t in self.topics], dtype=float)
        out: list[Pair] = []
        used: set[int] = set()
        while len(out) + self.group <= n and weight.sum() > 0:
            t = int(rng.choice(len(self.topics), p=weight / weight.sum()))
            cands = [p for p in self.by_topic[self.topics[t]] if p.user not in used]
            if len(cands) < self.group:  # this question's users are already in the batch: never draw it again
                weight[t] = 0.0
                continue
            for i in rng.choice(len(cands), self.group, replace=False):
                out.append(cands[int(i)])
                used.add(cands[int(i)].user)
        return out


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


# ---- held-out evaluation ---------------------------------------------------------------------------------------
class HeldOutEval:
    """Fixed pairs of held-out (val) users, scored in eval mode: the learning curve that can be compared across steps.

    The training loss is a poor curve: every step sees other users, and the false-negative filter's mask is a
    function of the model (as s(u_i, v_i) grows, negatives that were dropped come back in, so the objective can rise
    while retrieval improves). The held-out numbers: `val_contrastive` (the training objective on these pairs),
    `val_infonce` (plain InfoNCE anchor -> answer, no filter, no extra terms), `val_acc1` (the true answer is the
    nearest of all M answers), `val_ntp`, and `val_gap` (mean s(u_i, v_i) minus mean s(u_i, v_j)).
    """

    def __init__(self, world: UserWorld, collate: UserCollator, n_pairs: int, top_k: int, seed: int = 0,
                 same_question: int = 16) -> None:
        pairs = build_pairs(world, world.users("val"), top_k=top_k)
        sampler = PairSampler(pairs, seed)
        self.pairs = sampler.batch(10**9, n_pairs)  # one pair per user, a fixed draw
        self.users = collate.batch([x.user for x in self.pairs])
        # `val_acc1_same_q`: groups of `same_question` users answering one question; retrieval within a group can
        # only use the user (chance 1/same_question). The plain draw mixes questions, so acc@1 there also credits
        # matching the question to its kind of answer. (build_pairs gives a user one pair per topic at most.)
        largest = max(len(ps) for ps in sampler.by_topic.values())
        self.group = min(same_question, largest)  # small worlds: smaller groups
        self.grouped = PairSampler(pairs, seed, group=self.group).batch(10**9, n_pairs) if self.group > 1 else []
        self.grouped_users = collate.batch([x.user for x in self.grouped]) if self.grouped else None

    @staticmethod
    def _towers(model: QAnchorModel, users: UserBatch, pairs: list[Pair], chunk: int, ctx):
        anchors, answers, ntp_sum, ntp_tokens = [], [], 0.0, 0
        for start in range(0, len(pairs), chunk):
            sl = slice(start, start + chunk)
            with ctx:
                out = model.pretrain_forward(users[sl].to(model.device), [x.query for x in pairs[sl]],
                                             [x.answer for x in pairs[sl]])
            anchors.append(out.anchor.float())
            answers.append(out.answer.float())
            ntp_sum += float(out.ntp_sum)
            ntp_tokens += out.ntp_tokens
        return torch.cat(anchors), torch.cat(answers), ntp_sum / max(ntp_tokens, 1)

    def _same_question(self, model: QAnchorModel, cfg: QAnchorConfig, ctx) -> dict[str, float]:
        if not self.grouped:
            return {}
        u, d, _ = self._towers(model, self.grouped_users, self.grouped, cfg.optim.chunk_size, ctx)
        g = self.group  # each block of g rows answers one question: retrieval inside a block needs the user
        sim = torch.einsum("kid,kjd->kij", u.view(-1, g, u.shape[-1]), d.view(-1, g, d.shape[-1]))  # [K, g, g]
        target = torch.arange(g, device=sim.device).expand(sim.shape[0], -1)
        off = ~torch.eye(g, dtype=torch.bool, device=sim.device).expand_as(sim)
        return {"val_acc1_same_q": float((sim.argmax(dim=2) == target).float().mean()),
                "val_gap_same_q": float(sim.diagonal(dim1=1, dim2=2).mean() - sim[off].mean()),
                "val_same_q_group": float(g)}

    @torch.no_grad()
    def __call__(self, model: QAnchorModel, cfg: QAnchorConfig, autocast: torch.autocast | None) -> dict[str, float]:
        was_training = model.training
        model.eval()
        ctx = autocast or torch.autocast("cpu", enabled=False)
        u, d, ntp = self._towers(model, self.users, self.pairs, cfg.optim.chunk_size, ctx)
        same_q = self._same_question(model, cfg, ctx)
        model.train(was_training)
        sim = u @ d.T  # [M, M]
        target = torch.arange(len(u), device=sim.device)
        off = ~torch.eye(len(u), dtype=torch.bool, device=sim.device)
        return {**same_q, "val_contrastive": float(contrastive_loss(u, d, cfg.loss)),
                "val_infonce": float(torch.nn.functional.cross_entropy(sim / cfg.loss.tau, target)),
                "val_acc1": float((sim.argmax(dim=1) == target).float().mean()),
                "val_gap": float(sim.diagonal().mean() - sim[off].mean()),
                "val_ntp": ntp, "val_pairs": float(len(u))}


# ---- run state: checkpoint (training.artifacts) + optimiser/schedule for exact resume ------------------------
# Optimiser moments are tensors, so they go to safetensors too (keyed by parameter name, never pickled). The
# trainer dir is written after the checkpoint and records its id: a crash between the two is caught on resume.
def save_trainer_state(out: Path, model, cfg: QAnchorConfig, opt: torch.optim.Optimizer, sched, step: int,
                       extra: dict | None = None) -> None:
    ckpt = save_checkpoint(out / "checkpoint", model, cfg, extra={"step": step, **(extra or {})})
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if not st:
                continue
            for k, v in st.items():
                tensors[f"{names[id(p)]}::{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu()
    tmp = out / ".trainer.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "scheduler": sched.state_dict(),
                                                 "checkpoint_id": checkpoint_id(ckpt)}, indent=1))
    final = out / "trainer"
    if final.exists():
        for f in final.iterdir():
            f.unlink()
        final.rmdir()
    tmp.rename(final)
    log.info("checkpoint_saved step=%d dir=%s", step, ckpt)


def load_trainer_state(out: Path, model, opt: torch.optim.Optimizer, sched, device) -> int:
    """Load weights + optimiser + schedule into the given objects; returns the step to continue from."""
    trainer, ckpt = out / "trainer", out / "checkpoint"
    if not (trainer / "state.json").is_file() or not ckpt.is_dir():
        raise FileNotFoundError(f"nothing to resume in {out}: expected checkpoint/ and trainer/; drop --resume "
                                "to start a new run")
    state = json.loads((trainer / "state.json").read_text())
    if state["checkpoint_id"] != checkpoint_id(ckpt):
        raise RuntimeError(f"{trainer} belongs to another checkpoint (the run stopped while saving); "
                           "start over or restore a consistent pair")
    loaded, _, extra = load_checkpoint(ckpt, device="cpu")
    model.load_trainable_state_dict({k: v.to(device) for k, v in loaded.trainable_state_dict().items()})
    del loaded
    tensors = load_file(str(trainer / "optimizer.safetensors"))
    params = dict(model.named_parameters())
    for key, v in tensors.items():
        name, k = key.split("::")
        opt.state[params[name]][k] = v.to(device) if k != "step" else v
    sched.load_state_dict(state["scheduler"])
    assert extra.get("step") == state["step"], (extra, state["step"])
    return int(state["step"])


def plot_curve(metrics: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    rows = [r for r in every if "contrastive" in r]
    evals = [r for r in every if "val_acc1" in r]
    if not rows and not evals:
        return
    fig, ax = plt.subplots(1, 3, figsize=(15, 3.5))
    steps = [r["step"] for r in rows]
    for k in ("contrastive", "ntp"):
        ax[0].plot(steps, [r[k] for r in rows], label=f"train {k}")
    for k in ("val_contrastive", "val_infonce", "val_ntp"):
        ax[0].plot([r["step"] for r in evals], [r[k] for r in evals], marker="o", label=k)
    ax[0].set_xlabel("step"), ax[0].set_ylabel("loss"), ax[0].legend(fontsize=7)
    ax[1].plot([r["step"] for r in evals], [r["val_acc1"] for r in evals], marker="o", label="val acc@1")
    same = [r for r in evals if "val_acc1_same_q" in r]
    if same:  # within groups of users answering one question: only the user can separate them
        ax[1].plot([r["step"] for r in same], [r["val_acc1_same_q"] for r in same], marker="s",
                   label=f"val acc@1, same question (chance {1 / same[0]['val_same_q_group']:.3f})")
    if evals:
        chance = 1.0 / evals[0]["val_pairs"]
        ax[1].axhline(chance, ls="--", c="grey", label=f"chance {chance:.3f}")
    ax[1].set_xlabel("step"), ax[1].set_ylabel("held-out retrieval acc@1"), ax[1].legend(fontsize=7)
    ax[2].plot(steps, [r["lr"] for r in rows])
    ax[2].set_xlabel("step"), ax[2].set_ylabel("learning rate")
    fig.tight_layout()
    fig.savefig(png, dpi=100)


# ---- loop ----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="smollm2", help="preset (tiny, smollm2, qwen2.5-0.5b) or YAML path")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override")
    p.add_argument("--dataset", default="ml-1m", choices=["ml-1m", "ml-100k"])
    p.add_argument("--steps", type=int, default=None, help="override optim.steps")
    p.add_argument("--batch-size", type=int, default=None, help="override optim.batch_size (users per rank)")
    p.add_argument("--lr", type=float, default=None, help="override optim.lr")
    p.add_argument("--max-users", type=int, default=None, help="keep the first N users (quick runs)")
    p.add_argument("--top-k", type=int, default=10, help="QA pairs per user")
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
    for key, val in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr)):
        if val is not None:
            overrides.append(f"optim.{key}={val}")
    cfg = load_config(args.config, overrides)
    world = build_world(WorldConfig(dataset=args.dataset, max_users=args.max_users))
    cfg = align_config(cfg, world)
    o = cfg.optim
    torch.manual_seed(o.seed + rank)
    vecs = cached_text_vectors(world.texts, args.dataset, progress=rank == 0)
    pairs = build_pairs(world, world.users("train"), top_k=args.top_k)  # train users only: val/test stay unseen
    sampler, collate = PairSampler(pairs, o.seed, group=o.question_group), UserCollator(world, vecs)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = QAnchorModel(cfg).to(device)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
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
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    metrics_path = out_dir / "metrics.jsonl"
    if rank == 0 and not args.resume:
        metrics_path.write_text("")
    from tqdm.auto import tqdm

    held_out = HeldOutEval(world, collate, args.eval_pairs, args.top_k, o.seed) if args.eval_every > 0 else None

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
        users = collate.batch([x.user for x in batch]).to(device)
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
                save_trainer_state(out_dir, model, cfg, opt, sched, step + 1, extra=provenance)
    if rank == 0:
        plot_curve(metrics_path, out_dir / "curve.png")
        log.info("pretrain_done steps=%d out=%s", o.steps, out_dir)
    if world_size > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
