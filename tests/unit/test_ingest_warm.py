"""Prefix warming after a feature write (services/ingest/warm.py): pure logic with a stand-in model client and a
manual clock. The real path (ingest -> Triton's qanchor, then a cache hit) is tests/integration/test_ingest_warm.py."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from services.common.errors import Unavailable
from services.common.features import UserFeatures
from services.ingest.warm import PrefixWarmer


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Model:
    """Records warm-up calls; answers OK (an empty embedding) or an error."""

    def __init__(self, fail: bool = False, took: float = 0.0, clock: Clock | None = None) -> None:
        self.calls: list[list] = []
        self.fail, self.took, self.clock = fail, took, clock

    def infer(self, requests, timeout_s):
        self.calls.append(list(requests))
        if self.clock is not None:
            self.clock.t += self.took
        return [Unavailable("queue full") if self.fail else object() for _ in requests]


def row(uid: str, version: int) -> UserFeatures:
    return UserFeatures(user_id=uid, sources={}, tabular=np.zeros(4, np.float32), feature_version=version,
                        updated_at=1.0)


def test_warm_ups_are_prefix_only_requests_of_the_newest_version_oldest_user_first():
    clock = Clock()
    model = Model()
    w = PrefixWarmer(model, rate_per_s=100, batch=8, clock=clock)
    w.offer([row("a", 1), row("b", 1), UserFeatures.missing("cold")])
    w.offer([row("a", 2)])  # a newer version of a waiting user replaces it, keeps its place
    rows, _ = w.ready()
    assert [(r.user_id, r.feature_version) for r in rows] == [("a", 2), ("b", 1)]
    w.warm(rows)
    [reqs] = model.calls
    assert [(r.user.user_id, r.model_version, r.scenarios, r.query_texts, r.prompts) for r in reqs] == \
        [("a", "", [], [], []), ("b", "", [], [], [])]  # the default model version, no scenario: prefix only
    assert (w.sent, w.failed, w.dropped) == (2, 0, 0)
    assert w.ready() == ([], None)  # nobody waits


def test_each_user_is_warmed_under_every_model_version_routing_may_send_them_to():
    routes = {"a": ["", "m2"], "b": [""]}

    def versions(user_id: str) -> list[str]:
        if user_id == "c":
            raise RuntimeError("no valid A/B config loaded")  # the watcher has none yet
        return routes[user_id]

    model = Model()
    w = PrefixWarmer(model, rate_per_s=100, batch=8, clock=Clock(), versions=versions)
    w.warm([row("a", 3), row("b", 1), row("c", 2)])
    [reqs] = model.calls
    assert [(r.user.user_id, r.user.feature_version, r.model_version, r.scenarios) for r in reqs] == \
        [("a", 3, "", []), ("a", 3, "m2", []), ("b", 1, "", []), ("c", 2, "", [])]
    assert (w.sent, w.failed) == (4, 0)  # counted per request: one prefix computation each


def test_rate_limit_and_bounded_queue():
    clock = Clock()
    w = PrefixWarmer(Model(), rate_per_s=2, batch=4, max_pending=6, clock=clock)
    w.offer([row(f"u{i}", 1) for i in range(10)])
    assert w.pending() == 6 and w.dropped == 4  # beyond max_pending: dropped and counted, not queued
    first, _ = w.ready()
    assert len(first) == 4  # the bucket starts full (one batch)
    rows, wait = w.ready()
    assert rows == [] and wait == pytest.approx(0.5)  # 2 per second: the next token in half a second
    clock.t += 1.0
    rows, _ = w.ready()
    assert [r.user_id for r in rows] == ["u4", "u5"]  # two tokens after one second


def test_failures_or_slow_warm_ups_pause_warming_and_drop_what_waits():
    clock = Clock()
    w = PrefixWarmer(Model(fail=True), rate_per_s=100, batch=2, cooldown_s=10, clock=clock)
    w.offer([row(f"u{i}", 1) for i in range(5)])
    rows, _ = w.ready()
    w.warm(rows)
    assert (w.sent, w.failed, w.dropped, w.pending()) == (0, 2, 3, 0)  # the 3 waiting were dropped
    w.offer([row("late", 1)])
    assert w.pending() == 0 and w.dropped == 4  # paused: offers are dropped
    clock.t += 11
    w.offer([row("later", 1)])
    assert w.pending() == 1  # the pause is over
    slow = PrefixWarmer(Model(took=3.0, clock=clock), rate_per_s=100, batch=1, busy_s=2.0, clock=clock)
    slow.offer([row("x", 1), row("y", 1)])
    slow.warm(slow.ready()[0])  # answered, but slowly: the replicas are busy with real traffic
    assert slow.sent == 1 and slow.pending() == 0 and slow.dropped == 1


def test_the_background_thread_sends_and_stops():
    model = Model()
    w = PrefixWarmer(model, rate_per_s=1000, batch=4).start()
    try:
        w.offer([row(f"u{i}", 3) for i in range(6)])
        deadline = time.monotonic() + 10
        while w.sent < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert w.sent == 6
    finally:
        w.close()
    assert not any(t.name == "prefix-warmer" and t.is_alive() for t in threading.enumerate())


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="rate_per_s"):
        PrefixWarmer(Model(), rate_per_s=0)
