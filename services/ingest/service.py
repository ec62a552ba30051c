"""Wiring: settings -> Triton encoder, Feast store, Kafka group, DLQ -> IngestWorker (like services.gateway.server).

`python -m services.ingest` calls `build_ingest` and runs the worker; tests drive `IngestWorker` directly.
"""
from __future__ import annotations

import logging

from services.common.lifecycle import WorkerService
from services.ingest.consumer import IngestLimits, IngestWorker
from services.ingest.schema import EventLimits
from services.ingest.settings import IngestSettings

log = logging.getLogger(__name__)


def limits_from(settings: IngestSettings) -> IngestLimits:
    events = EventLimits(max_record_bytes=settings.max_record_bytes, max_depth=settings.max_json_depth,
                         max_text_chars=settings.max_text_chars, max_future_skew_s=settings.max_future_skew_s)
    return IngestLimits(max_poll_records=settings.max_poll_records, poll_timeout_ms=settings.poll_timeout_ms,
                        max_poll_interval_s=settings.max_poll_interval_ms / 1000.0,
                        retry_backoff_s=settings.retry_backoff_s, max_batch_attempts=settings.max_batch_attempts,
                        dlq_attempts=settings.dlq_attempts, commit_timeout_ms=settings.group_timeout_ms,
                        events=events)


def build_ingest(settings: IngestSettings) -> WorkerService[IngestWorker]:
    """Connect everything (Kafka consumer + DLQ producer, Feast, Triton, the shared text-vector cache)."""
    import dataclasses
    import time

    from services.ingest.dlq import DeadLetterQueue
    from services.ingest.encoder import CachedEncoder, RedisVectorCache, TritonTextEncoder
    from services.ingest.gate import FileGate
    from services.ingest.group import join, leave_group, open_consumer, rejoin_watchdog
    from services.ingest.lag import GroupLagReader, LagMonitor
    from services.ingest.metrics import IngestMetrics
    from services.ingest.producer import make_producer
    from services.ingest.state import PartitionUserState
    from services.ingest.transform import load_ingest_spec, load_normalisation
    from services.ingest.writer import FeastFeatureStore

    spec = dataclasses.replace(load_ingest_spec(settings.sources_yaml), recent_ids=settings.recent_event_ids)
    spec = dataclasses.replace(spec, normalisation=load_normalisation(settings.normalisation, spec))
    metrics = IngestMetrics.create()
    worker_ref: list[IngestWorker] = []
    port = settings.resolved_metrics_port()
    if port:
        # Until the worker exists the loop cannot be stalled: start-up is the startup probe's business.
        metrics.serve(port, settings.metrics_host,
                      alive=lambda: worker_ref[0].stalled(settings.liveness_timeout_s) if worker_ref else None)
        log.info("metrics serving", extra={"host": settings.metrics_host, "port": port})
    triton = TritonTextEncoder(settings.resolved_triton_url(), settings.triton_model, settings.encoder_max_batch)
    triton.wait_ready(timeout_s=120)
    store = FeastFeatureStore(settings.resolved_feast_location(), spec.features)
    store.warm_up()
    consumer = open_consumer(settings)
    state = PartitionUserState(settings.user_state_size)
    listener = join(consumer, settings, state)
    lag = LagMonitor(GroupLagReader(settings.resolved_kafka_bootstrap(), settings.group_id, settings.topic),
                     metrics.lag, owned=lambda: listener.owned, interval_s=settings.lag_refresh_s)
    lag.start()
    # A DLQ that does not answer must fail its batch within seconds, not hold it for the default two minutes.
    producer = make_producer(settings.resolved_kafka_bootstrap(), client_id="qanchor-ingest-dlq",
                             max_block_ms=15_000, delivery_timeout_ms=30_000, request_timeout_ms=10_000)
    l2 = None
    url = settings.resolved_vector_cache_url()
    if url:
        l2 = RedisVectorCache.from_url(url, settings.encoder_id, spec.features.encoder_dim,
                                       settings.vector_cache_ttl_s)
        log.info("vector cache", extra={"url": url, "encoder_id": settings.encoder_id,
                                        "ttl_s": settings.vector_cache_ttl_s})
    warmer = ab = None
    if settings.warm_triton_url:
        from services.gateway.clients.triton_pool import Discovery, TritonPool
        from services.ingest.warm import PrefixWarmer

        versions = None
        if settings.warm_ab_config is not None:
            from services.gateway.ab_watcher import ConfigWatcher
            from services.gateway.routing import routed_model_versions

            # Not validated against the registry (the gateway does that): only the arms' model versions are read.
            # A bad or missing file is logged and the default version warmed until a good one appears.
            ab = ConfigWatcher(settings.warm_ab_config)
            ab.poll()
            ab.start()
            versions = lambda user_id: routed_model_versions(ab.config, user_id)  # noqa: E731
        # The gateway's own pool: the same consistent-hash ring, so a warm-up lands on the user's home replica.
        pool = TritonPool(Discovery(settings.warm_triton_url.split(","), dns=settings.warm_discovery == "dns"),
                          spec.features, settings.warm_model)
        warmer = PrefixWarmer(pool, rate_per_s=settings.warm_rate_per_s, max_pending=settings.warm_max_pending,
                              busy_s=settings.warm_busy_s, cooldown_s=settings.warm_cooldown_s,
                              counter=metrics.prefix_warms, versions=versions).start()
        log.info("prefix warming on", extra={"triton": settings.warm_triton_url, "model": settings.warm_model,
                                             "rate_per_s": settings.warm_rate_per_s,
                                             "ab_config": str(settings.warm_ab_config or "")})
    worker = IngestWorker(
        consumer, DeadLetterQueue(producer, settings.dlq_topic, settings.group_id, time.time), store,
        CachedEncoder(triton, settings.encoder_cache_size, l2), spec, metrics, limits_from(settings),
        state=state, watchdog=rejoin_watchdog(consumer, settings.topic, listener, settings.rejoin_timeout_s),
        gate=FileGate(settings.batch_gate) if settings.batch_gate else None,
        on_written=warmer.offer if warmer is not None else None,
    )
    worker_ref.append(worker)
    # Leaving the group first moves the partitions at once.
    closers = [("consumer", lambda: leave_group(consumer, settings)),
               ("lag", lag.stop), ("dlq_producer", lambda: producer.close(timeout=10)), ("triton", triton.close)]
    if l2 is not None:
        closers.append(("vector_cache", l2.close))
    if warmer is not None:
        closers += [("warmer", warmer.close), ("warm_pool", pool.close)]
    if ab is not None:
        closers.append(("warm_ab_watcher", ab.stop))
    return WorkerService("ingest", worker, closers)
