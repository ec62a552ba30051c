"""Which pairs make up training batch `step`: a pure function of (seed, step, rank), so a resumed run replays the
same data and data-parallel ranks never share a user."""
from __future__ import annotations

import numpy as np

from training.data.pairs import Pair


class PairSampler:
    """Batch `step` is a pure function of (seed, step, rank): resuming replays the same data.

    Group size g at a step (optim.question_group_schedule, or question_group from question_group_from): g = 1 draws
    one pair per user, any question. g > 1 draws the batch as groups of g distinct users answering the *same*
    question (topics picked in proportion to how many users have them), so an anchor's in-batch negatives include
    g - 1 answers to its own question: only the user can tell them apart.

    per_user q > 1 (grouped phases only) draws the batch as g x q grids: g users who all answer the same q questions,
    every (user, question) pair of the grid in the batch. An anchor's negatives then also hold q - 1 answers *of its
    own user* to other questions: only the question can tell those apart, so the anchor must carry what its question
    asks about the user, not the user alone (docs/model.md, "Question grids").
    """

    def __init__(self, pairs: list[Pair], seed: int, group: int = 1, group_from: int = 0,
                 schedule: list[tuple[int, int]] | None = None, per_user: int = 1) -> None:
        if per_user < 1:
            raise ValueError(f"per_user must be >= 1, got {per_user}")
        self.per_user = per_user
        self.by_user: dict[int, list[Pair]] = {}
        self.by_topic: dict[str, list[Pair]] = {}
        for p in pairs:
            self.by_user.setdefault(p.user, []).append(p)
            self.by_topic.setdefault(p.topic, []).append(p)
        self.users = sorted(self.by_user)
        self.seed = seed
        steps = sorted((int(a), int(g)) for a, g in schedule) if schedule else [(group_from, group)]
        self.schedule = [(0, 1)] + [x for x in steps if x[1] > 1 or x[0] > 0]  # (from step, group size)
        self.group = max(g for _, g in self.schedule)  # the largest group this sampler will draw
        self._topics: dict[int, list[str]] = {}
        for _, g in self.schedule:
            if g > 1 and not self.topics(g):
                raise ValueError(f"no question is answered by {g} users; lower optim.question_group")

    def topics(self, g: int) -> list[str]:
        """Questions answered by at least g users (only those can fill a group)."""
        if g not in self._topics:
            self._topics[g] = sorted(t for t, ps in self.by_topic.items() if len(ps) >= g)
        return self._topics[g]

    def group_at(self, step: int) -> int:
        return [g for start, g in self.schedule if step >= start][-1]

    def batch(self, step: int, size: int, rank: int = 0, world_size: int = 1) -> list[Pair]:
        rng = np.random.default_rng([self.seed, step])
        g = self.group_at(step)
        if g > 1 and self.per_user > 1:
            return self._grids(rng, size * world_size, g, self.per_user)[rank * size:(rank + 1) * size]
        if g > 1:
            return self._grouped(rng, size * world_size, g)[rank * size:(rank + 1) * size]  # disjoint across ranks
        n = min(size * world_size, len(self.users))
        picked = rng.choice(len(self.users), n, replace=False)[rank::world_size][:size]  # disjoint across ranks
        out = []
        for i in picked:
            ps = self.by_user[self.users[int(i)]]
            out.append(ps[int(rng.integers(len(ps)))])
        return out

    def _draw_group(self, rng: np.random.Generator, topics: list[str], weight: np.ndarray, used: set[int],
                    group: int) -> tuple[str, list[Pair]] | None:
        """One question drawn in proportion to `weight` and `group` of its pairs whose users are not in `used` (a
        question with fewer users left gets weight 0: never drawn again for this batch); None when none can fill
        a group. The draw `_grouped` and `_grids` share."""
        while weight.sum() > 0:
            k = int(rng.choice(len(topics), p=weight / weight.sum()))
            cands = [p for p in self.by_topic[topics[k]] if p.user not in used]
            if len(cands) < group:
                weight[k] = 0.0
                continue
            return topics[k], [cands[int(i)] for i in rng.choice(len(cands), group, replace=False)]
        return None

    def _weights(self, group: int) -> tuple[list[str], np.ndarray]:
        """The questions that can fill a group of `group`, weighted by how many users answer each."""
        topics = self.topics(group)
        return topics, np.array([len(self.by_topic[t]) for t in topics], dtype=float)

    def _grouped(self, rng: np.random.Generator, n: int, group: int) -> list[Pair]:
        """Up to n pairs in whole groups (fewer only when no question has `group` users left to draw)."""
        topics, weight = self._weights(group)
        out: list[Pair] = []
        used: set[int] = set()
        while len(out) + group <= n and (drawn := self._draw_group(rng, topics, weight, used, group)):
            out.extend(drawn[1])
            used.update(p.user for p in drawn[1])
        return out

    def _grids(self, rng: np.random.Generator, n: int, group: int, per_user: int) -> list[Pair]:
        """Up to n pairs in whole g x q grids. A grid: a question and g of its users drawn as in `_grouped`, then
        q - 1 more questions drawn from those every one of the g users answers (the shared future aspects at least,
        when data.future_aspects is on). Rows are grouped by question, users in one order."""
        topics, weight = self._weights(group)
        out: list[Pair] = []
        used: set[int] = set()
        tries = 0
        while len(out) + group * per_user <= n and tries < 1000:
            tries += 1
            drawn = self._draw_group(rng, topics, weight, used, group)
            if drawn is None:
                break
            t, first = drawn
            answers = [{p.topic: p for p in self.by_user[p0.user]} for p0 in first]
            shared = sorted(set.intersection(*(set(a) for a in answers)) - {t})
            if len(shared) < per_user - 1:
                continue  # these users share too few questions: draw another grid
            picked = [t] + [shared[int(i)] for i in rng.choice(len(shared), per_user - 1, replace=False)]
            out.extend(a[q] for q in picked for a in answers)
            used.update(p.user for p in first)
        if not out:
            raise ValueError(f"no {group} users share {per_user} questions in {tries} draws; lower "
                             "optim.questions_per_user or the question group")
        return out
