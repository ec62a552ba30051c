"""The event log's segments and flush/commit ordering, driven with an in-memory consumer (pure logic + files).

The real Kafka/Feast versions of these properties are in tests/integration/test_eventlog.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("pyarrow", reason="services env only (Parquet)")
pytest.importorskip("prometheus_client", reason="services env only (the worker's metrics)")
pytest.importorskip("kafka", reason="services env only (Kafka structs)")

from kafka.structs import TopicPartition

from services.eventlog.consumer import EventLogWorker, FlushPolicy
from services.eventlog.history import read_log
from services.eventlog.metrics import EventLogMetrics
from services.eventlog.segments import SegmentName, event_row, segment_files, write_atomic, write_segment, to_table
from services.ingest.schema import Event

TOPIC = "qanchor.events.v1"
SOURCES = ("liked", "neutral", "disliked")
TABULAR_DIM = 4
DAY = 86400.0
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@dataclass
class Rec:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    topic: str = TOPIC
    headers: list = field(default_factory=list)
    timestamp: int = int((T0 + 30 * DAY) * 1000)


def event(uid: str, i: int, ts: float, source: str = "liked", text: str | None = None) -> bytes:
    return json.dumps({"schema_version": 1, "event_id": f"{uid}-{i}", "user_id": uid, "kind": "event",
                       "source": source, "ts": ts, "text": text or f"text {i}"}).encode()


def records(n: int, partitions: int = 2, start: int = 0) -> list[Rec]:
    """n valid events spread over users and partitions, offsets counting per partition from `start`."""
    out, next_off = [], {p: start for p in range(partitions)}
    for i in range(n):
        p = i % partitions
        uid = f"u{p}-{i % 5}"
        out.append(Rec(p, next_off[p], uid.encode(), event(uid, i, T0 + i * 3600)))
        next_off[p] += 1
    return out


class FakeConsumer:
    """Kafka's consumer as the worker uses it: scripted polls, commits and seeks recorded."""

    def __init__(self, polls: list[list[Rec]], root: Path | None = None) -> None:
        self.polls = list(polls)
        self.root = root
        self.commits: list[dict[tuple[int, int], int]] = []
        self.seeks: list[tuple[int, int]] = []
        self.files_at_commit: list[int] = []

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        batch = self.polls.pop(0) if self.polls else []
        out: dict = {}
        for r in batch:
            out.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
        return out

    def commit(self, offsets, timeout_ms=None) -> None:  # type: ignore[no-untyped-def]
        if self.root is not None:
            self.files_at_commit.append(len(segment_files(self.root)))
        self.commits.append({(tp.partition, 0): om.offset for tp, om in offsets.items()})

    def seek(self, tp, offset: int) -> None:  # type: ignore[no-untyped-def]
        self.seeks.append((tp.partition, offset))


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def worker(consumer: FakeConsumer, root: Path, policy: FlushPolicy | None = None, **kw) -> EventLogWorker:
    return EventLogWorker(consumer, root, SOURCES, TABULAR_DIM, EventLogMetrics.create(),
                          policy or FlushPolicy(records=1000, interval_s=60, max_attempts=1, retry_backoff_s=0),
                          clock=lambda: T0 + 40 * DAY, **kw)


def sample(metrics: EventLogMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# ---- segments ------------------------------------------------------------------------------------------------
def test_segment_names_round_trip_and_cover():
    name = SegmentName(TOPIC, 3, 100, 199)
    assert name.filename == "qanchor.events.v1-p3-100-199.parquet"
    assert SegmentName.parse(name.filename) == name
    assert SegmentName.parse(".qanchor.events.v1-p3-100-199.parquet.12.tmp") is None
    assert name.covers(SegmentName(TOPIC, 3, 100, 150)) and name.covers(name)
    assert not name.covers(SegmentName(TOPIC, 3, 150, 250))
    assert not name.covers(SegmentName(TOPIC, 2, 120, 130))


def rows_of(evs: list[tuple[str, float]], partition: int = 0, first: int = 0) -> list[dict]:
    return [event_row(Event(eid, "u1", "event", ts, "liked", f"t-{eid}"), TOPIC, partition, first + i, created=T0)
            for i, (eid, ts) in enumerate(evs)]


def test_a_segment_writes_one_file_per_event_day_and_a_replay_replaces_it(tmp_path):
    rows = rows_of([("a", T0 + 10), ("b", T0 + DAY + 10), ("c", T0 + 20)])
    name = SegmentName(TOPIC, 0, 0, 2)
    first = write_segment(tmp_path, name, rows)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in first.files) == [
        f"date=2026-01-01/{name.filename}", f"date=2026-01-02/{name.filename}"]
    write_segment(tmp_path, name, rows)  # the replay of the same range: same names, replaced
    assert len(segment_files(tmp_path)) == 2
    assert list(read_log(tmp_path)["event_id"]) == ["a", "c", "b"]


def test_a_covering_segment_deletes_the_covered_one_and_readers_dedupe_overlaps(tmp_path):
    rows = rows_of([(f"e{i}", T0 + i) for i in range(10)])
    write_segment(tmp_path, SegmentName(TOPIC, 0, 0, 4), rows[:5])
    write_segment(tmp_path, SegmentName(TOPIC, 0, 3, 6), rows[3:7])  # overlaps, does not cover: both stay
    assert len(segment_files(tmp_path)) == 2
    assert list(read_log(tmp_path)["event_id"]) == [f"e{i}" for i in range(7)]
    out = write_segment(tmp_path, SegmentName(TOPIC, 0, 0, 9), rows)  # covers both
    assert sorted(p.name for p in out.deleted) == [f"{TOPIC}-p0-0-4.parquet", f"{TOPIC}-p0-3-6.parquet"]
    assert [p.name for p in segment_files(tmp_path)] == [f"{TOPIC}-p0-0-9.parquet"]
    assert list(read_log(tmp_path)["event_id"]) == [f"e{i}" for i in range(10)]


def test_read_log_filters_users_and_time(tmp_path):
    rows = rows_of([("a", T0), ("b", T0 + DAY), ("c", T0 + 2 * DAY)])
    rows[1]["user_id"] = "u2"
    write_segment(tmp_path, SegmentName(TOPIC, 0, 0, 2), rows)
    assert list(read_log(tmp_path, user_ids=["u1"])["event_id"]) == ["a", "c"]
    assert list(read_log(tmp_path, start=T0 + 1, end=T0 + 2 * DAY)["event_id"]) == ["b", "c"]
    assert read_log(tmp_path / "nothing-yet").empty


def test_an_interrupted_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    path = tmp_path / "date=2026-01-01" / "x-p0-0-0.parquet"
    write_atomic(to_table(rows_of([("old", T0)])), path)

    def broken(table, where, **kw):  # type: ignore[no-untyped-def]
        where.write(b"PAR1 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError):
        write_atomic(to_table(rows_of([("new", T0)])), path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    monkeypatch.undo()
    assert list(pq.read_table(path)["event_id"].to_pylist()) == ["old"]


# ---- the worker ------------------------------------------------------------------------------------------------
def test_offsets_are_committed_only_after_the_segments_are_on_disk(tmp_path):
    recs = records(6)
    consumer = FakeConsumer([recs], root=tmp_path)
    w = worker(consumer, tmp_path)
    w.poll_once()
    assert consumer.commits == []  # below the size, before the interval: still buffered
    w.flush()
    assert consumer.commits == [{(0, 0): 3, (1, 0): 3}]
    assert consumer.files_at_commit == [len(segment_files(tmp_path))] and consumer.files_at_commit[0] > 0
    assert sorted(read_log(tmp_path)["event_id"]) == sorted(json.loads(r.value)["event_id"] for r in recs)
    logged = read_log(tmp_path)
    assert set(logged.columns) >= {"event_id", "user_id", "event_timestamp", "created", "ts", "kind", "source",
                                   "text", "vector", "attributes", "topic", "partition", "offset"}
    assert str(logged["event_timestamp"].dt.tz) == "UTC"


def test_flush_by_size_and_by_time(tmp_path):
    clock = Clock()
    consumer = FakeConsumer([records(3), [], [], records(2, start=10)])
    w = worker(consumer, tmp_path, FlushPolicy(records=5, interval_s=10, max_attempts=1), monotonic=clock)
    w.poll_once()
    clock.t = 9.9
    w.poll_once()
    assert consumer.commits == []
    clock.t = 10.0
    w.poll_once()  # the oldest buffered record waited the interval: flushed with no new record
    assert len(consumer.commits) == 1
    w.poll_once()
    assert w.buffered == 2 and len(consumer.commits) == 1
    consumer.polls.append(records(4, start=20))
    w.poll_once()  # 6 >= 5 records: flushed by size, time not yet due
    assert len(consumer.commits) == 2 and w.buffered == 0


def test_records_ingest_rejects_are_skipped_counted_and_committed_past(tmp_path):
    good = Rec(0, 0, b"u1", event("u1", 1, T0))
    bad = [Rec(0, 1, b"u1", b"{not json"), Rec(0, 2, b"u1", event("u1", 2, T0, source="nowhere")),
           Rec(0, 3, b"someone-else", event("u1", 3, T0)), Rec(0, 4, b"u1", None)]
    consumer = FakeConsumer([[good, *bad]])
    w = worker(consumer, tmp_path)
    w.poll_once()
    w.flush()
    assert list(read_log(tmp_path)["event_id"]) == ["u1-1"]
    assert consumer.commits == [{(0, 0): 5}]  # past the skipped ones: they are ingest's DLQ's business
    m = w.metrics
    assert sample(m, "qanchor_eventlog_events_total", outcome="skipped") == 4
    assert sample(m, "qanchor_eventlog_events_total", outcome="logged") == 1
    for reason in ("invalid_json", "unknown_source", "key_mismatch", "not_an_object"):
        assert sample(m, "qanchor_eventlog_skipped_total", reason=reason) == 1
    # A partition whose every record was skipped writes no file but still commits.
    consumer.polls.append([Rec(1, 7, b"u2", b"[]")])
    w.poll_once()
    w.flush()
    assert consumer.commits[-1] == {(1, 0): 8} and len(segment_files(tmp_path)) == 1


def test_a_crash_between_write_and_commit_replays_to_each_event_once(tmp_path):
    recs = records(40, partitions=2)

    class Killed(BaseException):
        pass

    def die_before_commit(stage: str, n: int) -> None:
        if (stage, n) == ("commit", 2):
            raise Killed()

    first = FakeConsumer([recs[:10], recs[10:24], recs[24:]])
    w = worker(first, tmp_path, FlushPolicy(records=10, interval_s=60, max_attempts=1), gate=die_before_commit)
    w.poll_once()
    with pytest.raises(Killed):
        w.poll_once()  # segments of flush 2 are on disk, its offsets are not committed
    assert len(first.commits) == 1
    committed = first.commits[0]  # {(partition, 0): next offset}
    # The restart re-reads from the commit, with other batch boundaries (a bigger flush).
    replay = [r for r in recs if r.offset >= committed[(r.partition, 0)]]
    second = FakeConsumer([replay[:7], replay[7:]])
    w2 = worker(second, tmp_path, FlushPolicy(records=1000, interval_s=60, max_attempts=1))
    w2.poll_once()
    w2.poll_once()
    w2.flush()
    logged = read_log(tmp_path)
    assert sorted(logged["event_id"]) == sorted(json.loads(r.value)["event_id"] for r in recs)
    assert logged["event_id"].is_unique
    assert sample(w2.metrics, "qanchor_eventlog_covered_deleted_total") >= 1  # flush 2's files were covered


def test_a_revoke_drops_the_revoked_buffers_and_an_assign_seeks_back_to_them(tmp_path):
    consumer = FakeConsumer([records(6, start=40)])
    w = worker(consumer, tmp_path)
    w.poll_once()
    w.on_revoked([TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])
    # Nothing written, nothing committed: the listener runs where it may not block on the broker.
    assert consumer.commits == [] and segment_files(tmp_path) == [] and w.buffers == {} and w.buffered == 0
    assert sample(w.metrics, "qanchor_eventlog_rebalance_dropped_records_total") == 6
    w.on_assigned([TopicPartition(TOPIC, 1)])
    assert consumer.seeks == [(1, 40)]  # partition 0 went elsewhere: its new owner starts at the last commit
    assert w.rewind == {}
    # Re-read after the seek, the records are logged once.
    consumer.polls.append([r for r in records(6, start=40) if r.partition == 1])
    w.poll_once()
    w.flush()
    assert consumer.commits == [{(1, 0): 43}] and len(read_log(tmp_path)) == 3


def test_a_revoke_of_one_partition_keeps_the_others_buffered(tmp_path):
    consumer = FakeConsumer([records(6)])
    w = worker(consumer, tmp_path)
    w.poll_once()
    w.on_revoked([TopicPartition(TOPIC, 1)])
    assert set(w.buffers) == {(TOPIC, 0)} and w.buffered == 3
    w.flush()
    assert consumer.commits == [{(0, 0): 3}]


def test_a_flush_that_keeps_failing_stops_the_worker_uncommitted(tmp_path):
    blocked = tmp_path / "log"
    blocked.write_text("not a folder")
    consumer = FakeConsumer([records(2)])
    w = worker(consumer, blocked, FlushPolicy(records=1, interval_s=60, max_attempts=2, retry_backoff_s=0))
    with pytest.raises(RuntimeError, match="cannot write the event log"):
        w.poll_once()
    assert consumer.commits == []
    assert sample(w.metrics, "qanchor_eventlog_flush_failures_total", error="NotADirectoryError") == 2


# ---- the stack component ---------------------------------------------------------------------------------------
def test_the_stack_runs_the_log_on_its_own_port_into_the_root_feast_reads(tmp_path, monkeypatch):
    from services.common.settings import PORT_OFFSETS
    from services.stack.apps import EventLog
    from services.stack.settings import StackSettings

    monkeypatch.delenv("QANCHOR_EVENT_LOG_DIR", raising=False)
    assert sorted(PORT_OFFSETS.values()) == sorted(set(PORT_OFFSETS.values()))  # +63 is nobody else's
    settings = StackSettings(state_dir=tmp_path / "state", port_base=21000)
    comp = EventLog(settings)
    assert comp.ports() == [21063]
    env = comp.env()
    assert env["EVENTLOG_ROOT"] == str(settings.layout.root / "eventlog")
    assert env["EVENTLOG_KAFKA_BOOTSTRAP"] == "127.0.0.1:21092"
    if Path(settings.services_python).exists():
        assert comp.command()[-2:] == ["-m", "services.eventlog"]


# ---- the CLI ---------------------------------------------------------------------------------------------------
def test_cli_times_need_a_zone_or_are_unix_seconds():
    from services.cli.commands._event_history import parse_time
    from services.cli.output import CliError

    assert parse_time("2026-01-01T00:00:00Z").timestamp() == T0
    assert parse_time("2026-01-01T02:00:00+02:00").timestamp() == T0
    assert parse_time(str(T0)).timestamp() == T0
    with pytest.raises(CliError, match="no time zone; add Z"):
        parse_time("2026-01-01T00:00:00")
    with pytest.raises(CliError, match="not a time"):
        parse_time("yesterday")
    with pytest.raises(CliError, match="e.g. 2026-01-01T00:00:00Z"):  # a date alone: the example parses
        parse_time("2026-01-01")
    assert parse_time("2026-01-01T00:00:00Z").timestamp() == T0


def test_cli_history_prints_each_event_once(tmp_path, capsys):
    from services.cli import __main__ as cli

    rows = rows_of([("a", T0), ("b", T0 + DAY)])
    write_segment(tmp_path, SegmentName(TOPIC, 0, 0, 1), rows)
    write_segment(tmp_path, SegmentName(TOPIC, 0, 1, 3), rows[1:])  # a replay's overlap
    assert cli.main(["events", "history", "u1", "--root", str(tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [e["event_id"] for e in doc["events"]] == ["a", "b"]
    assert doc["events"][1]["time"] == "2026-01-02T00:00:00Z"
    assert cli.main(["events", "history", "u1", "--root", str(tmp_path / "missing")]) == 1
    assert "qanchor stack up eventlog" in capsys.readouterr().err


def test_the_feast_function_the_as_of_reader_wraps_is_still_there():
    """history.as_of reads the log as one Dask partition by wrapping Feast's `_read_datasource` (a Dask sort gap,
    docs/eventlog.md); a Feast upgrade that renames it must fail here, not in a user's point-in-time read."""
    dask_store = pytest.importorskip("feast.infra.offline_stores.dask")
    from services.eventlog.history import _one_partition_reads

    original = dask_store._read_datasource
    with _one_partition_reads():
        assert dask_store._read_datasource is not original
    assert dask_store._read_datasource is original
