"""The ingest service against the real stack: Kafka broker, Triton text_encoder, Feast online store.

Each test runs `python -m services.ingest` as a real subprocess on its own topic, DLQ topic and consumer group,
with user ids unique to the test, so tests do not see each other's data (helpers: ingest_harness.py).
"""
from __future__ import annotations

import json
import signal
import time
import uuid

import numpy as np
import pytest

from ingest_harness import (  # noqa: F401  (ctx is a fixture)
    SPEC, VOCAB, committed, ctx, event, last_assignment, log_tail, metrics, new_topic, produce, read_users,
    reference_vectors, running_consumer, start_consumer, stop, tabular, wait_at_gate, wait_caught_up,
)
from services.common.settings import repo_root
from services.ingest.gate import open_gate, waiting_at
from services.ingest.transform import decode_version, encode_version

pytestmark = pytest.mark.integration


def test_events_to_features_dlq_and_graceful_stop(ctx):
    topic, group = new_topic(ctx), f"g-{uuid.uuid4().hex[:6]}"
    run = uuid.uuid4().hex[:6]
    users = [f"{run}-u{i}" for i in range(5)]
    k = {s.name: s.k for s in SPEC.features.sources}
    t0 = time.time() - 3600
    records: list[tuple[bytes | None, bytes]] = []
    for i in range(300):  # ~20 events per user and source: more than K for the K=16 sources
        uid = users[i % len(users)]
        records.append((uid.encode(), event(uid, i, t0 + i)))
        if i == 40:  # malformed events in the middle of the stream
            records += [(users[0].encode(), b"{not json"),
                        (users[1].encode(), event(users[1], 999, t0 + i, source="no_such_source")),
                        (b"someone-else", event(users[2], 998, t0 + i))]
    records.append((users[3].encode(), tabular(users[3], 0, t0 + 200, 0.5)))
    positions = produce(ctx, topic, records)
    with running_consumer(ctx, topic, group, "basic") as c:
        wait_caught_up(ctx, group, topic, [c.proc])
        got = read_users(ctx.feast_config, users)
        m = c.metrics()

    # features: per source the newest K texts by event time, newest last; version = user's last position
    valid = [(pos, json.loads(v)) for pos, (key, v) in zip(positions, records) if key is not None and
             v.startswith(b"{\"") and json.loads(v).get("source", "liked") in k and
             key.decode() == json.loads(v)["user_id"]]
    all_texts = sorted({t for f in got.values() for s in f.sources.values() for t in s.texts})
    ref = dict(zip(all_texts, reference_vectors(all_texts)))
    for uid in users:
        mine = [(p, e) for p, e in valid if e["user_id"] == uid]
        f = got[uid]
        assert f.found and decode_version(f.feature_version) == max(p for p, _ in mine)
        for s in SPEC.source_names:
            evs = sorted((e for _, e in mine if e.get("source") == s), key=lambda e: e["ts"])[-k[s]:]
            assert f.sources[s].texts == [e["text"] for e in evs]
            assert list(f.sources[s].timestamps) == [int(e["ts"]) for e in evs]
            for text, vec in zip(f.sources[s].texts, f.sources[s].vectors.astype(np.float32)):
                # Triton (bf16 compute on AMX CPUs, fp16 on the wire) vs the torch fp32 reference
                np.testing.assert_allclose(vec, ref[text], atol=5e-3)
    np.testing.assert_array_equal(got[users[3]].tabular, [0.5] * SPEC.features.tabular_dim)
    assert f.updated_at > t0

    # DLQ: the original bytes, the reason and where they came from; the stream went on past them
    from kafka import KafkaConsumer

    dlq = KafkaConsumer(topic + ".dlq", bootstrap_servers=ctx.bootstrap, auto_offset_reset="earliest",
                        consumer_timeout_ms=5000)
    rejected = [(dict(r.headers), r.value) for r in dlq]
    dlq.close()
    reasons = sorted(h["qanchor.reason"].decode() for h, _ in rejected)
    assert reasons == ["invalid_json", "key_mismatch", "unknown_source"]
    bad = {h["qanchor.reason"].decode(): (h, v) for h, v in rejected}
    h, v = bad["invalid_json"]
    assert v == b"{not json" and h["qanchor.topic"].decode() == topic
    src = positions[records.index((users[0].encode(), b"{not json"))]
    assert (int(h["qanchor.partition"]), int(h["qanchor.offset"])) == (src.partition, src.offset)

    # metrics
    assert m['qanchor_ingest_events_total{outcome="applied"}'] == len(valid)
    assert m['qanchor_ingest_events_total{outcome="dlq"}'] == 3
    assert m['qanchor_ingest_dlq_total{reason="key_mismatch"}'] == 1
    assert m["qanchor_ingest_event_lag_seconds_count"] == len(valid)
    assert m["qanchor_ingest_latency_seconds_count"] == len(valid)
    assert "ingest stopped" in c.log.read_text()


def test_raw_events_only_give_the_platform_derived_tabular(ctx):
    """Producers send raw events (no kind=tabular record); ingest derives the 400-d dense vector with the default
    model's constants, equal to training's formula applied to the same events and the vectors ingest encoded.
    Sending everything again (a producer's retry of the whole stream) changes nothing."""
    from services.common.features import Normalisation, StatsAggregate

    constants = repo_root() / "artifacts" / "default" / "normalisation.json"
    norm = Normalisation.load(constants)
    st = SPEC.features.statistics
    topic, group = new_topic(ctx), f"g-{uuid.uuid4().hex[:6]}"
    run = uuid.uuid4().hex[:6]
    users = [f"{run}-r{i}" for i in range(3)]
    t0 = 1_700_000_000
    raw: dict[str, list[dict]] = {u: [] for u in users}
    records = []
    for i in range(36):  # 12 per user: every event stays in its source's last K, so its vector can be read back
        uid, rating = users[i % 3], 1 + (i * 7) % 5
        rec = {"schema_version": 1, "event_id": f"{uid}-{i}", "user_id": uid, "kind": "event",
               "source": "liked" if rating >= 4 else "disliked" if rating <= 2 else "neutral",
               "ts": t0 + i * 20_000, "text": VOCAB[i % len(VOCAB)],
               "attributes": {"rating": rating, "year": 1960 + i % 40, "genres": ["Drama|Comedy", "Action", ""][i % 3]}}
        raw[uid].append(rec)
        records.append((uid.encode(), json.dumps(rec).encode()))
    produce(ctx, topic, records)
    with running_consumer(ctx, topic, group, "derived", normalisation=constants) as c:
        wait_caught_up(ctx, group, topic, [c.proc])
        got = read_users(ctx.feast_config, users)
        produce(ctx, topic, records)  # the same events again, at new offsets
        wait_caught_up(ctx, group, topic, [c.proc])
        again = read_users(ctx.feast_config, users)
    assert "tabular statistics derived from events" in c.log.read_text()
    for uid in users:
        f = got[uid]
        stored = {t: v for s in f.sources.values() for t, v in zip(s.texts, s.vectors)}  # what ingest encoded
        evs = raw[uid]
        values = [st.event_values(e["attributes"]) for e in evs]
        agg = StatsAggregate.of_events(st, [e["ts"] for e in evs], [v[0] for v in values], [v[1] for v in values],
                                       [v[2] for v in values], np.stack([stored[e["text"]] for e in evs]))
        want = norm.dense(agg, st)
        assert f.tabular.shape == (SPEC.features.tabular_dim,) == (400,) and np.abs(f.tabular).sum() > 0
        np.testing.assert_allclose(f.tabular, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(again[uid].tabular, f.tabular)
        assert again[uid].feature_version == f.feature_version


def test_sigterm_finishes_batch_and_commits_exactly_what_was_applied(ctx):
    topic, group = new_topic(ctx, partitions=2), f"g-{uuid.uuid4().hex[:6]}"
    users = [f"{uuid.uuid4().hex[:6]}-s{i}" for i in range(30)]
    records = [(users[i % 30].encode(), event(users[i % 30], i, 1_700_000_000 + i)) for i in range(3000)]
    positions = produce(ctx, topic, records)
    gate = ctx.tmp / f"gate-{uuid.uuid4().hex[:6]}"
    proc, log, _ = start_consumer(ctx, topic, group, "sigterm", max_poll_records=50, gate=gate)
    # Batch 1 runs to its commit; batch 2 is polled and held before it is processed: the stop lands mid-stream
    # whatever the machine's speed.
    open_gate(gate, "process", 1)
    open_gate(gate, "commit", 1)
    wait_at_gate(gate, "process", 2, proc, log)
    proc.send_signal(signal.SIGTERM)
    open_gate(gate, "process", 2)  # the batch in hand is finished, pushed and committed; batch 3 never starts
    open_gate(gate, "commit", 2)
    assert stop(proc, signal.SIGTERM, log=log) == 0, log.read_text()[-3000:]
    assert not waiting_at(gate, "process", 3)
    done = committed(ctx, group, topic)
    got = read_users(ctx.feast_config, users)
    # A commit a rebalance refused (kafka-python rejoins mid-stream at times) leaves the finished batch applied
    # above the committed offset: its partition's next owner replays it as no-ops. Then applied may run ahead of
    # committed, never behind.
    refused = "commit failed after rebalance" in log.read_text()
    # Every event below the committed offset is applied and nothing above it: the batch in hand was finished.
    for uid in users:
        mine = [p for p, (k, _) in zip(positions, records) if k == uid.encode() and p.offset < done.get(p.partition, 0)]
        if refused:
            assert not mine or got[uid].feature_version >= encode_version(max(mine))
        elif mine:
            assert got[uid].feature_version == encode_version(max(mine))
        else:
            assert not got[uid].found
    assert sum(done.values()) < len(records), "stopped too late to test a mid-stream stop"


def test_two_consumers_in_one_group_split_the_partitions(ctx):
    topic, group = new_topic(ctx, partitions=4), f"g-{uuid.uuid4().hex[:6]}"
    a, log_a, port_a = start_consumer(ctx, topic, group, "split-a")
    b = None
    sa: set[int] = set()
    sb: set[int] = set()
    try:
        deadline = time.monotonic() + 180
        while last_assignment(log_a) != {0, 1, 2, 3} and time.monotonic() < deadline:
            time.sleep(0.5)
        b, log_b, port_b = start_consumer(ctx, topic, group, "split-b")
        while time.monotonic() < deadline:
            sa, sb = last_assignment(log_a), last_assignment(log_b)
            if sa and sb and not sa & sb and sa | sb == {0, 1, 2, 3}:
                break
            time.sleep(0.5)
        assert sa and sb and not sa & sb and sa | sb == {0, 1, 2, 3}, (
            f"a={sa} b={sb} a_rc={a.poll()} b_rc={b.poll()}\n{log_tail(log_a)}\n{log_tail(log_b)}")
        users = [f"{uuid.uuid4().hex[:6]}-p{i}" for i in range(40)]
        records = [(users[i % 40].encode(), event(users[i % 40], i, 1_700_000_000 + i)) for i in range(400)]
        positions = produce(ctx, topic, records)
        wait_caught_up(ctx, group, topic, [a, b])
        applied = [metrics(p)['qanchor_ingest_events_total{outcome="applied"}'] for p in (port_a, port_b)]
        assert min(applied) > 0 and sum(applied) == len(records)
        got = read_users(ctx.feast_config, users)
        for uid in users:
            last = max(p for p, (k, _) in zip(positions, records) if k == uid.encode())
            assert got[uid].feature_version == encode_version(last)
    finally:
        assert stop(a, log=log_a) == 0
        if b is not None:
            assert stop(b, log=log_b) == 0
