"""Wiring: settings -> Kafka group, log root, metrics -> EventLogWorker (like services.ingest.service).

`python -m services.eventlog` calls `build_eventlog` and runs the worker; tests drive `EventLogWorker` directly.
"""
from __future__ import annotations

import logging

from services.common.lifecycle import WorkerService
from services.eventlog.compact import CompactionPolicy, PeriodicCompaction
from services.eventlog.consumer import EventLogRebalanceListener, EventLogWorker, FlushPolicy
from services.eventlog.settings import EventLogSettings
from services.ingest.schema import EventLimits
from services.ingest.settings import IngestSettings

log = logging.getLogger(__name__)


def ingest_limits(ingest: IngestSettings) -> EventLimits:
    """Ingest's own record limits (INGEST_MAX_* variables): the log skips exactly what ingest dead-letters."""
    from services.ingest.service import limits_from

    return limits_from(ingest).events


def build_eventlog(settings: EventLogSettings, ingest: IngestSettings) -> WorkerService[EventLogWorker]:
    """Connect the Kafka consumer (own group), serve metrics, and build the worker."""
    from services.eventlog.metrics import EventLogMetrics
    from services.ingest.gate import FileGate
    from services.ingest.group import leave_group, open_consumer, wait_for_topic
    from services.ingest.lag import GroupLagReader, LagMonitor
    from services.ingest.transform import load_ingest_spec

    spec = load_ingest_spec(settings.sources_yaml or ingest.sources_yaml)
    root = settings.resolved_root()
    root.mkdir(parents=True, exist_ok=True)
    metrics = EventLogMetrics.create()
    worker_ref: list[EventLogWorker] = []
    port = settings.resolved_metrics_port()
    if port:
        metrics.serve(port, settings.metrics_host,
                      alive=lambda: worker_ref[0].stalled(settings.liveness_timeout_s) if worker_ref else None)
        log.info("metrics serving", extra={"host": settings.metrics_host, "port": port})
    consumer = open_consumer(settings, client_name="qanchor-eventlog")
    wait_for_topic(consumer, settings.topic, timeout_s=60.0)
    listener = EventLogRebalanceListener()
    policy = FlushPolicy(records=settings.flush_records, interval_s=settings.flush_interval_s,
                         max_attempts=settings.max_flush_attempts, retry_backoff_s=settings.retry_backoff_s)
    worker = EventLogWorker(consumer, root, spec.source_names, spec.features.tabular_dim, metrics, policy,
                            ingest_limits(ingest), poll_timeout_ms=settings.poll_timeout_ms,
                            max_poll_records=settings.max_poll_records, commit_timeout_ms=settings.group_timeout_ms,
                            gate=FileGate(settings.batch_gate) if settings.batch_gate else None)
    listener.worker = worker
    consumer.subscribe([settings.topic], listener=listener)
    worker_ref.append(worker)
    lag = LagMonitor(GroupLagReader(settings.resolved_kafka_bootstrap(), settings.group_id, settings.topic),
                     metrics.lag, owned=lambda: listener.owned, interval_s=settings.lag_refresh_s)
    lag.start()
    closers = [("consumer", lambda: leave_group(consumer, settings)), ("lag", lag.stop)]
    if settings.compact_interval_s > 0:
        compaction = PeriodicCompaction(
            root, CompactionPolicy(min_age_s=settings.compact_min_age_s, target_rows=settings.compact_target_rows,
                                   memory_mib=settings.compact_memory_mib),
            settings.compact_interval_s, metrics, settings.topic, owned=lambda: listener.owned)
        compaction.start()
        # Stopped first: a pass in flight ends while this member still owns its partitions, so the next owner's
        # compaction never overlaps it.
        closers.insert(0, ("compaction", compaction.stop))
    return WorkerService("eventlog", worker, closers)
