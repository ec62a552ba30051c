"""Compaction of the event log (services/eventlog/compact.py) on real Parquet files: what readers see never changes.

The same against the running eventlog service and Feast: tests/integration/test_eventlog.py.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

pytest.importorskip("pyarrow", reason="services env only (Parquet)")
pytest.importorskip("prometheus_client", reason="services env only (the metrics)")

from services.eventlog.compact import (
    CompactionBusy, CompactionPolicy, PeriodicCompaction, compact, compaction_lock, merge_run, plan,
    CompactionReport,
)
from services.eventlog.metrics import EventLogMetrics
from services.eventlog.segments import SegmentName, event_row, segment_files, write_segment
from services.ingest.schema import Event
from training.data.event_log import read_events

TOPIC = "qanchor.events.v1"
DAY = 86400.0
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
NOW = T0 + 400 * DAY   # "now" for the age rule: every file written here is older than an hour by it
ANY_AGE = CompactionPolicy(min_age_s=0)


def rows(partition: int, first: int, last: int, day: int = 0, user: str = "u1") -> list[dict]:
    """One row per offset first..last, all on day `day`, event ids by (partition, offset)."""
    return [event_row(Event(f"p{partition}-{o}", user, "event", T0 + day * DAY + o, "liked", f"t{o}"), TOPIC,
                      partition, o, created=T0 + 500 * DAY) for o in range(first, last + 1)]


def flush(root: Path, partition: int, first: int, last: int, day: int = 0) -> None:
    write_segment(root, SegmentName(TOPIC, partition, first, last), rows(partition, first, last, day))


def names(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in segment_files(root))


def snapshot(root: Path):
    return read_events(root)


def test_a_compacted_name_round_trips_and_never_deletes_what_it_covers(tmp_path):
    name = SegmentName(TOPIC, 3, 100, 199, compacted=True)
    assert name.filename == "qanchor.events.v1-p3-100-199-c.parquet"
    assert SegmentName.parse(name.filename) == name
    assert SegmentName.parse("qanchor.events.v1-p3-100-199.parquet") == SegmentName(TOPIC, 3, 100, 199)
    assert SegmentName.parse("a-c-p1-2-3-c.parquet") == SegmentName("a-c", 1, 2, 3, compacted=True)
    with pytest.raises(ValueError, match="compacted file's name"):
        write_segment(tmp_path, name, rows(3, 100, 101))


def test_a_day_of_small_flushes_becomes_one_file_per_partition_and_readers_see_the_same(tmp_path):
    for p in (0, 1):
        for first in range(0, 50, 10):
            flush(tmp_path, p, first, first + 9, day=first // 30)  # offsets 0-29 day 0, 30-49 day 1
    flush(tmp_path, 2, 0, 9)  # one file alone on its day and partition: left as it is
    before = snapshot(tmp_path)
    report = compact(tmp_path, ANY_AGE, now=NOW)
    assert names(tmp_path) == sorted([
        f"date=2026-01-01/{TOPIC}-p0-0-29-c.parquet", f"date=2026-01-01/{TOPIC}-p1-0-29-c.parquet",
        f"date=2026-01-02/{TOPIC}-p0-30-49-c.parquet", f"date=2026-01-02/{TOPIC}-p1-30-49-c.parquet",
        f"date=2026-01-01/{TOPIC}-p2-0-9.parquet"])
    assert (report.runs, report.files_in, report.rows_in, report.duplicates) == (4, 10, 100, 0)
    assert snapshot(tmp_path).equals(before)  # every column, every row, in the readers' order
    assert compact(tmp_path, ANY_AGE, now=NOW).runs == 0  # a second pass has nothing to do


def test_second_copies_are_dropped_as_the_readers_drop_them(tmp_path):
    flush(tmp_path, 0, 0, 9)
    flush(tmp_path, 0, 5, 14)   # a replay with other boundaries: offsets 5-9 twice, same rows
    retried = rows(0, 15, 16)
    retried[1]["event_id"] = retried[0]["event_id"]  # a producer's retry: the same event at a later offset
    write_segment(tmp_path, SegmentName(TOPIC, 0, 15, 16), retried)
    before = snapshot(tmp_path)
    report = compact(tmp_path, ANY_AGE, now=NOW)
    assert (report.rows_in, report.rows_out, report.duplicates) == (22, 16, 6)
    assert names(tmp_path) == [f"date=2026-01-01/{TOPIC}-p0-0-16-c.parquet"]
    after = snapshot(tmp_path)
    assert after.equals(before) and after.num_rows == 16
    assert after.column("offset").to_pylist()[-1] == 15  # the copy at the lowest position stays


def test_young_files_and_big_files_are_left_and_runs_respect_the_target(tmp_path):
    for first in range(0, 60, 10):
        flush(tmp_path, 0, first, first + 9)
    young = segment_files(tmp_path)[-1]
    os.utime(young, (NOW, NOW))  # written "just now"
    runs = plan(tmp_path, CompactionPolicy(min_age_s=3600, target_rows=25), now=NOW + 60)
    assert [[SegmentName.parse(p.name).first for p in r.files] for r in runs] == [[0, 10], [20, 30]]
    compact(tmp_path, CompactionPolicy(min_age_s=3600, target_rows=25), now=NOW + 60)
    assert [SegmentName.parse(Path(n).name).filename for n in names(tmp_path)] == [
        f"{TOPIC}-p0-0-19-c.parquet", f"{TOPIC}-p0-20-39-c.parquet", f"{TOPIC}-p0-40-49.parquet",
        f"{TOPIC}-p0-50-59.parquet"]
    # Files at the target are never merged again; the rest are once the young one has aged.
    compact(tmp_path, CompactionPolicy(min_age_s=3600, target_rows=20), now=NOW + 7200)
    assert [Path(n).name for n in names(tmp_path)] == [
        f"{TOPIC}-p0-0-19-c.parquet", f"{TOPIC}-p0-20-39-c.parquet", f"{TOPIC}-p0-40-59-c.parquet"]


def test_runs_are_cut_to_the_memory_budget_estimated_from_the_footers(tmp_path):
    from services.eventlog.compact import _footer

    for first in range(0, 60, 10):
        flush(tmp_path, 0, first, first + 9)
    _, each = _footer(segment_files(tmp_path)[0])
    assert each > 0
    runs = plan(tmp_path, CompactionPolicy(min_age_s=0, memory_mib=each * 2.5), now=NOW)
    assert [len(r.files) for r in runs] == [2, 2, 2]  # three files would pass the estimate
    assert plan(tmp_path, CompactionPolicy(min_age_s=0, memory_mib=each * 0.9), now=NOW) == []  # none fits alone


def test_a_crash_after_the_merged_file_loses_nothing_and_the_next_pass_finishes(tmp_path):
    for first in (0, 10, 20):
        flush(tmp_path, 0, first, first + 9)
    before = snapshot(tmp_path)

    def crash(stage, path):
        raise KeyboardInterrupt("killed after the merged file was durable")

    with pytest.raises(KeyboardInterrupt):
        compact(tmp_path, ANY_AGE, now=NOW, hook=crash)
    assert len(names(tmp_path)) == 4  # the inputs and the merged file: rows twice on disk
    assert snapshot(tmp_path).equals(before)
    report = compact(tmp_path, ANY_AGE, now=NOW)
    assert names(tmp_path) == [f"date=2026-01-01/{TOPIC}-p0-0-29-c.parquet"]
    assert report.duplicates == 30 and snapshot(tmp_path).equals(before)


def test_a_flush_written_inside_the_runs_range_during_the_pass_stays(tmp_path):
    # Offsets 10-19 had no row on this day when the pass listed it; a replay writes some there meanwhile.
    flush(tmp_path, 0, 0, 9)
    flush(tmp_path, 0, 20, 29)

    def replay(stage, path):
        flush(tmp_path, 0, 10, 19)

    compact(tmp_path, ANY_AGE, now=NOW, hook=replay)
    assert names(tmp_path) == [f"date=2026-01-01/{TOPIC}-p0-0-29-c.parquet",
                               f"date=2026-01-01/{TOPIC}-p0-10-19.parquet"]
    assert snapshot(tmp_path).column("offset").to_pylist() == list(range(30))
    compact(tmp_path, ANY_AGE, now=NOW)  # the merged name is its own input next time: replaced, nothing lost
    assert names(tmp_path) == [f"date=2026-01-01/{TOPIC}-p0-0-29-c.parquet"]
    assert snapshot(tmp_path).column("offset").to_pylist() == list(range(30))


def test_the_writer_deletes_a_compacted_file_its_replay_covers_and_nothing_is_lost(tmp_path):
    flush(tmp_path, 0, 0, 9)
    flush(tmp_path, 0, 10, 19)
    compact(tmp_path, ANY_AGE, now=NOW)
    out = write_segment(tmp_path, SegmentName(TOPIC, 0, 0, 29), rows(0, 0, 29))  # the replay read every record
    assert [p.name for p in out.deleted] == [f"{TOPIC}-p0-0-19-c.parquet"]
    assert snapshot(tmp_path).column("offset").to_pylist() == list(range(30))


def test_a_run_is_skipped_when_its_name_is_taken_or_an_input_vanished(tmp_path):
    flush(tmp_path, 0, 0, 9)
    flush(tmp_path, 0, 10, 19)
    [run] = plan(tmp_path, ANY_AGE, now=NOW)
    taken = run.folder / run.name.filename
    taken.write_bytes(b"not ours")  # e.g. a young merged file this pass did not read
    report = CompactionReport()
    assert merge_run(run, report) is None and report.skipped == {"name_taken": 1}
    assert taken.read_bytes() == b"not ours"
    taken.unlink()
    run.files[0].unlink()  # a replay's covering segment took it
    report = CompactionReport()
    assert merge_run(run, report) is None and report.skipped == {"input_deleted": 1}
    assert names(tmp_path) == [f"date=2026-01-01/{TOPIC}-p0-10-19.parquet"]


def test_one_pass_at_a_time(tmp_path, capsys):
    from services.cli import __main__ as cli

    flush(tmp_path, 0, 0, 9)
    flush(tmp_path, 0, 10, 19)
    with compaction_lock(tmp_path):
        with pytest.raises(CompactionBusy, match="another compaction"):
            compact(tmp_path, ANY_AGE, now=NOW)
        assert cli.main(["events", "compact", "--root", str(tmp_path), "--min-age", "0"]) == 1
        assert "another compaction" in capsys.readouterr().err
    assert len(names(tmp_path)) == 2
    # The lock file sits in the log's root, which Feast reads as a Parquet dataset: a hidden name it skips.
    import pyarrow.dataset as ds

    assert (tmp_path / ".compact.lock").exists()
    assert ds.dataset(str(tmp_path), format="parquet", partitioning="hive").count_rows() == 20


def test_cli_compact_dry_run_changes_nothing_then_merges(tmp_path, capsys):
    from services.cli import __main__ as cli

    for first in (0, 10, 20):
        flush(tmp_path, 0, first, first + 9)
    assert cli.main(["events", "compact", "--root", str(tmp_path), "--dry-run", "--min-age", "0", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["dry_run"], doc["files_in"], doc["runs"], doc["files_after"]) == (True, 3, 1, 3)
    assert cli.main(["events", "compact", "--root", str(tmp_path)]) == 0  # all files younger than an hour
    assert "merged 0 files" in capsys.readouterr().out
    assert cli.main(["events", "compact", "--root", str(tmp_path), "--min-age", "0"]) == 0
    assert "merged 3 files into 1" in capsys.readouterr().out and len(names(tmp_path)) == 1
    assert cli.main(["events", "compact", "--root", str(tmp_path / "missing")]) == 1
    assert "qanchor stack up eventlog" in capsys.readouterr().err
    assert cli.main(["events", "compact", "--root", str(tmp_path), "--target-rows", "1"]) == 1
    assert "--target-rows >= 2" in capsys.readouterr().err
    assert cli.main(["events", "compact", "--root", str(tmp_path), "--memory-mib", "0"]) == 1
    assert "--memory-mib > 0" in capsys.readouterr().err


def test_cli_compact_on_a_read_only_log_says_where_to_run_it(tmp_path, capsys, monkeypatch):
    from services.cli import __main__ as cli

    flush(tmp_path, 0, 0, 9)

    def read_only(path, *a, **k):  # what a read-only mount (a Job pod's view of the log) answers
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("services.eventlog.compact.os.open", read_only)
    assert cli.main(["events", "compact", "--root", str(tmp_path), "--min-age", "0"]) == 1
    err = capsys.readouterr().err
    assert "Permission denied" in err and ".compact.lock" in err and "where the log is writable" in err


def test_the_service_pass_compacts_only_owned_partitions_and_counts(tmp_path, monkeypatch):
    for p in (0, 1):
        flush(tmp_path, p, 0, 9)
        flush(tmp_path, p, 10, 19)
    other = [SegmentName("other.topic", 1, first, first + 9) for first in (0, 10)]
    for name in other:  # another topic's partition 1 in the same root: not this consumer's
        write_segment(tmp_path, name, rows(1, name.first, name.last))
    metrics = EventLogMetrics.create()
    owned: frozenset[int] = frozenset()
    periodic = PeriodicCompaction(tmp_path, ANY_AGE, 3600, metrics, TOPIC, owned=lambda: owned)
    assert periodic.run_once() is None  # nothing assigned yet: nothing touched
    owned = frozenset({1})
    report = periodic.run_once()
    assert report is not None and report.files_in == 2
    assert names(tmp_path) == [f"date=2026-01-01/{n.filename}" for n in other] + [
        f"date=2026-01-01/{TOPIC}-p0-0-9.parquet", f"date=2026-01-01/{TOPIC}-p0-10-19.parquet",
        f"date=2026-01-01/{TOPIC}-p1-0-19-c.parquet"]
    get = metrics.registry.get_sample_value
    assert get("qanchor_eventlog_compacted_files_total") == 2
    assert get("qanchor_eventlog_compaction_files_written_total") == 1
    assert get("qanchor_eventlog_files") == 5

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("services.eventlog.compact.compact", broken)
    assert periodic.run_once() is None  # logged and counted; the consumer is not taken down
    assert get("qanchor_eventlog_compaction_failures_total", {"error": "OSError"}) == 1


def test_the_service_thread_stops_promptly(tmp_path):
    periodic = PeriodicCompaction(tmp_path, ANY_AGE, 3600, EventLogMetrics.create(), TOPIC, owned=frozenset)
    periodic.start()
    done = threading.Event()
    threading.Thread(target=lambda: (periodic.stop(), done.set()), daemon=True).start()
    assert done.wait(10)
