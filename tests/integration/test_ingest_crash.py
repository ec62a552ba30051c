"""Effectively-once under SIGKILL, at the reliability goal's size (slow marker): 5,000 events, six SIGKILLs at chosen
points of the batch cycle (before a batch is processed, and after its write but before its commit), a consumer-group
rebalance between two live consumers, the Redis online store; the final online features must equal a clean,
uninterrupted replay of the same topic into a second store, with nothing lost and nothing applied twice.

Timing is controlled, never raced: every consumer runs with the batch gate (services/ingest/gate.py), a driver
thread opens its gates one by one, and a kill waits until the consumer is held at its chosen gate.
"""
from __future__ import annotations

import json
import random
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from ingest_harness import (  # noqa: F401  (ctx is a fixture)
    SPEC, VOCAB, committed, ctx, event, metrics, new_topic, produce, read_users, start_consumer, stop, tabular,
    wait_at_gate, wait_caught_up,
)
from services.common.feast_store import apply as feast_apply
from services.ingest.gate import open_gate

pytestmark = pytest.mark.integration
USERS = 200
# (events, the solo lives' kill points): the goal's size runs with the slow tests (~15 min on a loaded 2-core
# machine); CI runs a smaller stream with the same kinds of kill, the pair's rebalance and the Redis store.
GOAL = (5000, [("process", 2), ("commit", 2), ("commit", 3), ("process", 3)])
CI = (1500, [("commit", 2)])


def stream(n: int, users: list[str], seed: int) -> list[tuple[bytes | None, bytes]]:
    rng = random.Random(seed)
    out: list[tuple[bytes | None, bytes]] = []
    t0 = 1_700_000_000
    for i in range(n):
        uid = rng.choice(users)
        ts = t0 + i * 600 - rng.randrange(0, 4 * 3600)  # some arrive out of order by a few hours
        r = rng.random()
        if r < 0.01:
            out.append((uid.encode(), b'{"schema_version": 1, "user_id": "' + uid.encode() + b'"'))  # truncated
        elif r < 0.06:
            out.append((uid.encode(), tabular(uid, i, ts, round(rng.random(), 4))))
        else:
            out.append((uid.encode(), event(uid, i, ts, source=rng.choice(SPEC.source_names),
                                           text=rng.choice(VOCAB))))
    return out


class GateDriver(threading.Thread):
    """Opens every gate the consumer waits at, except `hold` (stage, batch), where it stays until killed."""

    def __init__(self, gate: Path, hold: tuple[str, int] | None = None) -> None:
        super().__init__(daemon=True)
        self.gate, self.hold = gate, hold
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for waiting in self.gate.glob("*.waiting"):
                batch, stage = waiting.name.split(".")[:2]
                if (stage, int(batch)) != self.hold:
                    open_gate(self.gate, stage, int(batch))
            time.sleep(0.02)


@pytest.mark.parametrize("events,solo_kills", [pytest.param(*CI, id="ci"),
                                               pytest.param(*GOAL, id="goal", marks=pytest.mark.slow)])
def test_sigkills_and_a_rebalance_on_redis_equal_a_clean_replay(ctx, events, solo_kills):
    rng = random.Random()
    topic, group = new_topic(ctx, partitions=4), f"crash-{uuid.uuid4().hex[:6]}"
    users = [f"{uuid.uuid4().hex[:6]}-c{i}" for i in range(USERS)]
    records = stream(events, users, seed=rng.randrange(10**6))
    produce(ctx, topic, records)

    # The crashing group writes to the Redis online store (its own database, so no other test's keys mix in);
    # the clean replay, its own group, to a SQLite store of its own.
    crash_cfg = feast_apply(ctx.tmp / f"crash_state_{group}", "redis", ctx.redis_url.rsplit("/", 1)[0] + "/2")
    clean_cfg = feast_apply(ctx.tmp / f"clean_state_{group}")
    clean, _, _ = start_consumer(ctx, topic, f"{group}-clean", f"{group}-clean", feast_config=clean_cfg,
                                 max_poll_records=500)
    procs, drivers = [clean], []

    def life(name: str, hold: tuple[str, int] | None):  # type: ignore[no-untyped-def]
        gate = ctx.tmp / f"gate-{name}"
        proc, log, port = start_consumer(ctx, topic, group, name, feast_config=crash_cfg, max_poll_records=60,
                                         gate=gate)
        driver = GateDriver(gate, hold)
        driver.start()
        procs.append(proc)
        drivers.append(driver)
        return proc, log, port, gate

    kills: list[tuple[str, int, int]] = []  # (stage, batch, records committed by the group at the kill)

    def kill_at(proc, log, gate, stage: str, batch: int) -> None:  # type: ignore[no-untyped-def]
        wait_at_gate(gate, stage, batch, proc, log)
        proc.kill()  # SIGKILL, while held: nothing after the gate has run
        proc.wait()
        kills.append((stage, batch, sum(committed(ctx, group, topic).values())))

    try:
        # Four lives alone: killed before processing, or after the write and before the commit (the case that
        # needs the stored positions: a replay of rows already written).
        for i, hold in enumerate(solo_kills):
            proc, log, _, gate = life(f"{group}-solo{i}", hold)
            kill_at(proc, log, gate, *hold)
        # Two live consumers share the group (a rebalance splits the partitions); one is killed after a write.
        a, log_a, _, gate_a = life(f"{group}-pair-a", ("commit", 3))
        b, log_b, _, gate_b = life(f"{group}-pair-b", ("commit", 4))
        kill_at(a, log_a, gate_a, "commit", 3)
        kill_at(b, log_b, gate_b, "commit", 4)
        assert len(kills) == len(solo_kills) + 2 and all(0 < sum_ < len(records) for *_, sum_ in kills), kills
        # The survivors: two consumers run the rest (the second one's join is another rebalance).
        last_a, _, port_a, _ = life(f"{group}-final-a", None)
        last_b, _, port_b, _ = life(f"{group}-final-b", None)
        wait_caught_up(ctx, group, topic, [last_a, last_b], timeout=1200)
        final = [metrics(p) for p in (port_a, port_b)]
        assert stop(last_a) == 0 and stop(last_b) == 0
        wait_caught_up(ctx, f"{group}-clean", topic, [clean], timeout=1200)
        assert stop(clean) == 0
    finally:
        for d in drivers:
            d.done.set()
        for p in procs:  # a failed assertion must not leave consumers running
            if p.poll() is None:
                p.kill()
                p.wait()

    crashed = read_users(crash_cfg, users)
    replay = read_users(clean_cfg, users)
    for uid in users:
        a, b = crashed[uid], replay[uid]
        assert a.found == b.found, uid
        if not a.found:
            continue
        assert a.feature_version == b.feature_version, uid
        assert a.event_ids == b.event_ids, uid  # nothing lost, nothing applied twice
        np.testing.assert_array_equal(a.tabular, b.tabular)
        for s in SPEC.source_names:
            assert a.sources[s].texts == b.sources[s].texts, (uid, s)
            np.testing.assert_array_equal(a.sources[s].timestamps, b.sources[s].timestamps)
            np.testing.assert_allclose(a.sources[s].vectors.astype(np.float32),
                                       b.sources[s].vectors.astype(np.float32), atol=2e-3)
    skipped = sum(m['qanchor_ingest_events_total{outcome="duplicate"}'] for m in final)
    print(json.dumps({"records": len(records), "kills": kills, "replayed_events_skipped_by_survivors": skipped}))
