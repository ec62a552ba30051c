"""Prometheus metrics of the event-log consumer (one registry per worker, so tests can run several)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.ingest.metrics import STAGE_BUCKETS, serve_metrics


@dataclass
class EventLogMetrics:
    registry: CollectorRegistry
    events: Counter
    skipped: Counter
    segments: Counter
    covered_deleted: Counter
    flush_seconds: Histogram
    flush_failures: Counter
    buffered: Gauge
    rebalance_dropped: Counter
    lag: Gauge
    compacted_files: Counter
    compaction_written: Counter
    compaction_duplicates: Counter
    compaction_seconds: Histogram
    compaction_failures: Counter
    log_files: Gauge

    @classmethod
    def create(cls) -> "EventLogMetrics":
        r = CollectorRegistry()
        return cls(
            registry=r,
            events=Counter("qanchor_eventlog_events", "records made durable in the log, by outcome (logged = a "
                           "row was written; skipped = ingest rejects it, so the log leaves it out)", ["outcome"],
                           registry=r),
            skipped=Counter("qanchor_eventlog_skipped", "records left out because ingest rejects them (ingest "
                            "dead-letters them; the log does not), by ingest's DLQ reason", ["reason"], registry=r),
            segments=Counter("qanchor_eventlog_segment_files", "Parquet files written (one per partition, flush "
                             "and event day)", registry=r),
            covered_deleted=Counter("qanchor_eventlog_covered_deleted", "older segment files deleted because a "
                                    "replay wrote a segment covering their offsets", registry=r),
            flush_seconds=Histogram("qanchor_eventlog_flush_seconds", "time to write one flush's segments and "
                                    "commit", buckets=STAGE_BUCKETS, registry=r),
            flush_failures=Counter("qanchor_eventlog_flush_failures", "flush attempts that failed, by error",
                                   ["error"], registry=r),
            buffered=Gauge("qanchor_eventlog_buffered_records", "records consumed but not yet durable", registry=r),
            rebalance_dropped=Counter("qanchor_eventlog_rebalance_dropped_records", "buffered records dropped "
                                      "(uncommitted, read again) because their partition was revoked", registry=r),
            lag=Gauge("qanchor_eventlog_consumer_lag", "records not yet in the log: the partition's end offset minus "
                      "the group's committed offset", ["partition"], registry=r),
            compacted_files=Counter("qanchor_eventlog_compacted_files", "small files merged by compaction (and "
                                    "deleted once the merged file was durable)", registry=r),
            compaction_written=Counter("qanchor_eventlog_compaction_files_written", "merged (-c) files written by "
                                       "compaction", registry=r),
            compaction_duplicates=Counter("qanchor_eventlog_compaction_duplicates_dropped", "rows compaction left "
                                          "out as second copies of an event_id (readers skipped them anyway)",
                                          registry=r),
            compaction_seconds=Histogram("qanchor_eventlog_compaction_seconds", "time of one compaction pass",
                                         buckets=STAGE_BUCKETS, registry=r),
            compaction_failures=Counter("qanchor_eventlog_compaction_failures", "compaction passes that failed, by "
                                        "error (the next pass retries)", ["error"], registry=r),
            log_files=Gauge("qanchor_eventlog_files", "Parquet files in the log after the last compaction pass",
                            registry=r),
        )

    def serve(self, port: int, host: str = "127.0.0.1", alive: Callable[[], str | None] | None = None) -> None:
        serve_metrics(self.registry, port, host, alive, thread_name="eventlog-metrics")
