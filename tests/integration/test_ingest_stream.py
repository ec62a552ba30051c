"""The ingest service against the real stack: Kafka broker, Triton text_encoder, Feast online store.

Each test runs `python -m services.ingest` as a real subprocess on its own topic, DLQ topic and consumer group,
with user ids unique to the test, so tests do not see each other's data.
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from services.common.feast_store import apply as feast_apply
from services.common.feast_store import get_store
from services.common.features_online import FeatureReader
from services.common.settings import repo_root
from services.ingest.gate import open_gate, waiting_at
from services.ingest.metrics import read_metrics
from services.ingest.producer import make_producer
from services.ingest.transform import Position, decode_version, encode_version, load_ingest_spec
from training.export.text_encoder import export_text_encoder

pytestmark = pytest.mark.integration
SPEC = load_ingest_spec()
VOCAB = [f"Rated '{t} ({1960 + i % 40})' [{g}] {1 + i % 5}/5" for i, (t, g) in enumerate(
    (f"Movie {i}", ["Drama", "Comedy", "Action, Thriller", "Animation", "Sci-Fi"][i % 5]) for i in range(90))]


@dataclass
class Ctx:
    bootstrap: str
    triton: str
    feast_config: Path
    tmp: Path
    # Redis of the L2 text-vector cache the consumers share; "" = off.
    redis_url: str = ""


@pytest.fixture(scope="module")
def ctx(stack, tmp_path_factory) -> Ctx:
    import tritonclient.grpc as grpcclient

    export_text_encoder(stack.model_repository)
    client = grpcclient.InferenceServerClient(stack.triton_grpc)
    client.load_model("text_encoder")  # explicit model control; loading torch + weights takes a while on 2 cores
    assert client.is_model_ready("text_encoder")
    return Ctx(stack.kafka_bootstrap, stack.triton_grpc, Path(stack.feast_config),
               tmp_path_factory.mktemp("ingest"), redis_url=stack.redis_url)


def new_topic(ctx: Ctx, partitions: int = 4) -> str:
    from kafka.admin import KafkaAdminClient, NewTopic

    name = f"test.ingest.{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=ctx.bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1), NewTopic(name + ".dlq", 1, 1)])
    finally:
        admin.close()
    return name


def start_consumer(ctx: Ctx, topic: str, group: str, name: str, feast_config: Path | None = None,
                   max_poll_records: int = 200, gate: Path | None = None,
                   normalisation: Path | None = None,
                   extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path, int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = ctx.tmp / f"{name}.log"
    env = dict(os.environ, INGEST_TOPIC=topic, INGEST_DLQ_TOPIC=topic + ".dlq", INGEST_GROUP_ID=group,
               INGEST_KAFKA_BOOTSTRAP=ctx.bootstrap, INGEST_TRITON_URL=ctx.triton,
               INGEST_FEAST_CONFIG=str(feast_config or ctx.feast_config), INGEST_METRICS_PORT=str(port),
               INGEST_MAX_POLL_RECORDS=str(max_poll_records), INGEST_RETRY_BACKOFF_S="0.5",
               INGEST_SESSION_TIMEOUT_MS="6000", QANCHOR_STATE_DIR=str(ctx.tmp / "state"),
               INGEST_VECTOR_CACHE_URL=ctx.redis_url)
    if gate is not None:  # the batch-cycle hook (services/ingest/gate.py): the test decides where it stops
        env["INGEST_BATCH_GATE"] = str(gate)
    if normalisation is not None:  # the served model's constants: ingest derives `tabular` from raw events
        env["INGEST_NORMALISATION"] = str(normalisation)
    env.update(extra_env or {})
    with log.open("ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "services.ingest"], env=env, stdout=fh,
                                stderr=subprocess.STDOUT, cwd=repo_root())
    return proc, log, port


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60, log: Path | None = None) -> int:
    """Signal the service and wait for its exit code; one that does not exit in time dumps every thread's stack
    into its log (SIGUSR1, services/common/signals.py), is killed, and the test fails with that log's tail."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(3)
        proc.kill()
        proc.wait()
        pytest.fail(f"no exit {timeout:.0f} s after {signal.Signals(sig).name}; the stacks are at the end of the log\n"
                    + (log_tail(log, 80) if log is not None else "(no log)"))


def metrics(port: int) -> dict[str, float]:
    return read_metrics(f"http://127.0.0.1:{port}/metrics")


_ADMINS: dict[str, object] = {}


def committed(ctx: Ctx, group: str, topic: str) -> dict[int, int]:
    from kafka.admin import KafkaAdminClient

    admin = _ADMINS.get(ctx.bootstrap)
    if admin is None:  # one admin connection per broker: these are polled several times a second
        admin = _ADMINS[ctx.bootstrap] = KafkaAdminClient(bootstrap_servers=ctx.bootstrap)
    offs = admin.list_group_offsets(group).get(group, {})
    return {tp.partition: om.offset for tp, om in offs.items() if tp.topic == topic and om.offset >= 0}


def end_offsets(ctx: Ctx, topic: str) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=ctx.bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
        return {tp.partition: off for tp, off in c.end_offsets(tps).items()}
    finally:
        c.close()


def wait_caught_up(ctx: Ctx, group: str, topic: str, procs: list[subprocess.Popen], timeout: float = 240) -> None:
    end = {p: o for p, o in end_offsets(ctx, topic).items() if o > 0}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = committed(ctx, group, topic)
        if all(got.get(p, 0) >= o for p, o in end.items()):
            return
        for proc in procs:
            assert proc.poll() is None, f"consumer exited with {proc.returncode} before catching up"
        time.sleep(0.5)
    raise AssertionError(f"group {group} did not catch up in {timeout}s: committed {got}, end {end}")


def produce(ctx: Ctx, topic: str, records: list[tuple[bytes | None, bytes]]) -> list[Position]:
    producer = make_producer(ctx.bootstrap)
    try:
        futures = [producer.send(topic, key=k, value=v) for k, v in records]
        producer.flush()
        return [Position(m.partition, m.offset) for m in (f.get(timeout=60) for f in futures)]
    finally:
        producer.close()


def event(uid: str, i: int, ts: float, source: str | None = None, text: str | None = None) -> bytes:
    return json.dumps({"schema_version": 1, "event_id": f"{uid}-{i}", "user_id": uid, "kind": "event",
                       "source": source or SPEC.source_names[i % len(SPEC.source_names)], "ts": ts,
                       "text": text or VOCAB[i % len(VOCAB)]}).encode()


def tabular(uid: str, i: int, ts: float, value: float) -> bytes:
    return json.dumps({"schema_version": 1, "event_id": f"{uid}-t{i}", "user_id": uid, "kind": "tabular",
                       "ts": ts, "vector": [value] * SPEC.features.tabular_dim}).encode()


def reference_vectors(texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 computed in-process by the model env (torch), not through Triton: the reference."""
    code = ("import json,sys,numpy as np; from training.data.encoder import TextEncoder; "
            "v=TextEncoder().encode(json.load(sys.stdin)); np.save(sys.stdout.buffer, v)")
    proc = subprocess.run([str(repo_root() / ".venv-model" / "bin" / "python"), "-c", code],
                          input=json.dumps(texts).encode(), capture_output=True, cwd=repo_root(),
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return np.load(io.BytesIO(proc.stdout))


def read_users(feast_config: Path, users: list[str]):
    return {u.user_id: u for u in FeatureReader(get_store(feast_config), SPEC.features).get(users)}


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
    proc, log, port = start_consumer(ctx, topic, group, "basic")
    try:
        wait_caught_up(ctx, group, topic, [proc])
        got = read_users(ctx.feast_config, users)
        m = metrics(port)
    finally:
        assert stop(proc, log=log) == 0, log.read_text()[-3000:]

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
    assert "ingest stopped" in log.read_text()


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
    proc, log, _ = start_consumer(ctx, topic, group, "derived", normalisation=constants)
    try:
        wait_caught_up(ctx, group, topic, [proc])
        got = read_users(ctx.feast_config, users)
        produce(ctx, topic, records)  # the same events again, at new offsets
        wait_caught_up(ctx, group, topic, [proc])
        again = read_users(ctx.feast_config, users)
    finally:
        assert stop(proc, log=log) == 0, log.read_text()[-3000:]
    assert "tabular statistics derived from events" in log.read_text()
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


def wait_at_gate(gate: Path, stage: str, batch: int, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    """Until the consumer waits at `stage` of batch `batch` (it cannot get past it before the test opens it)."""
    deadline = time.monotonic() + timeout
    while not waiting_at(gate, stage, batch):
        assert proc.poll() is None, f"consumer exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"consumer never reached {stage} of batch {batch}"
        time.sleep(0.05)


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


def last_assignment(log: Path) -> set[int]:
    """Partitions the consumer owns per its log: its last "assigned" line, or nothing after a later "revoked"."""
    lines = re.findall(r'partitions (assigned|revoked)" partitions=([0-9,]*)', log.read_text())
    if not lines or lines[-1][0] == "revoked":
        return set()
    return {int(p) for p in lines[-1][1].split(",") if p}


def log_tail(log: Path, n: int = 25) -> str:
    return f"--- {log.name} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-n:])


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
