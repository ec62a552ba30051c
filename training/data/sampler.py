"""Which pairs make up training batch `step`: a pure function of (seed, step, rank), so a resumed run replays the
same data and data-parallel ranks never share a user."""
from __future__ import annotations

import numpy as np

from training.data.pairs import Pair


class PairSampler:
    """Batch `step` is a pure function of (seed, step, rank): resuming replays the same data.

    `group` (optim.question_group): 1 draws one pair per user, any question. g > 1 draws the batch as groups of g
    distinct users answering the *same* question (topics picked in proportion to how many users have them), so an
    anchor's in-batch negatives include g - 1 answers to its own question: only the user can tell them apart.
    """

    def __init__(self, pairs: list[Pair], seed: int, group: int = 1, group_from: int = 0) -> None:
        self.by_user: dict[int, list[Pair]] = {}
        self.by_topic: dict[str, list[Pair]] = {}
        for p in pairs:
            self.by_user.setdefault(p.user, []).append(p)
            self.by_topic.setdefault(p.topic, []).append(p)
        self.users = sorted(self.by_user)
        self.seed, self.group, self.group_from = seed, group, group_from
        self.topics = sorted(t for t, ps in self.by_topic.items() if len(ps) >= group)
        if group > 1 and not self.topics:
            raise ValueError(f"no question is answered by {group} users; lower optim.question_group")

    def batch(self, step: int, size: int, rank: int = 0, world_size: int = 1) -> list[Pair]:
        rng = np.random.default_rng([self.seed, step])
        if self.group > 1 and step >= self.group_from:
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
