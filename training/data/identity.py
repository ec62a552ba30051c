"""Who a user is, whatever id a producer gave them: a fingerprint of their earliest events.

    fps = fingerprints(world, world.users("train"))   # {user_id: 16 hex digits}

A checkpoint records the fingerprints of the users it was pretrained on (training.normalisation writes them beside
its constants), so the quality harness can refuse to test a model on users it was trained on by comparing users,
not dataset names: MovieLens-1M's users replayed into the event log under `ml1m-` ids are the same users, and two
teams' logs (both `--dataset offline`) are not.

The fingerprint is sha256 over the (time, text) pairs of a user's earliest events: the first `EARLIEST` by time,
and every other event of the last second they reach (so the order within one second, which the MovieLens world and
the event log break differently, never changes it). It reads the history window only, which begins with the user's
first event in every world, so another cut, a grown log or a split of the same user's events keeps it; a log that
dropped a user's oldest events does not (the fingerprint then changes and the user reads as a new one).
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

FINGERPRINT = "earliest-8-events-v1"  # recorded with every fingerprint set: another rule never matches this one
EARLIEST = 8


def user_fingerprint(world: Any, user: int) -> str:
    """16 hex digits naming one user of a world (training.data.world.UserWorld or EventWorld) by their events."""
    rows = np.asarray(world.timelines[user].history)  # oldest first in every world
    ts = world.row_ts(rows)
    if len(rows) > EARLIEST:
        keep = ts <= ts[EARLIEST - 1]  # whole seconds: the within-second order is not the user's
        rows, ts = rows[keep], ts[keep]
    events = sorted((int(t), world.texts[int(world.text_of_row[r])]) for r, t in zip(rows.tolist(), ts.tolist()))
    return hashlib.sha256(repr(events).encode()).hexdigest()[:16]


def fingerprints(world: Any, users: list[int]) -> dict[str, str]:
    """{the world's user id: fingerprint} of some of its users. Memoised per user on the world (a user's history
    does not change once a world is built), so the harness's checks of one run share one pass."""
    memo = world.__dict__.setdefault("_fingerprints", {})
    for u in users:
        if u not in memo:
            memo[u] = user_fingerprint(world, u)
    return {str(world.user_id(u)): memo[u] for u in users}
