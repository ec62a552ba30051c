"""A corpus of malformed records (tests/malformed_records.py: 28 kinds) between good ones, through the real broker
and the real ingest service: every bad record lands in the DLQ with its reason, every good one is applied once
(producer re-sends included), and the consumer never stops; a replayed history applies once."""
from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest

from ingest_harness import (  # noqa: F401  (ctx is a fixture)
    SPEC, ctx, event, new_topic, produce, read_users, running_consumer, wait_caught_up,
)
from malformed_records import corpus

pytestmark = pytest.mark.integration


def test_malformed_corpus_through_the_real_broker(ctx):
    topic, group = new_topic(ctx), f"g-{uuid.uuid4().hex[:6]}"
    run = uuid.uuid4().hex[:6]
    good = [f"{run}-good{i}" for i in range(3)]
    now = time.time()
    # kafka-python cannot send a record with neither key nor value (other clients can): the unit tests cover it.
    bad = [b for b in corpus(f"{run}-bad", now) if not (b[1] is None and b[2] is None)]
    assert len(bad) >= 20
    records: list[tuple[bytes | None, bytes | None]] = []
    sent_good: dict[str, list[int]] = {u: [] for u in good}
    for i, (_, key, value, _) in enumerate(bad):
        uid = good[i % len(good)]
        records.append((uid.encode(), event(uid, i, now - 3000 + i)))
        sent_good[uid].append(i)
        records.append((key, value))
    resent = records[0:12:2]  # a producer retries six good events: same event_id, new offsets
    records += resent
    produce(ctx, topic, records)
    with running_consumer(ctx, topic, group, "malformed") as c:
        wait_caught_up(ctx, group, topic, [c.proc])
        m = c.metrics()
        got = read_users(ctx.feast_config, good)

    assert m['qanchor_ingest_events_total{outcome="dlq"}'] == len(bad)
    assert m['qanchor_ingest_events_total{outcome="applied"}'] == len(bad)  # one good event per bad one
    assert m['qanchor_ingest_events_total{outcome="duplicate"}'] == len(resent)
    for uid in good:  # every good event once, none of the re-sends twice
        f = got[uid]
        assert sorted(f.event_ids) == sorted(f"{uid}-{i}" for i in sent_good[uid])
        stored = [t for s in SPEC.source_names for t in f.sources[s].texts]
        assert len(stored) == len(sent_good[uid])  # all fit in K and the window: each good event stored once

    from kafka import KafkaConsumer

    dlq = KafkaConsumer(topic + ".dlq", bootstrap_servers=ctx.bootstrap, auto_offset_reset="earliest",
                        consumer_timeout_ms=5000)
    letters = [(dict(r.headers), r.key, r.value) for r in dlq]
    dlq.close()
    assert Counter(h["qanchor.reason"].decode() for h, _, _ in letters) == Counter(reason for *_, reason in bad)
    by_reason_and_value = {(h["qanchor.reason"].decode(), v) for h, _, v in letters}
    for kind, _, value, reason in bad:  # the original bytes are kept (cut only past 900 KiB)
        assert (reason, value if value is not None else b"") in by_reason_and_value, kind


def test_a_replayed_history_applies_once_through_the_real_broker(ctx):
    """A producer replays two users' whole histories, longer than the ids a row remembers: the stored rows do not
    move, the remembered ids count as duplicates and the rest go to the DLQ as beyond_dedup_memory."""
    topic, group = new_topic(ctx), f"g-{uuid.uuid4().hex[:6]}"
    run, now, memory, n = uuid.uuid4().hex[:6], time.time(), 8, 30
    users = [f"{run}-replay{j}" for j in range(2)]
    history = [(uid.encode(), event(uid, i, now - 3000 + 10 * i)) for i in range(n) for uid in users]
    produce(ctx, topic, history)
    with running_consumer(ctx, topic, group, "replayed", max_poll_records=7,
                          extra_env={"INGEST_RECENT_EVENT_IDS": str(memory)}) as c:
        wait_caught_up(ctx, group, topic, [c.proc])
        first = read_users(ctx.feast_config, users)
        produce(ctx, topic, history)
        wait_caught_up(ctx, group, topic, [c.proc])
        m = c.metrics()
        again = read_users(ctx.feast_config, users)

    assert m['qanchor_ingest_events_total{outcome="applied"}'] == len(history)
    assert m['qanchor_ingest_events_total{outcome="duplicate"}'] == memory * len(users)
    assert m['qanchor_ingest_dlq_total{reason="beyond_dedup_memory"}'] == (n - memory) * len(users)
    for uid in users:
        a, b = first[uid], again[uid]
        assert b.feature_version == a.feature_version and b.event_ids == a.event_ids == [
            f"{uid}-{i}" for i in range(n - memory, n)]
        assert all(b.sources[s].texts == a.sources[s].texts for s in SPEC.source_names)
        assert b.ids_floor == int(now - 3000 + 10 * (n - memory - 1))
