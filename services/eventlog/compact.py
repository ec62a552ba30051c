"""Compaction of the event log: a day's small files of one partition merged into few, each event once.

The writer makes one file per partition, flush and event day (services/eventlog/segments.py): at the defaults one
per 5,000 records or 10 s, so a month of a quiet partition is thousands of files that every reader (Feast's file
offline store, `read_events`, pretraining) opens one by one. Compaction merges them:

  1. group the finished files by (day, topic, partition); take those older than `min_age_s` (a file still being
     replaced by a replay is left alone), smaller than `target_rows`, in offset order, in runs of <= `target_rows`
     rows whose merge fits `memory_mib` (estimated from the files' footers, PEAK_PER_PARQUET_BYTE); a run of one
     file is left as it is;
  2. per run: read the files, keep each event_id once (the copy at the lowest Kafka position, the readers' own rule,
     so no reader's answer changes), sort by Kafka position, write one `-c` file named by the run's offset range
     (atomic: temporary, fsync, rename, folder fsync) and check its row count on disk;
  3. only then delete the run's input files.

Why this is safe beside the running writer (docs/eventlog.md "Compaction"):

- A crash between 2 and 3 leaves the inputs and the merged file: identical rows twice, which readers dedupe; the
  next run merges them again under the same name.
- A compacted name (`...-<first>-<last>-c.parquet`) is never a flush's, so the writer's replace-by-name never hits
  one, and the compactor deletes nothing but the files it read and merged. A flush written meanwhile, even one whose
  offsets fall inside the run's range, stays. The writer may delete a compacted file that its replayed segment
  covers: that segment read every record of the range, so it holds every row of the compacted file.
- An input deleted under the compactor (covered by a replay) or a merged name already taken by a file it did not
  read skips that run until the next pass; nothing is written over a file that was not read.
- One compactor at a time per log: a lock file (`<root>/.compact.lock`, flock) held for the whole pass; the service
  also compacts only the partitions its consumer owns. (flock over a network file system is only as good as that
  file system's locking.)
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Collection, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from services.eventlog.segments import _fsync_dir, write_atomic
from training.data.event_log import SCHEMA, SegmentName, first_copies, segment_files

if TYPE_CHECKING:
    from services.eventlog.metrics import EventLogMetrics

log = logging.getLogger(__name__)

LOCK_NAME = ".compact.lock"  # hidden: Parquet readers (pyarrow, Dask, Feast) skip names starting with "."


class CompactionBusy(RuntimeError):
    """Another compaction holds the log's lock."""


@dataclass(frozen=True)
class CompactionPolicy:
    """Which files a pass merges (EVENTLOG_COMPACT_* settings)."""

    # Only files not modified for this long: a replay rewrites a recent flush's files by name.
    min_age_s: float = 3600.0
    # A merged file holds at most this many rows; a file this big already is left as it is.
    target_rows: int = 200_000
    # What merging one run may take in memory: runs are cut so their estimated peak (PEAK_PER_PARQUET_BYTE x the
    # files' uncompressed Parquet size) stays under it; a file whose own estimate exceeds it is left as it is.
    memory_mib: float = 256.0


@dataclass
class CompactionReport:
    runs: int = 0                      # merged files written
    files_in: int = 0                  # input files merged (and deleted)
    rows_in: int = 0
    rows_out: int = 0                  # rows_in - rows_out duplicates were dropped
    bytes_in: int = 0
    bytes_out: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # runs left for the next pass, by reason
    written: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def duplicates(self) -> int:
        return self.rows_in - self.rows_out

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def as_dict(self) -> dict:
        return {"runs": self.runs, "files_in": self.files_in, "files_out": self.runs, "rows_in": self.rows_in,
                "rows_out": self.rows_out, "duplicates": self.duplicates, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "skipped": dict(self.skipped), "seconds": round(self.seconds, 3),
                "written": [str(p) for p in self.written]}


@dataclass(frozen=True)
class Run:
    """Files of one (day, topic, partition) to merge into one, in offset order."""

    folder: Path
    files: tuple[Path, ...]
    rows: int

    @property
    def name(self) -> SegmentName:
        names = [SegmentName.parse(p.name) for p in self.files]
        first = min(n.first for n in names if n is not None)
        last = max(n.last for n in names if n is not None)
        n0 = names[0]
        assert n0 is not None
        return SegmentName(n0.topic, n0.partition, first, last, compacted=True)


@contextlib.contextmanager
def compaction_lock(root: Path) -> Iterator[None]:
    """Hold the log's compaction lock, or raise CompactionBusy at once."""
    path = Path(root) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CompactionBusy(f"another compaction of {root} is running (it holds {path}); wait for it, or "
                                 "check for a stuck `qanchor events compact` or eventlog process") from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# Peak memory of merging a run, per byte of its files' uncompressed Parquet size (the footers' total_byte_size):
# measured 2026-12-08 on 40 files of 5,000 MovieLens-sized events (11.1 MiB uncompressed, 28 MiB as Arrow), a pass
# peaked 212 MiB above the process's baseline (240 MiB before first_copies took one copy instead of three); rounded
# up.
PEAK_PER_PARQUET_BYTE = 22


def _rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def _footer(path: Path) -> tuple[int, float]:
    """(rows, the estimated memory merging this file takes in MiB: PEAK_PER_PARQUET_BYTE x its uncompressed size),
    from one read of its footer."""
    meta = pq.ParquetFile(path).metadata
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return meta.num_rows, PEAK_PER_PARQUET_BYTE * size / 2**20


def plan(root: Path, policy: CompactionPolicy, now: float | None = None,
         partitions: Collection[tuple[str, int]] | None = None) -> list[Run]:
    """The runs a pass would merge (pure apart from reading names, mtimes and Parquet footers); `partitions`: only
    these (topic, partition) pairs (None = all)."""
    now = time.time() if now is None else now
    groups: dict[tuple[Path, str, int], list[tuple[SegmentName, Path, int, float]]] = {}
    for path in segment_files(root):
        name = SegmentName.parse(path.name)
        if name is None or (partitions is not None and (name.topic, name.partition) not in partitions):
            continue
        try:
            if now - path.stat().st_mtime < policy.min_age_s:
                continue
            rows, mib = _footer(path)
        except FileNotFoundError:  # deleted since the listing (covered by a replay): not ours to merge
            continue
        if rows >= policy.target_rows or mib > policy.memory_mib:
            continue
        groups.setdefault((path.parent, name.topic, name.partition), []).append((name, path, rows, mib))
    runs = []
    for (folder, _, _), files in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), kv[0][1], kv[0][2])):
        files.sort(key=lambda f: (f[0].first, f[0].last, f[0].compacted))
        current: list[tuple[SegmentName, Path, int, float]] = []
        for f in files + [None]:  # type: ignore[list-item]
            fits = f is not None and (not current or (
                sum(c[2] for c in current) + f[2] <= policy.target_rows
                and sum(c[3] for c in current) + f[3] <= policy.memory_mib))
            if fits:
                current.append(f)
                continue
            if len(current) >= 2:
                runs.append(Run(folder, tuple(c[1] for c in current), sum(c[2] for c in current)))
            current = [f] if f is not None else []
    return runs


def merge_run(run: Run, report: CompactionReport,
              hook: Callable[[str, Path], None] = lambda stage, path: None) -> Path | None:
    """Merge one run into its `-c` file, then delete its inputs; None when the run was left for the next pass."""
    target = run.folder / run.name.filename
    if target.exists() and target not in run.files:
        report.skip("name_taken")  # a file this pass did not read: never written over
        return None
    try:
        tables = [pq.read_table(p, schema=SCHEMA) for p in run.files]
        bytes_in = sum(p.stat().st_size for p in run.files)
    except FileNotFoundError:
        report.skip("input_deleted")  # a replay's covering segment took it: its rows are there
        return None
    merged = pa.concat_tables(tables)
    del tables
    # The readers' rule (training.data.event_log.dedupe): each event_id once, the copy at the lowest Kafka position.
    out = first_copies(merged)
    write_atomic(out, target)
    on_disk = _rows(target)
    if on_disk != out.num_rows:
        raise RuntimeError(f"{target} holds {on_disk} rows after the write, expected {out.num_rows}; its inputs are "
                           "kept (readers dedupe the overlap): check the disk")
    hook("written", target)
    for p in run.files:
        if p != target:
            p.unlink(missing_ok=True)
    _fsync_dir(run.folder)
    report.runs += 1
    report.files_in += len(run.files)
    report.rows_in += merged.num_rows
    report.rows_out += out.num_rows
    report.bytes_in += bytes_in
    report.bytes_out += target.stat().st_size
    report.written.append(target)
    return target


def compact(root: Path, policy: CompactionPolicy | None = None, *, now: float | None = None,
            partitions: Collection[tuple[str, int]] | None = None, dry_run: bool = False,
            hook: Callable[[str, Path], None] = lambda stage, path: None) -> CompactionReport:
    """One pass over the log under its lock (CompactionBusy if another pass holds it)."""
    policy = policy or CompactionPolicy()
    root = Path(root)
    report = CompactionReport()
    if not root.is_dir():
        return report
    t0 = time.perf_counter()
    with compaction_lock(root):
        runs = plan(root, policy, now, partitions)
        if dry_run:
            for run in runs:
                report.runs += 1
                report.files_in += len(run.files)
                report.rows_in += run.rows
                report.bytes_in += sum(p.stat().st_size for p in run.files if p.exists())
            report.rows_out = report.rows_in
        else:
            for run in runs:
                merge_run(run, report, hook)
    report.seconds = time.perf_counter() - t0
    return report


class PeriodicCompaction:
    """The eventlog service's compaction thread: a pass every `interval_s` over the partitions of `topic` that
    `owned()` returns (the consumer's assignment; nothing while it owns none).

    Best effort: a failed pass is logged and counted, the consumer keeps running, and the next pass tries again.
    """

    def __init__(self, root: Path, policy: CompactionPolicy, interval_s: float, metrics: "EventLogMetrics",
                 topic: str, owned: Callable[[], Collection[int]]) -> None:
        import threading

        self.root, self.policy, self.interval_s = Path(root), policy, interval_s
        self.metrics, self.topic, self.owned = metrics, topic, owned
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="eventlog-compaction", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def run_once(self) -> CompactionReport | None:
        owned = self.owned()
        if not owned:
            return None
        try:
            report = compact(self.root, self.policy, partitions={(self.topic, p) for p in owned})
        except CompactionBusy as exc:
            log.info("event log compaction skipped", extra={"reason": "busy", "detail": str(exc)[:300]})
            return None
        except Exception as exc:  # a disk problem must not take the consumer down; the next pass retries
            self.metrics.compaction_failures.labels(error=type(exc).__name__).inc()
            log.warning("event log compaction failed", exc_info=True,
                        extra={"root": str(self.root), "error": type(exc).__name__, "detail": str(exc)[:300]})
            return None
        self.metrics.compaction_seconds.observe(report.seconds)
        self.metrics.compacted_files.inc(report.files_in)
        self.metrics.compaction_written.inc(report.runs)
        self.metrics.compaction_duplicates.inc(report.duplicates)
        self.metrics.log_files.set(len(segment_files(self.root)))
        if report.runs or report.skipped:
            log.info("event log compacted", extra={
                "files_in": report.files_in, "files_out": report.runs, "rows": report.rows_out,
                "duplicates": report.duplicates, "bytes_in": report.bytes_in, "bytes_out": report.bytes_out,
                "skipped": ",".join(f"{k}:{v}" for k, v in sorted(report.skipped.items())),
                "seconds": round(report.seconds, 3)})
        return report

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.run_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)  # a pass is crash-safe: one cut short leaves duplicates, never a hole
