"""The event log against the real stack: Kafka broker, Feast (file offline store over the Parquet log).

Each test runs `python -m services.eventlog` as a real subprocess on its own topic and consumer group, writing to
a log root of its own, and compares what the log holds with what was produced. The crash test controls timing
with the batch gate (services/ingest/gate.py: "flush" and "commit" per flush number), never by racing the machine:
the SIGKILL lands while the process is held after its segments are durable and before its offsets are committed.
"""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from ingest_harness import (
    committed, event, last_assignment, log_tail, metrics, new_topic, produce, stop, tabular, wait_at_gate,
    wait_caught_up,
)
from services.common.feast_store import apply as feast_apply
from services.common.settings import repo_root
from services.eventlog.history import as_of, read_log
from services.eventlog.segments import SegmentName, segment_files
from services.ingest.gate import open_gate

pytestmark = pytest.mark.integration
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@dataclass
class Ctx:
    bootstrap: str
    tmp: Path
    feast_config: Path
    root: Path  # the log root the Feast FileSource points at (state dir's eventlog/)


@pytest.fixture(scope="module")
def ctx(stack, tmp_path_factory) -> Ctx:
    tmp = tmp_path_factory.mktemp("eventlog")
    assert not os.environ.get("QANCHOR_EVENT_LOG_DIR"), "unset QANCHOR_EVENT_LOG_DIR: this test picks its own root"
    state = tmp / "state"
    return Ctx(stack.kafka_bootstrap, tmp, feast_apply(state), state / "eventlog")


def start_eventlog(ctx: Ctx, topic: str, group: str, name: str, root: Path, *, flush_records: int = 100,
                   flush_interval_s: float = 1.0, max_poll_records: int = 50, gate: Path | None = None,
                   env_extra: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = ctx.tmp / f"{name}.log"
    env = dict(os.environ, EVENTLOG_TOPIC=topic, EVENTLOG_GROUP_ID=group, EVENTLOG_KAFKA_BOOTSTRAP=ctx.bootstrap,
               EVENTLOG_ROOT=str(root), EVENTLOG_METRICS_PORT=str(port), EVENTLOG_FLUSH_RECORDS=str(flush_records),
               EVENTLOG_FLUSH_INTERVAL_S=str(flush_interval_s), EVENTLOG_MAX_POLL_RECORDS=str(max_poll_records),
               EVENTLOG_POLL_TIMEOUT_MS="200", EVENTLOG_SESSION_TIMEOUT_MS="6000",
               QANCHOR_STATE_DIR=str(ctx.tmp / "state"), PYTHONPATH=str(repo_root()))
    if gate is not None:
        env["EVENTLOG_BATCH_GATE"] = str(gate)
    env.update(env_extra or {})
    with log.open("ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "services.eventlog"], env=env, stdout=fh,
                                stderr=subprocess.STDOUT, cwd=repo_root())
    return proc, log, port


def buffered(port: int) -> float:
    """The consumer's buffered-records gauge; -1 until its metrics port answers (it is still starting)."""
    import urllib.error

    try:
        return metrics(port).get("qanchor_eventlog_buffered_records", 0)
    except urllib.error.URLError:
        return -1


def stream(users: list[str], n: int, seed: int) -> list[tuple[bytes, bytes]]:
    """n events with distinct event times over ~3 days, in random user order; a few tabular updates."""
    rng = random.Random(seed)
    times = rng.sample(range(0, 3 * 86400, 7), n)
    out = []
    for i, dt in enumerate(times):
        uid = rng.choice(users)
        value = tabular(uid, i, T0 + dt, 0.25) if i % 25 == 0 else event(uid, i, T0 + dt)
        out.append((uid.encode(), value))
    return out


def sent_events(records: list[tuple[bytes, bytes]]) -> dict[str, dict]:
    return {e["event_id"]: e for e in (json.loads(v) for _, v in records)}


def last_as_of(events: dict[str, dict], uid: str, at: float) -> dict | None:
    mine = [e for e in events.values() if e["user_id"] == uid and e["ts"] <= at]
    return max(mine, key=lambda e: e["ts"]) if mine else None


def assert_point_in_time_matches(ctx: Ctx, root: Path, events: dict[str, dict], users: list[str]) -> None:
    stamps = sorted(e["ts"] for e in events.values())
    # Before everything, at exact event times (inclusive), between two events, after everything.
    instants = [T0 - 1, stamps[0], stamps[len(stamps) // 3], stamps[len(stamps) // 2] + 3, stamps[-1] + 86400]
    for at in instants:
        got = {r.user_id: r for r in as_of(ctx.feast_config, users, at, log_root=root)}
        for uid in users:
            want = last_as_of(events, uid, at)
            assert got[uid].found == (want is not None), (uid, at)
            if want is not None:
                assert (got[uid].event_id, got[uid].ts) == (want["event_id"], want["ts"]), (uid, at)
                assert got[uid].text == want.get("text", "") and got[uid].kind == want["kind"]


def test_the_log_holds_exactly_the_events_sent_and_feast_answers_as_of(ctx):
    topic, group = new_topic(ctx, partitions=4), f"el-{uuid.uuid4().hex[:6]}"
    users = [f"{uuid.uuid4().hex[:6]}-l{i}" for i in range(12)]
    records = stream(users, 400, seed=1)
    events = sent_events(records)
    malformed = [(users[0].encode(), b"{not json"), (b"someone-else", event(users[1], 9999, T0)),
                 (users[2].encode(), event(users[2], 9998, T0, source="no_such_source"))]
    produce(ctx, topic, records[:200] + malformed + records[200:])
    proc, log, port = start_eventlog(ctx, topic, group, "exact", ctx.root)
    try:
        wait_caught_up(ctx, group, topic, [proc])
        m = metrics(port)
    finally:
        assert stop(proc, log=log) == 0, log.read_text()[-3000:]
    logged = read_log(ctx.root, user_ids=users)
    assert logged["event_id"].is_unique
    assert set(logged["event_id"]) == set(events)
    for row in logged.to_dict("records"):
        e = events[row["event_id"]]
        assert (row["user_id"], row["kind"], row["ts"]) == (e["user_id"], e["kind"], e["ts"])
        assert row["event_timestamp"].timestamp() == pytest.approx(e["ts"])
        assert row["text"] == e.get("text", "") and row["source"] == e.get("source", "")
        if e["kind"] == "tabular":
            assert list(row["vector"]) == e["vector"]
        assert row["topic"] == topic
    days = {p.parent.name for p in segment_files_of(ctx.root, topic)}
    assert len(days) >= 3  # one folder per event day
    assert m['qanchor_eventlog_events_total{outcome="logged"}'] == len(events)
    assert m['qanchor_eventlog_events_total{outcome="skipped"}'] == 3
    assert m['qanchor_eventlog_skipped_total{reason="key_mismatch"}'] == 1
    # Ingest dead-letters rejected records; the log never writes to a DLQ.
    from kafka import KafkaConsumer

    dlq = KafkaConsumer(topic + ".dlq", bootstrap_servers=ctx.bootstrap, auto_offset_reset="earliest",
                        consumer_timeout_ms=3000)
    assert list(dlq) == []
    dlq.close()
    assert "eventlog stopped" in log.read_text()
    assert_point_in_time_matches(ctx, ctx.root, events, users)


def test_sigkill_after_write_before_commit_then_restart_logs_each_event_once(ctx):
    topic, group = new_topic(ctx, partitions=2), f"el-crash-{uuid.uuid4().hex[:6]}"
    users = [f"{uuid.uuid4().hex[:6]}-k{i}" for i in range(10)]
    records = stream(users, 900, seed=2)
    events = sent_events(records)
    produce(ctx, topic, records)
    kills = []
    procs = []
    try:
        # Two lives killed with SIGKILL while held between "segments durable" and "offsets committed", each with
        # other flush sizes than the next, so the replay's segments have other boundaries (covered or overlapping).
        for life, (flush_records, kill_at) in enumerate([(100, 2), (170, 1)]):
            gate = ctx.tmp / f"gate-{group}-{life}"
            proc, log, _ = start_eventlog(ctx, topic, group, f"{group}-{life}", ctx.root, gate=gate,
                                          flush_records=flush_records, flush_interval_s=600)
            procs.append(proc)
            for n in range(1, kill_at):
                open_gate(gate, "flush", n)
                open_gate(gate, "commit", n)
            open_gate(gate, "flush", kill_at)
            wait_at_gate(gate, "commit", kill_at, proc, log)
            proc.kill()
            proc.wait()
            done = committed(ctx, group, topic)
            on_disk = {p.name for p in segment_files_of(ctx.root, topic)}
            # The killed flush's segments are on disk beyond the committed offsets: the replay must not double them.
            beyond = [n for n in on_disk if SegmentName.parse(n).last >= done.get(SegmentName.parse(n).partition, 0)]
            assert beyond, (done, sorted(on_disk))
            kills.append({"committed": sum(done.values()), "segments_beyond_commit": len(beyond)})
        assert kills[-1]["committed"] < len(records)
        proc, log, port = start_eventlog(ctx, topic, group, f"{group}-final", ctx.root, flush_records=130)
        procs.append(proc)
        wait_caught_up(ctx, group, topic, [proc])
        m = metrics(port)
        assert stop(proc, log=log) == 0, log.read_text()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    logged = read_log(ctx.root, user_ids=users)
    assert logged["event_id"].is_unique and set(logged["event_id"]) == set(events)  # nothing lost, once each
    import pyarrow.parquet as pq

    raw = sum(pq.read_metadata(p).num_rows for p in segment_files_of(ctx.root, topic))
    print(json.dumps({"records": len(records), "kills": kills, "rows_on_disk_before_dedupe": raw,
                      "covered_deleted_by_final": m.get("qanchor_eventlog_covered_deleted_total", 0)}))
    assert_point_in_time_matches(ctx, ctx.root, events, users)


def test_a_rebalance_drops_the_revoked_buffers_and_the_log_stays_exact(ctx):
    """A consumer that never flushes by size or time holds everything in its buffer; a second member joining the
    group revokes its partitions: the buffers are dropped uncommitted and read again (A seeks back to what it
    keeps, B starts from the last commit), and the final log holds every event once."""
    topic, group = new_topic(ctx, partitions=4), f"el-rebal-{uuid.uuid4().hex[:6]}"
    users = [f"{uuid.uuid4().hex[:6]}-r{i}" for i in range(40)]
    first, second = stream(users, 600, seed=3), stream(users, 400, seed=4)
    for n, (k, v) in enumerate(second):  # other event ids than the first stream's
        second[n] = (k, v.replace(b'"event_id": "', b'"event_id": "second-'))
    produce(ctx, topic, first)
    never = {"flush_records": 10**6, "flush_interval_s": 3600}
    procs = []
    try:
        a, log_a, port_a = start_eventlog(ctx, topic, group, f"{group}-a", ctx.root, **never)
        procs.append(a)
        wait_buffered([(a, port_a, log_a)], len(first))
        b, log_b, port_b = start_eventlog(ctx, topic, group, f"{group}-b", ctx.root, **never)
        procs.append(b)
        deadline = time.monotonic() + 240
        while not ("buffer dropped on revoke" in log_a.read_text() and last_assignment(log_b)):
            assert a.poll() is None and b.poll() is None and time.monotonic() < deadline, log_tail(log_a)
            time.sleep(0.3)
        produce(ctx, topic, second)
        # Between them they hold everything again (A's kept partitions re-read from the seek, B's from the start).
        wait_buffered([(a, port_a, log_a), (b, port_b, log_b)], len(first) + len(second))
        assert sum(committed(ctx, group, topic).values()) == 0 and not segment_files_of(ctx.root, topic)
        dropped = metrics(port_a)["qanchor_eventlog_rebalance_dropped_records_total"]
        held_by_b = buffered(port_b)
        # SIGTERM flushes what each holds and commits it. A leaving is one more rebalance for B, which drops its
        # buffer and re-reads; what B holds when its own SIGTERM lands is flushed, the rest stays uncommitted.
        assert stop(a, log=log_a) == 0 and stop(b, log=log_b) == 0
        # So a successor picks up exactly from the commits: the log must end with every event, once.
        c, log_c, port_c = start_eventlog(ctx, topic, group, f"{group}-c", ctx.root)
        procs.append(c)
        wait_buffered([(c, port_c, log_c)], 0)  # serving metrics: its SIGTERM handler is in place
        wait_caught_up(ctx, group, topic, [c])
        assert stop(c, log=log_c) == 0, log_tail(log_c)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert dropped >= len(first) and held_by_b > 0  # >: a join may take two rounds, each dropping what A re-read
    logged = read_log(ctx.root, user_ids=users)
    assert logged["event_id"].is_unique
    assert set(logged["event_id"]) == set(sent_events(first)) | set(sent_events(second))


def test_compaction_beside_the_running_writer_keeps_every_event_once_and_feast_answers_the_same(ctx):
    """The service compacts its partitions every second (no age rule) while it writes flushes of 25 records; a
    second wave of events lands on days already compacted. After a SIGTERM, `qanchor events compact` merges what
    is left. The log holds every event once, one file per day and partition, and Feast's as-of answers are exact."""
    topic, group = new_topic(ctx, partitions=2), f"el-compact-{uuid.uuid4().hex[:6]}"
    users = [f"{uuid.uuid4().hex[:6]}-c{i}" for i in range(10)]
    first, second = stream(users, 400, seed=5), stream(users, 200, seed=6)
    for n, (k, v) in enumerate(second):
        second[n] = (k, v.replace(b'"event_id": "', b'"event_id": "late-'))
    events = sent_events(first) | sent_events(second)
    compacting = {"EVENTLOG_COMPACT_INTERVAL_S": "1", "EVENTLOG_COMPACT_MIN_AGE_S": "0"}
    proc, log, port = start_eventlog(ctx, topic, group, "compact", ctx.root, flush_records=25,
                                     max_poll_records=25, env_extra=compacting)
    try:
        for wave in (first, second):
            produce(ctx, topic, wave)
            wait_caught_up(ctx, group, topic, [proc])
            deadline = time.monotonic() + 60  # the next passes merge what the wave's flushes wrote
            while not one_file_per_day_and_partition(ctx.root, topic):
                assert proc.poll() is None and time.monotonic() < deadline, log_tail(log)
                time.sleep(0.5)
            merged = [p for p in segment_files_of(ctx.root, topic) if SegmentName.parse(p.name).compacted]
            assert merged and read_log(ctx.root, user_ids=users)["event_id"].is_unique
        m = metrics(port)
    finally:
        assert stop(proc, log=log) == 0, log_tail(log)
    assert m["qanchor_eventlog_compacted_files_total"] > m["qanchor_eventlog_compaction_files_written_total"] > 0
    assert m.get('qanchor_eventlog_compaction_failures_total{error="OSError"}', 0) == 0
    assert 'msg="event log compacted"' in log.read_text()
    files = segment_files_of(ctx.root, topic)
    # The operator's command finds this topic done (one file per day and partition; events span ~3 days).
    done = subprocess.run([sys.executable, "-m", "services.cli", "events", "compact", "--root", str(ctx.root),
                           "--min-age", "0", "--json"], capture_output=True, text=True, timeout=120, cwd=repo_root())
    assert done.returncode == 0, done.stdout + done.stderr
    assert segment_files_of(ctx.root, topic) == files and len(files) <= 2 * 3
    assert not set(json.loads(done.stdout)["written"]) & {str(p) for p in files}
    logged = read_log(ctx.root, user_ids=users)
    assert logged["event_id"].is_unique and set(logged["event_id"]) == set(events)  # nothing lost, once each
    for row in logged.to_dict("records"):
        e = events[row["event_id"]]
        assert (row["user_id"], row["kind"], row["ts"], row["text"]) == (e["user_id"], e["kind"], e["ts"],
                                                                          e.get("text", ""))
    assert_point_in_time_matches(ctx, ctx.root, events, users)


def test_compaction_killed_at_random_points_never_changes_what_readers_see(tmp_path):
    """`qanchor events compact` as a real process, SIGKILLed mid-pass over 2,000 small files, five times, then run
    to the end: after every kill the log reads exactly as before (every event once,
    every column), and the final pass leaves one file per day and partition."""
    from services.eventlog.segments import event_row, write_segment
    from services.ingest.schema import Event
    from training.data.event_log import read_events

    root = tmp_path / "log"
    offsets = [0] * 4
    for day in range(10):
        for flush in range(50):
            for p in range(4):
                rows = [event_row(Event(f"k{p}-{offsets[p] + i}", f"u{(offsets[p] + i) % 7}-{p}", "event",
                                        T0 + day * 86400 + flush * 60 + i, "liked", f"t{i}"),
                                  "drill", p, offsets[p] + i, created=T0) for i in range(5)]
                write_segment(root, SegmentName("drill", p, offsets[p], offsets[p] + 4), rows)
                offsets[p] += 5
    want = read_events(root)
    cmd = [sys.executable, "-m", "services.cli", "events", "compact", "--root", str(root), "--min-age", "0",
           "--target-rows", "600"]
    counts, rng = [], random.Random(7)
    for life in range(5):
        # Killed once it is seen merging (its file count falls), a random moment later: mid-pass whatever the
        # machine's speed, at a different point of the write-then-delete sequence each time.
        before = len(segment_files(root))
        proc = subprocess.Popen(cmd, cwd=repo_root(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while len(segment_files(root)) >= before and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.2))
        proc.kill()
        proc.wait()
        counts.append(len(segment_files(root)))
        assert read_events(root).equals(want), f"after kill {life + 1}"
    done = subprocess.run(cmd + ["--json"], cwd=repo_root(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    files = segment_files(root)
    assert len(files) == len({(f.parent.name, SegmentName.parse(f.name).partition) for f in files}) == 40
    assert read_events(root).equals(want)
    print(json.dumps({"files_after_each_kill": counts, "final": json.loads(done.stdout)["files_after"]}))
    assert sum(40 < c < 2000 for c in counts) >= 3, counts  # most kills landed mid-pass


def one_file_per_day_and_partition(root: Path, topic: str) -> bool:
    files = segment_files_of(root, topic)
    return len(files) == len({(p.parent.name, SegmentName.parse(p.name).partition) for p in files})


def wait_buffered(members: list[tuple[subprocess.Popen, int, Path]], n: int, timeout: float = 240) -> None:
    """Until the members hold n records between them (and, for n=0, until they serve metrics at all)."""
    deadline = time.monotonic() + timeout
    while min(held := [buffered(port) for _, port, _ in members]) < 0 or sum(held) < n:
        for proc, _, log in members:
            assert proc.poll() is None, log_tail(log)
        assert time.monotonic() < deadline, held
        time.sleep(0.3)


def segment_files_of(root: Path, topic: str) -> list[Path]:
    return [p for p in segment_files(root) if SegmentName.parse(p.name).topic == topic]
