"""Held-out evaluation during pretraining: fixed val pairs scored every N steps (the curve to read)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from training.config import DataConfig, QAnchorConfig
from training.data.collate import UserCollator
from training.data.pairs import Pair, build_pairs
from training.data.sampler import PairSampler
from training.data.world import UserWorld
from training.evaluate import linear_cka, variance_shares
from training.losses import contrastive_loss
from training.model.embedder import QAnchorModel
from training.model.inputs import UserBatch
from training.model.suffix import ScenarioSpec


class HeldOutEval:
    """Fixed pairs of held-out (val) users, scored in eval mode: the learning curve that can be compared across steps.

    The training loss is a poor curve: every step sees other users, and the false-negative filter's mask is a
    function of the model (as s(u_i, v_i) grows, negatives that were dropped come back in, so the objective can rise
    while retrieval improves). The held-out numbers: `val_contrastive` (the training objective on these pairs),
    `val_infonce` (plain InfoNCE anchor -> answer, no filter, no extra terms), `val_acc1` (the true answer is the
    nearest of all M answers), `val_ntp`, and `val_gap` (mean s(u_i, v_i) minus mean s(u_i, v_j)); `val_anchor_cka`
    / `val_answer_cka` (how little the user geometry changes between future questions, anchors and answers).
    """

    def __init__(self, world: UserWorld, collate: UserCollator, n_pairs: int, data: DataConfig, seed: int = 0,
                 same_question: int = 16, split: str = "val", pair_builder: Callable[..., list[Pair]] = build_pairs,
                 geometry_users: int = 48) -> None:
        # `pair_builder`: build_pairs for a MovieLens world, training.data.event_pairs.build_event_pairs for the log's
        pairs = pair_builder(world, world.users(split), **data.pair_options())
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
        # `val_anchor_cka` / `val_answer_cka`: users who answer every future question (the summary and each aspect),
        # each question's anchors (and answers) of those users as one matrix; the mean linear CKA between two
        # questions' matrices says how much the user geometry changes with the question (1: not at all)
        future: dict[int, dict[str, Pair]] = {}
        for x in pairs:
            if x.kind == "future":
                future.setdefault(x.user, {})[x.topic] = x
        topics = sorted({t for by in future.values() for t in by})
        full = [u for u in sorted(future) if len(future[u]) == len(topics)][:geometry_users]
        self.geometry = [[future[u][t] for u in full] for t in topics] if len(full) >= 8 and len(topics) >= 2 else []
        self.geometry_users = collate.batch(full) if self.geometry else None

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

    def same_question(self, model: QAnchorModel, cfg: QAnchorConfig, autocast=None) -> dict[str, float]:
        """Only the same-question retrieval (the quality benchmark's diagnostic column), in eval mode."""
        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = self._same_question(model, cfg, autocast or torch.autocast("cpu", enabled=False))
        model.train(was_training)
        return out

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

    def _user_share(self, model: QAnchorModel, cfg: QAnchorConfig, ctx, n_queries: int = 8) -> dict[str, float]:
        """Share of the embeddings' variance that is the user (users x questions decomposition, as in
        benchmarks/quality): the held-out users under the first `n_queries` distinct questions of the eval draw."""
        queries = list(dict.fromkeys(p.query for p in self.pairs))[:n_queries]
        embs = []
        for start in range(0, len(self.pairs), cfg.optim.chunk_size):
            with ctx:
                cache = model.encode_prefix(self.users[start:start + cfg.optim.chunk_size].to(model.device))
                embs.append(model.embed(cache, [ScenarioSpec(q) for q in queries]).float().cpu())
        shares = variance_shares(torch.cat(embs).numpy())  # [M, Q, D]
        return {"val_user_share": shares["user"], "val_scenario_share": shares["scenario"]}

    def _question_geometry(self, model: QAnchorModel, cfg: QAnchorConfig, ctx) -> dict[str, float]:
        """Each user's prefix once, every future question of theirs from that cache (their own wordings), answers
        through the semantic tower alone: no NTP, no prefix re-run per question."""
        if not self.geometry:
            return {}
        chunk, n = cfg.optim.chunk_size, len(self.geometry[0])
        anchors, answers = [], []
        for start in range(0, n, chunk):
            rows = range(start, min(start + chunk, n))
            with ctx:
                cache = model.encode_prefix(self.geometry_users[start:start + chunk].to(model.device))
                per_user = [[ScenarioSpec(t[i].query) for t in self.geometry] for i in rows]
                anchors += [e.detach().float().cpu() for e in model.embed_per_user(cache, per_user)]  # [T, out]
                answers.append(model.encode_answers([t[i].answer for i in rows for t in self.geometry])
                               .detach().float().cpu().view(len(rows), len(self.geometry), -1))
        a = torch.stack(anchors).numpy()  # [U, T, out]
        d = torch.cat(answers).numpy()  # [U, T, out]

        def mean_cka(x: np.ndarray) -> float:  # over question pairs: x[:, i] vs x[:, j], the same users
            t = x.shape[1]
            return float(np.mean([linear_cka(x[:, i], x[:, j]) for i in range(t) for j in range(i + 1, t)]))

        return {"val_anchor_cka": mean_cka(a), "val_answer_cka": mean_cka(d)}

    @torch.no_grad()
    def __call__(self, model: QAnchorModel, cfg: QAnchorConfig, autocast: torch.autocast | None) -> dict[str, float]:
        was_training = model.training
        model.eval()
        ctx = autocast or torch.autocast("cpu", enabled=False)
        u, d, ntp = self._towers(model, self.users, self.pairs, cfg.optim.chunk_size, ctx)
        same_q = self._same_question(model, cfg, ctx)
        same_q.update(self._user_share(model, cfg, ctx))
        same_q.update(self._question_geometry(model, cfg, ctx))
        model.train(was_training)
        sim = u @ d.T  # [M, M]
        target = torch.arange(len(u), device=sim.device)
        off = ~torch.eye(len(u), dtype=torch.bool, device=sim.device)
        return {**same_q, "val_contrastive": float(contrastive_loss(u, d, cfg.loss)),
                "val_infonce": float(torch.nn.functional.cross_entropy(sim / cfg.loss.tau, target)),
                "val_acc1": float((sim.argmax(dim=1) == target).float().mean()),
                "val_gap": float(sim.diagonal().mean() - sim[off].mean()),
                "val_ntp": ntp, "val_pairs": float(len(u))}


def main(argv: list[str] | None = None) -> int:
    """Held-out metrics of a saved checkpoint on a MovieLens world, as pretraining logs them (same users and pairs):

        python -m training.heldout --checkpoint artifacts/default --dataset ml-1m
        python -m training.heldout --checkpoint artifacts/default --set data.aspect_answers=own   # other answers
    """
    import argparse
    import json
    import logging

    from training.config import with_overrides
    from training.data.encoder import cached_text_vectors
    from training.data.world import WorldConfig, build_world
    from training.precision import autocast as precision_autocast
    from training.precision import resolve_precision
    from training.pretrain import load_pretrained

    p = argparse.ArgumentParser(description=main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", default="ml-1m", choices=["ml-1m", "ml-100k"])
    p.add_argument("--set", action="append", default=[], metavar="data.KEY=VALUE", help="data config override")
    p.add_argument("--eval-pairs", type=int, default=64)
    p.add_argument("--seed", type=int, default=None, help="default: the checkpoint's optim.seed")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    model = load_pretrained(args.checkpoint).eval()
    cfg = with_overrides(model.cfg, args.set)
    world = build_world(WorldConfig(dataset=args.dataset))
    collate = UserCollator(world, cached_text_vectors(world.texts, args.dataset))
    held_out = HeldOutEval(world, collate, args.eval_pairs, cfg.data,
                           cfg.optim.seed if args.seed is None else args.seed)
    dtype = resolve_precision(cfg.backbone.compute, "cpu")
    got = held_out(model, cfg, precision_autocast(dtype, "cpu") if dtype != torch.float32 else None)
    print(json.dumps({"checkpoint": args.checkpoint, "overrides": args.set, **got}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
