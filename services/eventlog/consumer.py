"""The poll -> buffer -> flush (write segments, then commit) loop of the event log (docs/eventlog.md).

  1. every polled record is validated with ingest's parser (services.ingest.schema.parse_event) and ingest's
     limits; a record ingest would reject is counted and left out (ingest dead-letters it; the log does not);
  2. valid events become rows, buffered per partition with the offset range consumed;
  3. once `flush_records` are buffered or the oldest waited `flush_interval_s`, each partition's buffer is written
     as one segment (services/eventlog/segments.py: atomic files, one per event day) and only then are the
     offsets committed. A crash before the commit replays the range: the same range writes the same file names
     (replaced), a different range deletes the segments it covers, and readers dedupe by event_id.
  4. on a partition revoke the revoked partitions' buffers are dropped, uncommitted, and if a partition comes back
     the consumer seeks to its buffer's first offset; whoever owns it next reads it again from the last commit.
     Not a flush: kafka-python 3 calls rebalance listeners on its network thread, where a blocking commit is
     refused ("Cannot block on net.run() from the IO thread itself", seen on the real broker), so a flush there
     would write segments it cannot commit. A rebalance costs re-reading at most one flush's worth of records.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

from kafka import ConsumerRebalanceListener

from services.eventlog.metrics import EventLogMetrics
from services.eventlog.segments import SegmentName, event_row, write_segment
from services.ingest.dlq import Record
from services.ingest.schema import EventLimits, EventRejected, parse_event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FlushPolicy:
    """When buffered records are made durable (EVENTLOG_* settings)."""

    records: int = 5000
    interval_s: float = 10.0
    max_attempts: int = 5
    retry_backoff_s: float = 2.0


@dataclass
class PartitionBuffer:
    """Records of one partition consumed since its last flush: the offset range and the rows of the valid ones."""

    topic: str
    partition: int
    first: int
    last: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> SegmentName:
        return SegmentName(self.topic, self.partition, self.first, self.last)


class EventLogWorker:
    """Buffers polled records and flushes them as segments; owns no Kafka connection setup, so tests drive it."""

    def __init__(self, consumer: Any, root: Path, sources: Collection[str], tabular_dim: int,
                 metrics: EventLogMetrics, policy: FlushPolicy | None = None, limits: EventLimits | None = None, *,
                 poll_timeout_ms: int = 500, max_poll_records: int = 1000, commit_timeout_ms: int = 10_000,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 gate: Callable[[str, int], None] | None = None) -> None:
        self.consumer, self.root, self.metrics = consumer, Path(root), metrics
        self.sources, self.tabular_dim = set(sources), tabular_dim
        self.policy = policy or FlushPolicy()
        self.limits = limits or EventLimits()
        self.poll_timeout_ms, self.max_poll_records = poll_timeout_ms, max_poll_records
        self.commit_timeout_ms = commit_timeout_ms
        self.clock, self.monotonic = clock, monotonic
        # Called as gate("flush" | "commit", flush number) before each step: the test/drill hook of
        # services.ingest.gate, so a crash lands between "segment durable" and "offset committed" on purpose.
        self.gate = gate or (lambda stage, n: None)
        self.buffers: dict[tuple[str, int], PartitionBuffer] = {}
        self.buffered_since: float | None = None
        self.flushes = 0
        # Partitions whose buffer was dropped on a revoke: where to seek if they are assigned back.
        self.rewind: dict[tuple[str, int], int] = {}
        self.last_progress = monotonic()

    # ---- buffering ------------------------------------------------------------------------------------------
    @property
    def buffered(self) -> int:
        return sum(b.records for b in self.buffers.values())

    def add(self, records: Sequence[Record]) -> None:
        now = self.clock()
        for rec in records:
            key = (rec.topic, rec.partition)
            buf = self.buffers.get(key)
            if buf is None:
                buf = self.buffers[key] = PartitionBuffer(rec.topic, rec.partition, rec.offset, rec.offset)
            buf.first, buf.last = min(buf.first, rec.offset), max(buf.last, rec.offset)
            buf.records += 1
            record_ms = getattr(rec, "timestamp", None)
            sent = record_ms / 1000.0 if isinstance(record_ms, (int, float)) and record_ms > 0 else None
            try:
                ev = parse_event(rec.value, rec.key, self.sources, self.tabular_dim, self.limits,
                                 now=sent if sent is not None else now)
            except EventRejected as exc:
                buf.skipped[exc.reason] = buf.skipped.get(exc.reason, 0) + 1
                continue
            except Exception:  # ingest dead-letters these as internal_error: the log leaves them out likewise
                buf.skipped["internal_error"] = buf.skipped.get("internal_error", 0) + 1
                continue
            buf.rows.append(event_row(ev, rec.topic, rec.partition, rec.offset, created=now))
        if records and self.buffered_since is None:
            self.buffered_since = self.monotonic()
        self.metrics.buffered.set(self.buffered)

    def due(self) -> bool:
        if not self.buffers:
            return False
        return self.buffered >= self.policy.records or (
            self.buffered_since is not None and self.monotonic() - self.buffered_since >= self.policy.interval_s)

    # ---- flushing -------------------------------------------------------------------------------------------
    def flush(self) -> int:
        """Write every buffered partition as a segment, then commit their offsets; -> records flushed."""
        keys = sorted(self.buffers)
        if not keys:
            return 0
        self.flushes += 1
        n = self.flushes
        t0 = time.perf_counter()
        self.gate("flush", n)
        for attempt in range(1, self.policy.max_attempts + 1):
            try:
                self._write(keys)
                break
            except OSError as exc:
                self.metrics.flush_failures.labels(error=type(exc).__name__).inc()
                log.warning("event log flush failed", exc_info=attempt == 1,
                            extra={"attempt": attempt, "root": str(self.root), "error": type(exc).__name__,
                                   "detail": str(exc)[:300]})
                if attempt == self.policy.max_attempts:
                    raise RuntimeError(f"cannot write the event log under {self.root} after {attempt} attempts "
                                       f"({exc}); free space or fix permissions there, then restart: nothing of "
                                       "this flush was committed, so it is replayed") from exc
                time.sleep(self.policy.retry_backoff_s)
        self.gate("commit", n)
        done = [self.buffers.pop(k) for k in keys]
        self._commit(done)
        records = sum(b.records for b in done)
        for b in done:
            self.metrics.events.labels(outcome="logged").inc(len(b.rows))
            self.metrics.events.labels(outcome="skipped").inc(sum(b.skipped.values()))
            for reason, count in b.skipped.items():
                self.metrics.skipped.labels(reason=reason).inc(count)
        self.buffered_since = None
        self.metrics.buffered.set(self.buffered)
        self.metrics.flush_seconds.observe(time.perf_counter() - t0)
        log.info("event log flushed", extra={
            "flush": n, "records": records, "rows": sum(len(b.rows) for b in done),
            "skipped": sum(sum(b.skipped.values()) for b in done),
            "segments": ",".join(f"p{b.partition}:{b.first}-{b.last}" for b in done)})
        return records

    def _write(self, keys: Sequence[tuple[str, int]]) -> None:
        for key in keys:
            buf = self.buffers[key]
            written = write_segment(self.root, buf.name, buf.rows)
            self.metrics.segments.inc(len(written.files))
            self.metrics.covered_deleted.inc(len(written.deleted))
            if written.deleted:
                log.info("covered segments deleted", extra={"segment": buf.name.filename,
                                                            "deleted": ",".join(p.name for p in written.deleted)})

    def _commit(self, done: Sequence[PartitionBuffer]) -> None:
        from kafka.errors import CommitFailedError, KafkaTimeoutError
        from kafka.structs import OffsetAndMetadata, TopicPartition

        offsets = {TopicPartition(b.topic, b.partition): OffsetAndMetadata(b.last + 1, "", -1) for b in done}
        try:
            # Bounded: kafka-python retries a commit during a rebalance until its timeout, and the rejoin it waits
            # for only completes in poll.
            self.consumer.commit(offsets, timeout_ms=self.commit_timeout_ms)
        except (CommitFailedError, KafkaTimeoutError) as exc:
            # The segments are durable; the partitions' new owner replays the range and rewrites the same files
            # (or covering ones). Nothing is lost, nothing is read twice after dedupe.
            self.metrics.flush_failures.labels(error="commit_failed").inc()
            log.warning("commit failed after a rebalance; the new owner replays these offsets",
                        extra={"error": type(exc).__name__, "detail": str(exc)[:300]})

    # ---- rebalance ------------------------------------------------------------------------------------------
    def on_revoked(self, partitions: Collection[Any]) -> None:
        """Drop the revoked partitions' buffers (nothing of them is written or committed) and remember where
        each began, for a seek back should the partition be assigned here again."""
        keys = sorted({(tp.topic, tp.partition) for tp in partitions} & set(self.buffers))
        if not keys:
            return
        dropped = 0
        for key in keys:
            buf = self.buffers.pop(key)
            self.rewind[key] = buf.first
            dropped += buf.records
        if not self.buffers:
            self.buffered_since = None
        self.metrics.buffered.set(self.buffered)
        self.metrics.rebalance_dropped.inc(dropped)
        log.info("buffer dropped on revoke: uncommitted, read again by the next owner",
                 extra={"partitions": ",".join(str(p) for _, p in keys), "records": dropped})

    def on_assigned(self, partitions: Collection[Any]) -> None:
        for tp in partitions:
            first = self.rewind.pop((tp.topic, tp.partition), None)
            if first is not None:
                self.consumer.seek(tp, first)
                log.info("seek back to the dropped buffer", extra={"partition": tp.partition, "offset": first})
        self.rewind.clear()  # partitions that went elsewhere: their new owner starts from the last commit

    # ---- the loop -------------------------------------------------------------------------------------------
    def stalled(self, limit_s: float) -> str | None:
        idle = self.monotonic() - self.last_progress
        return f"no poll for {idle:.0f} s (limit {limit_s:.0f} s)" if idle > limit_s else None

    def poll_once(self) -> None:
        polled = self.consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=self.max_poll_records)
        self.last_progress = self.monotonic()
        self.add([r for recs in polled.values() for r in recs])
        if self.due():
            self.flush()

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set, then flush what is buffered (segments + commit) before returning."""
        while not stop.is_set():
            self.poll_once()
        self.flush()
        log.info("event log stopping", extra={"flushes": self.flushes})


class EventLogRebalanceListener(ConsumerRebalanceListener):
    """Hands revokes and assigns to the worker (drop, seek back); remembers the owned partitions.

    kafka-python runs these on its network thread, but only while the worker's thread is blocked in `poll()` (or
    `close()`) waiting for it, so the worker's buffers need no lock; nothing here may block on the broker.
    """

    def __init__(self) -> None:
        self.worker: EventLogWorker | None = None
        self.owned: frozenset[int] = frozenset()

    def on_partitions_revoked(self, revoked) -> None:  # type: ignore[no-untyped-def]
        log.info("partitions revoked", extra={"partitions": ",".join(str(tp.partition) for tp in sorted(revoked))})
        self.owned = self.owned - {tp.partition for tp in revoked}
        if self.worker is not None:
            self.worker.on_revoked(revoked)

    def on_partitions_assigned(self, assigned) -> None:  # type: ignore[no-untyped-def]
        log.info("partitions assigned", extra={"partitions": ",".join(str(tp.partition) for tp in sorted(assigned))})
        self.owned = frozenset(tp.partition for tp in assigned)
        if self.worker is not None:
            self.worker.on_assigned(assigned)
