"""The poll -> validate -> apply -> encode -> push -> commit loop (docs/ingest.md explains the ordering).

One batch, in order:
  1. validate every record (schema.parse_event); rejects go to the DLQ (services/ingest/dlq.py) with the reason
     and the original bytes;
  2. read the batch's users from the online store (or, for users whose row this consumer wrote last on a
     partition it still owns, from memory: services/ingest/state.py) and plan each user's update
     (transform.plan_user_update), skipping events at or below the user's stored position (applied before a crash);
  3. encode the new event texts that survive windowing (Triton, through an LRU cache);
  4. push the rows (features + feature_version = new position, one atomic row per user);
  5. wait for the DLQ sends, then commit offsets. Nothing is committed before its effect is durable.
A failure anywhere before the commit replays the batch; step 2 makes the replay a no-op for what landed.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from services.common.features import UserFeatures
from services.ingest.dlq import DeadLetterQueue, DeadLetterUnavailable, Record
from services.ingest.encoder import CachedEncoder
from services.ingest.metrics import IngestMetrics
from services.ingest.schema import Event, EventLimits, EventRejected, parse_event
from services.ingest.state import PartitionUserState
from services.ingest.transform import IngestSpec, Position, UserUpdate, decode_version, plan_user_update
from services.ingest.writer import FeatureStoreIO

log = logging.getLogger(__name__)


class BatchTooSlow(RuntimeError):
    """The batch outlived max_poll_interval: the group may have moved its partitions, so it must not write."""


@dataclass
class BatchResult:
    records: int = 0
    applied: int = 0
    duplicates: int = 0
    dlq: int = 0
    users_written: int = 0
    texts_encoded: int = 0


@dataclass(frozen=True)
class IngestLimits:
    """How much one poll takes and how long a batch may try (INGEST_* settings, docs/ingest.md)."""

    # Records per poll: bigger batches amortise store reads/writes and encoder calls; smaller ones cut latency.
    max_poll_records: int = 500
    # How long one poll waits for data; also how quickly an idle consumer notices a stop.
    poll_timeout_ms: int = 200
    # Kafka evicts a member whose batch takes longer (max.poll.interval.ms).
    max_poll_interval_s: float = 120.0
    # Pause after a failed batch (encoder or store down) before replaying it.
    retry_backoff_s: float = 2.0
    # Consecutive failed attempts of one batch before the worker gives up (the process exits non-zero).
    max_batch_attempts: int = 30
    # Attempts of a batch whose dead letters cannot be written before the partitions holding them are stopped
    # (paused, loudly) while the others go on.
    dlq_attempts: int = 3
    # How long one offset commit may retry (kafka-python retries a commit during a rebalance until its timeout,
    # and the rejoin it waits for only completes in poll): past it the batch counts as not committed.
    commit_timeout_ms: int = 10_000
    # What one record may hold (schema.EventLimits).
    events: EventLimits = field(default_factory=EventLimits)

    @property
    def batch_budget_s(self) -> float:
        # A margin below Kafka's limit: the write must finish before the group could hand the partition on.
        return self.max_poll_interval_s * 0.8


class IngestWorker:
    """Processes polled batches; owns no Kafka connection setup (see __main__), so tests can drive it."""

    def __init__(self, consumer: Any, dlq: DeadLetterQueue, store: FeatureStoreIO, encoder: CachedEncoder,
                 spec: IngestSpec, metrics: IngestMetrics, limits: IngestLimits | None = None, *,
                 state: PartitionUserState | None = None, watchdog: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time, gate: Callable[[str, int], None] | None = None,
                 on_written: Callable[[list], None] | None = None) -> None:
        self.consumer, self.dlq, self.store, self.encoder = consumer, dlq, store, encoder
        self.spec, self.metrics = spec, metrics
        self.limits = limits or IngestLimits()
        self.batch_budget_s = self.limits.batch_budget_s
        self.clock = clock
        self.watchdog = watchdog  # called once per poll loop (the group-rejoin check, services.ingest.group)
        # Called as gate("process" | "commit", batch number) before each step: a test/drill hook (services.ingest.gate)
        # that makes a stop or a crash land at an exact point instead of racing the machine.
        self.gate = gate or (lambda stage, batch: None)
        # Called with the rows just written (services.ingest.warm.PrefixWarmer.offer): must not block or raise.
        self.on_written = on_written
        self.batches = 0
        # When the loop last turned (a poll, or an attempt of a batch): liveness proves the loop, not the process.
        self.last_progress = time.monotonic()
        # Partitions whose rejected records could not be dead-lettered: paused until a restart.
        self.stopped: set[int] = set()
        self._rejected_partitions: set[int] = set()
        # Rows this worker wrote, per owned partition; capacity 0 = always read the store.
        self.state = state if state is not None else PartitionUserState(capacity=0)
        self._sources = set(spec.source_names)

    # ---- one batch -----------------------------------------------------------------------------------------
    def process(self, records: Sequence[Record], started: float | None = None) -> BatchResult:
        """Steps 1-4 plus waiting for DLQ sends; the caller commits afterwards."""
        try:
            return self._process(records, started)
        except BaseException:
            # A failed batch may have written some rows and not others: the remembered rows could now be older
            # than the store, so forget them all and let the replay read the store.
            self.state.clear("batch_failed")
            raise

    def _process(self, records: Sequence[Record], started: float | None) -> BatchResult:
        started = time.monotonic() if started is None else started
        result = BatchResult(records=len(records))
        m = self.metrics
        by_user: dict[str, list[tuple[Position, Event]]] = defaultdict(list)
        appended: dict[Position, float] = {}  # Kafka's record time (producer send or broker append), seconds
        dlq_futures: list[Any] = []
        self._rejected_partitions = set()
        t0 = time.perf_counter()
        for rec in records:
            pos = Position(rec.partition, rec.offset)
            record_ms = getattr(rec, "timestamp", None)
            sent = record_ms / 1000.0 if isinstance(record_ms, (int, float)) and record_ms > 0 else None
            try:
                ev = parse_event(rec.value, rec.key, self._sources, self.spec.features.tabular_dim,
                                 self.limits.events, now=sent if sent is not None else self.clock())
            except EventRejected as exc:
                self._reject(rec, exc, dlq_futures, result)
                continue
            except Exception as exc:  # nothing in a record may stop the stream: whatever else breaks is its fault
                self._reject(rec, EventRejected("internal_error", f"{type(exc).__name__}: {exc}"[:500]), dlq_futures,
                             result)
                continue
            if sent is not None:
                appended[pos] = sent
            by_user[ev.user_id].append((pos, ev))
        m.stage_seconds.labels(stage="validate").observe(time.perf_counter() - t0)

        updates = self._plan(by_user, {Position(r.partition, r.offset): r for r in records}, dlq_futures, result)
        result.duplicates = sum(u.skipped for u in updates)
        todo = [u for u in updates if u.applied]
        result.applied = sum(u.applied for u in todo)

        t0 = time.perf_counter()
        texts = [t for u in todo for t in u.texts_to_encode()]
        hits, l2_hits, misses = self.encoder.hits, self.encoder.l2_hits, self.encoder.misses
        vectors = self.encoder.encode_many(texts) if texts else {}
        m.encoder_cache.labels(result="hit").inc(self.encoder.hits - hits)
        m.encoder_cache.labels(result="l2_hit").inc(self.encoder.l2_hits - l2_hits)
        m.encoder_cache.labels(result="miss").inc(self.encoder.misses - misses)
        result.texts_encoded = self.encoder.misses - misses
        m.stage_seconds.labels(stage="encode").observe(time.perf_counter() - t0)

        if todo:
            now = self.clock()
            rows = [u.to_features(vectors, self.spec, updated_at=now) for u in todo]
            if time.monotonic() - started > self.batch_budget_s:
                raise BatchTooSlow(f"batch took over {self.batch_budget_s:.0f}s before its write; not writing, "
                                   "the group may have reassigned the partitions (raise max_poll_interval_ms or "
                                   "lower max_poll_records)")
            t0 = time.perf_counter()
            self.store.write(rows)
            written = self.clock()
            m.stage_seconds.labels(stage="write").observe(time.perf_counter() - t0)
            for row in rows:  # only after the write returned: the store now holds exactly these rows
                last = decode_version(row.feature_version)
                if last is not None:
                    self.state.put(last.partition, row)
            if self.on_written is not None:
                try:
                    self.on_written(rows)
                except Exception:  # a warm-up hook never fails a batch whose features are written
                    log.exception("on_written hook failed; the features are written, only warming is skipped")
            for u in todo:
                for ts in u.applied_ts:
                    m.event_lag.observe(max(0.0, written - ts))
                for pos in u.applied_positions:
                    if pos in appended:
                        m.latency.observe(max(0.0, written - appended[pos]))
            result.users_written = len(rows)
            m.users_written.inc(len(rows))

        t0 = time.perf_counter()
        self.dlq.wait(dlq_futures)
        m.stage_seconds.labels(stage="dlq").observe(time.perf_counter() - t0)
        m.events.labels(outcome="applied").inc(result.applied)
        m.events.labels(outcome="duplicate").inc(result.duplicates)
        m.events.labels(outcome="dlq").inc(result.dlq)
        return result

    def _reject(self, rec: Record, exc: EventRejected, futures: list[Any], result: BatchResult) -> None:
        log.warning("event rejected", extra={"reason": exc.reason, "topic": rec.topic, "partition": rec.partition,
                                             "offset": rec.offset, "detail": exc.detail[:200]})
        self._rejected_partitions.add(rec.partition)
        futures.append(self.dlq.send(rec, exc))
        self.metrics.dlq.labels(reason=exc.reason).inc()
        result.dlq += 1

    def _plan(self, by_user: dict[str, list[tuple[Position, Event]]], records: dict[Position, Record],
              dlq_futures: list[Any], result: BatchResult) -> list[UserUpdate]:
        if not by_user:
            return []
        current: dict[str, UserFeatures] = {}
        for uid, events in by_user.items():
            parts = {p.partition for p, _ in events}
            if len(parts) == 1:  # one user, one partition; anything else (re-partitioned topic) reads the store
                row = self.state.get(next(iter(parts)), uid)
                if row is not None:
                    current[uid] = row
        to_read = [u for u in by_user if u not in current]
        self.metrics.user_state.labels(result="hit").inc(len(current))
        self.metrics.user_state.labels(result="miss").inc(len(to_read))
        if to_read:
            t0 = time.perf_counter()
            current.update(zip(to_read, self.store.get(to_read)))
            self.metrics.stage_seconds.labels(stage="read").observe(time.perf_counter() - t0)
        updates = []
        for uid in by_user:
            # Log order per user; a batch may interleave partitions but one user lives in one partition.
            events = sorted(by_user[uid], key=lambda pe: pe[0])
            try:
                upd = plan_user_update(current[uid], events, self.spec)
            except Exception as exc:  # a rule this data breaks: its records go to the DLQ, not the batch down
                for pos, _ in events:
                    self._reject(records[pos], EventRejected("internal_error", f"{type(exc).__name__}: {exc}"[:500]),
                                 dlq_futures, result)
                continue
            if upd is None:
                continue
            for pos in upd.beyond_memory:
                self._reject(records[pos], EventRejected(
                    "beyond_dedup_memory", f"offset {records[pos].offset} of user {uid!r}: its event_id is not among "
                    f"the {self.spec.recent_ids} the row remembers and its ts is at or before the newest forgotten "
                    "one's, so it may already be applied; if it is new, raise INGEST_RECENT_EVENT_IDS and re-send "
                    "it from the dead-letter topic"), dlq_futures, result)
            updates.append(upd)
        return updates

    # ---- the loop ------------------------------------------------------------------------------------------
    def commit(self, records: Sequence[Record]) -> None:
        from kafka.structs import OffsetAndMetadata, TopicPartition

        nxt: dict[TopicPartition, int] = {}
        for rec in records:
            tp = TopicPartition(rec.topic, rec.partition)
            nxt[tp] = max(nxt.get(tp, 0), rec.offset + 1)
        t0 = time.perf_counter()
        self.consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in nxt.items()},
                             timeout_ms=self.limits.commit_timeout_ms)
        self.metrics.stage_seconds.labels(stage="commit").observe(time.perf_counter() - t0)

    def run_batch(self, records: Sequence[Record]) -> BatchResult:
        """Process and commit one polled batch, replaying it on errors (idempotent) up to max_batch_attempts."""
        from kafka.errors import CommitFailedError, KafkaTimeoutError

        started = time.monotonic()
        self.batches += 1
        self.gate("process", self.batches)
        dlq_failures = 0
        for attempt in range(1, self.limits.max_batch_attempts + 1):
            self.last_progress = time.monotonic()
            try:
                result = self.process(records, started)
            except DeadLetterUnavailable as exc:
                dlq_failures += 1
                self.metrics.batch_failures.labels(error="dlq_unavailable").inc()
                if dlq_failures >= self.limits.dlq_attempts:
                    records = self._stop_partitions(records, exc)
                    if not records:
                        return BatchResult()
                    continue
                time.sleep(self.limits.retry_backoff_s)
                continue
            except BatchTooSlow:
                self.state.clear("batch_too_slow")
                self.metrics.batch_failures.labels(error="too_slow").inc()
                self._rewind(records)
                raise
            except Exception as exc:
                self.metrics.batch_failures.labels(error=type(exc).__name__).inc()
                if attempt == self.limits.max_batch_attempts:
                    raise
                log.warning("batch failed, replaying", exc_info=attempt == 1,
                            extra={"attempt": attempt, "error": type(exc).__name__, "detail": str(exc)[:300]})
                time.sleep(self.limits.retry_backoff_s)
                continue
            self.gate("commit", self.batches)
            try:
                self.commit(records)
            except (CommitFailedError, KafkaTimeoutError) as exc:
                # The group rebalanced under us (or is still rebalancing): whoever owns the partitions next
                # replays from the last commit, and the stored positions turn that replay into no-ops.
                log.warning("commit failed after rebalance, batch will be replayed by the owner",
                            extra={"error": type(exc).__name__, "detail": str(exc)[:300]})
                self.state.clear("commit_failed")
                self.metrics.batch_failures.labels(error="commit_failed").inc()
            return result
        raise AssertionError("unreachable")

    def _stop_partitions(self, records: Sequence[Record], exc: Exception) -> list[Record]:
        """The dead letters of some partitions cannot be written: stop those partitions (paused at this batch, so
        nothing of theirs is committed or lost), loudly, and hand back the records of the others."""
        from kafka.structs import TopicPartition

        bad = set(self._rejected_partitions) or {r.partition for r in records}
        held = [r for r in records if r.partition in bad]
        self._rewind(held)
        self.consumer.pause(*{TopicPartition(r.topic, r.partition) for r in held})
        self.stopped |= bad
        for p in bad:
            self.metrics.partition_stopped.labels(partition=str(p)).set(1)
        log.error("partitions stopped: their rejected records cannot be written to the DLQ; fix the DLQ topic "
                  "(it exists, this consumer may write it) and restart ingest",
                  extra={"partitions": ",".join(map(str, sorted(bad))), "dlq_topic": self.dlq.topic,
                         "error": type(exc).__name__, "detail": str(exc)[:300]})
        return [r for r in records if r.partition not in bad]

    def _rewind(self, records: Sequence[Record]) -> None:
        from kafka.structs import TopicPartition

        first: dict[TopicPartition, int] = {}
        for rec in records:
            tp = TopicPartition(rec.topic, rec.partition)
            first[tp] = min(first.get(tp, rec.offset), rec.offset)
        assigned = self.consumer.assignment()
        for tp, off in first.items():
            if tp in assigned:
                self.consumer.seek(tp, off)

    def stalled(self, limit_s: float) -> str | None:
        """Why the loop looks dead (no poll or batch attempt for `limit_s`), or None: the liveness answer."""
        idle = time.monotonic() - self.last_progress
        return f"no poll or batch attempt for {idle:.0f} s (limit {limit_s:.0f} s)" if idle > limit_s else None

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set; the batch in hand is always finished, pushed and committed first."""
        totals = BatchResult()
        last_log = time.monotonic()
        while not stop.is_set():
            polled = self.consumer.poll(timeout_ms=self.limits.poll_timeout_ms,
                                        max_records=self.limits.max_poll_records)
            records = [r for recs in polled.values() for r in recs]
            self.last_progress = time.monotonic()
            if records:
                self.metrics.batch_size.observe(len(records))
                try:
                    res = self.run_batch(records)
                except BatchTooSlow as exc:
                    log.error("batch too slow, not written", extra={"detail": str(exc)})
                    continue
                for f in ("records", "applied", "duplicates", "dlq", "users_written", "texts_encoded"):
                    setattr(totals, f, getattr(totals, f) + getattr(res, f))
            if self.watchdog is not None:
                self.watchdog()
            if time.monotonic() - last_log > 10.0:
                last_log = time.monotonic()
                log.info("ingest progress", extra=asdict(totals))
        log.info("ingest stopping", extra=asdict(totals))
