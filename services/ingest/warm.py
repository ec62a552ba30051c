"""Warm prefixes on feature change: after ingest writes a user's new features, compute that user's prefix KV on the
Triton replica the gateway routes them to, in the background, so their next request is a cache hit.

    warmer = PrefixWarmer(pool, rate_per_s=20, max_pending=256)   # pool: the gateway's TritonPool (affinity)
    warmer.start()
    warmer.offer(rows)        # after the feature write; never blocks, never fails the batch
    warmer.close()

A warm-up is a `qanchor` request with no scenarios (the model computes and caches the prefix, returns no embedding;
docs/gateway.md, tensor contract) for the user's new `feature_version`, sent through the same consistent-hash ring
the gateway uses, so it lands on the user's home replica. It goes to every model version the user's requests may be
routed to (`versions`: the gateway's A/B config through `services.gateway.routing.routed_model_versions`; without
one, the server's default version), so an A/B arm on another model is not the cold one in its latency comparison.

It must never cost serving anything, so it gives way:
- **rate-limited** (`rate_per_s`, a token bucket): a replay of a million events does not turn into a million
  prefix computations at once;
- **bounded**: at most `max_pending` users wait (a newer version of a waiting user replaces the older one); beyond
  that new users are dropped, counted, not queued;
- **skipped under load**: a warm-up that fails (replica down, queue full, deadline) or takes longer than `busy_s`
  pauses warming for `cooldown_s` and drops what is waiting: the replicas are busy with real traffic;
- **out of the batch path**: `offer` only enqueues; one background thread sends, so ingest's commit never waits.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Callable, Protocol, Sequence

from services.common.errors import QAnchorError
from services.common.features import UserFeatures
from services.gateway.core import ModelRequest

log = logging.getLogger(__name__)


class Infer(Protocol):
    def infer(self, requests: Sequence, timeout_s: float) -> list: ...


class WarmCounters(Protocol):
    def labels(self, **kw: str): ...


Versions = Callable[[str], Sequence[str]]  # user id -> the model versions ("" = the server's default) to warm


class PrefixWarmer:
    """`rate_per_s`, `max_pending` and `batch` count users; a user routed to k model versions costs k warm-up
    requests (counted one each in sent / failed)."""

    def __init__(self, model: Infer, *, rate_per_s: float = 20.0, max_pending: int = 256, batch: int = 8,
                 timeout_s: float = 5.0, busy_s: float = 2.0, cooldown_s: float = 10.0,
                 counter: WarmCounters | None = None, clock: Callable[[], float] = time.monotonic,
                 versions: Versions | None = None) -> None:
        if rate_per_s <= 0 or max_pending <= 0 or batch <= 0:
            raise ValueError("warming needs rate_per_s > 0, max_pending > 0 and batch > 0 (or leave it off)")
        self.model, self.rate, self.max_pending, self.batch = model, rate_per_s, max_pending, batch
        self.versions = versions
        self.timeout_s, self.busy_s, self.cooldown_s = timeout_s, busy_s, cooldown_s
        self.counter, self.clock = counter, clock
        self._pending: OrderedDict[str, UserFeatures] = OrderedDict()
        self._cv = threading.Condition()
        self._tokens = float(batch)
        self._last = clock()
        self._paused_until = 0.0
        self._stop = False
        self._thread: threading.Thread | None = None
        self.sent = self.dropped = self.failed = 0

    # ---- producer side (ingest's batch loop) -----------------------------------------------------------------
    def offer(self, rows: Sequence[UserFeatures]) -> None:
        """Queue these users' new features for a warm-up; never blocks. Cold rows (no version) are skipped."""
        dropped = 0
        with self._cv:
            paused = self.clock() < self._paused_until
            for row in rows:
                if not row.found or row.feature_version <= 0:
                    continue
                if paused:
                    dropped += 1
                    continue
                if row.user_id in self._pending:
                    self._pending[row.user_id] = row  # the newer version replaces the one waiting
                    continue
                if len(self._pending) >= self.max_pending:
                    dropped += 1
                    continue
                self._pending[row.user_id] = row
            self._cv.notify()
        self._count("dropped", dropped)

    # ---- sender side ---------------------------------------------------------------------------------------
    def start(self) -> "PrefixWarmer":
        self._thread = threading.Thread(target=self._run, name="prefix-warmer", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def ready(self) -> tuple[list[UserFeatures], float | None]:
        """(users to warm now, oldest first, at most what the token bucket allows; seconds until the next token
        when users wait but no token is left, None when nobody waits). Call with the lock held or single-threaded."""
        now = self.clock()
        self._tokens = min(float(self.batch), self._tokens + (now - self._last) * self.rate)
        self._last = now
        if not self._pending:
            return [], None
        if self._tokens < 1:
            return [], (1 - self._tokens) / self.rate
        n = min(self.batch, len(self._pending), int(self._tokens))
        self._tokens -= n
        return [self._pending.popitem(last=False)[1] for _ in range(n)], 0.0

    def _take(self) -> list[UserFeatures]:
        """Up to `batch` users once tokens allow (waits; returns [] when stopping)."""
        with self._cv:
            while not self._stop:
                rows, wait = self.ready()
                if rows:
                    return rows
                self._cv.wait(wait)
            return []

    def _run(self) -> None:
        while True:
            rows = self._take()
            if not rows:
                return
            self.warm(rows)

    def warm(self, rows: list[UserFeatures]) -> None:
        """One warm-up call for these users, one request per (user, model version) (the background thread's step;
        tests call it directly)."""
        if rows:
            requests = [ModelRequest(r, v, [], [], []) for r in rows for v in self._versions_of(r.user_id)]
            t0 = self.clock()
            try:
                outcomes = self.model.infer(requests, self.timeout_s)
            except Exception as exc:  # the pool raises only on a lost callback; never let the thread die
                outcomes = [QAnchorError(f"warm-up call failed: {exc!r}")] * len(requests)
            took = self.clock() - t0
            bad = [o for o in outcomes if isinstance(o, QAnchorError)]
            self._count("sent", len(requests) - len(bad))
            self._count("failed", len(bad))
            if bad or took > self.busy_s:
                self._pause(f"{len(bad)} of {len(requests)} failed ({bad[0]})" if bad else
                            f"a warm-up took {took:.1f}s > {self.busy_s}s")

    def _versions_of(self, user_id: str) -> list[str]:
        """The model versions to warm for this user; the server's default one ("") when no A/B config is known."""
        if self.versions is None:
            return [""]
        try:
            return list(self.versions(user_id)) or [""]
        except Exception:  # no valid A/B config loaded (yet): its watcher logs why; warm what unlisted traffic uses
            return [""]

    def _pause(self, why: str) -> None:
        with self._cv:
            self._paused_until = self.clock() + self.cooldown_s
            dropped = len(self._pending)
            self._pending.clear()
        self._count("dropped", dropped)
        log.warning("prefix warming paused: the model servers are busy or failing; real requests go first",
                    extra={"reason": why[:300], "cooldown_s": self.cooldown_s, "dropped": dropped})

    def _count(self, outcome: str, n: int) -> None:
        if n <= 0:
            return
        setattr(self, outcome, getattr(self, outcome) + n)
        if self.counter is not None:
            self.counter.labels(outcome=outcome).inc(n)

    def pending(self) -> int:
        with self._cv:
            return len(self._pending)
