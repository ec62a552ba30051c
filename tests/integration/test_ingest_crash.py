"""Effectively-once under SIGKILL: kill the consumer at random points of a stream of thousands of events,
restart it three times, and compare the final online features with a clean, uninterrupted replay of the
same topic into a second Feast store.
"""
from __future__ import annotations

import json
import random
import time
import uuid

import numpy as np
import pytest

from services.common.feast_store import apply as feast_apply
from test_ingest_stream import (  # noqa: F401  (ctx is a fixture)
    SPEC, VOCAB, committed, ctx, event, metrics, new_topic, produce, read_users, start_consumer, stop, tabular,
    wait_caught_up,
)

pytestmark = pytest.mark.integration
# Logged by services.common.features_online after each push (the crash rounds kill right after it).
WRITE_LOG = "features written"


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


def test_sigkill_at_random_points_then_restart_equals_clean_replay(ctx):
    rng = random.Random()
    topic, group = new_topic(ctx, partitions=4), f"crash-{uuid.uuid4().hex[:6]}"
    users = [f"{uuid.uuid4().hex[:6]}-c{i}" for i in range(120)]
    records = stream(3000, users, seed=rng.randrange(10**6))
    produce(ctx, topic, records)
    total = len(records)

    # The clean replay: its own group and its own online store, running alongside the crash rounds.
    clean_cfg = feast_apply(ctx.tmp / "clean_state")
    clean, clog, _ = start_consumer(ctx, topic, f"{group}-clean", "clean", feast_config=clean_cfg,
                                    max_poll_records=500)

    procs = [clean]
    try:
        kills: list[int] = []
        duplicates: list[float] = []  # replayed events skipped by each run before its kill
        for round_ in range(3):
            proc, log, port = start_consumer(ctx, topic, group, f"crash-{round_}", max_poll_records=60)
            procs.append(proc)
            before = sum(committed(ctx, group, topic).values())
            deadline = time.monotonic() + 300
            while sum(committed(ctx, group, topic).values()) == before and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()[-3000:]
                time.sleep(0.1)
            # Scraped now, not at the kill: the scrape would delay the kill past the commit.
            duplicates.append(metrics(port)['qanchor_ingest_events_total{outcome="duplicate"}'])
            if round_ == 0:
                time.sleep(rng.uniform(0.0, 1.5))  # somewhere inside the poll/encode/push/commit cycle
            else:
                # Right after the next push is logged: most likely between the push and its commit, the case
                # that needs the stored positions (a replay of rows that are already written).
                writes = log.read_text().count(WRITE_LOG)
                deadline = time.monotonic() + 60
                while log.read_text().count(WRITE_LOG) == writes and time.monotonic() < deadline:
                    time.sleep(0.002)
            proc.kill()  # SIGKILL
            proc.wait()
            kills.append(sum(committed(ctx, group, topic).values()))
        assert 0 < kills[0] and kills[-1] < total, f"kills did not land mid-stream: {kills} of {total}"

        proc, log, port = start_consumer(ctx, topic, group, "crash-final", max_poll_records=60)
        procs.append(proc)
        wait_caught_up(ctx, group, topic, [proc], timeout=600)
        final_metrics = metrics(port)
        assert stop(proc) == 0
        wait_caught_up(ctx, f"{group}-clean", topic, [clean], timeout=600)
        assert stop(clean) == 0
    finally:
        for p in procs:  # a failed assertion must not leave consumers running
            if p.poll() is None:
                p.kill()
                p.wait()

    crashed = read_users(ctx.feast_config, users)
    replay = read_users(clean_cfg, users)
    for uid in users:
        a, b = crashed[uid], replay[uid]
        assert a.found == b.found, uid
        if not a.found:
            continue
        assert a.feature_version == b.feature_version, uid
        np.testing.assert_array_equal(a.tabular, b.tabular)
        for s in SPEC.source_names:
            assert a.sources[s].texts == b.sources[s].texts, (uid, s)  # no event lost, none doubled
            np.testing.assert_array_equal(a.sources[s].timestamps, b.sources[s].timestamps)
            np.testing.assert_allclose(a.sources[s].vectors.astype(np.float32),
                                       b.sources[s].vectors.astype(np.float32), atol=2e-3)
    duplicates.append(final_metrics['qanchor_ingest_events_total{outcome="duplicate"}'])
    print(json.dumps({"records": total, "committed_at_kills": kills, "duplicates_skipped_per_run": duplicates}))
