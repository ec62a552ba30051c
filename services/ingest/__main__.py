"""`python -m services.ingest`: run one ingest consumer (start more with the same INGEST_GROUP_ID to scale out).

Settings come from INGEST_* and QANCHOR_* environment variables (services/ingest/settings.py). SIGTERM/SIGINT
finish the batch in hand (push + commit), then close the consumer cleanly so the group rebalances at once.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading

from kafka import ConsumerRebalanceListener

from services.common.logging import setup_logging
from services.ingest.settings import IngestSettings

log = logging.getLogger("services.ingest")


def wait_for_topic(consumer, topic: str, timeout_s: float) -> None:
    """Join the group only once this client knows the topic's partitions.

    A member that joins before its metadata has the topic is assigned nothing (kafka-python's assignor logs
    "No partition metadata for topic") and was seen to stay idle for minutes on a fresh topic.
    """
    import time

    deadline = time.monotonic() + timeout_s
    while not consumer.partitions_for_topic(topic):
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic!r} has no partitions after {timeout_s:.0f}s: create it "
                               "(qanchor stack up creates the project's topics) or fix INGEST_TOPIC")
        time.sleep(0.5)


def build_worker(settings: IngestSettings):
    """Connect everything (Kafka consumer + DLQ producer, Feast, Triton) and return (worker, closers)."""
    from kafka import KafkaConsumer

    from services.ingest.consumer import IngestWorker
    from services.ingest.encoder import CachedEncoder, RedisVectorCache, TritonTextEncoder
    from services.ingest.metrics import IngestMetrics
    from services.ingest.producer import make_producer
    from services.ingest.state import PartitionUserState
    from services.ingest.transform import load_ingest_spec
    from services.ingest.writer import FeastFeatureStore

    spec = load_ingest_spec(settings.sources_yaml)
    metrics = IngestMetrics.create()
    port = settings.resolved_metrics_port()
    if port:
        metrics.serve(port)
        log.info("metrics serving port=%d", port)
    triton = TritonTextEncoder(settings.triton(), settings.encoder_model, settings.encoder_max_batch)
    triton.wait_ready(timeout_s=120)
    store = FeastFeatureStore(settings.feast_location(), spec.features)
    store.warm_up()
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap(),
        group_id=settings.group_id,
        group_instance_id=settings.group_instance_id,
        client_id=f"qanchor-ingest-{settings.group_instance_id or 'dynamic'}",
        enable_auto_commit=False,  # offsets are committed only after the features are pushed
        auto_offset_reset=settings.auto_offset_reset,
        max_poll_records=settings.max_poll_records,
        max_poll_interval_ms=settings.max_poll_interval_ms,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(1000, settings.session_timeout_ms // 3),
        isolation_level="read_committed",
        # Backstop for the race below: a member assigned nothing re-checks metadata (and rejoins) within 10 s.
        metadata_max_age_ms=10_000,
    )
    wait_for_topic(consumer, settings.topic, timeout_s=60.0)
    state = PartitionUserState(settings.user_state_size)
    listener = _RebalanceListener(state)
    consumer.subscribe([settings.topic], listener=listener)
    dlq = make_producer(settings.bootstrap(), client_id="qanchor-ingest-dlq")
    l2 = None
    if settings.vector_cache():
        l2 = RedisVectorCache.from_url(settings.vector_cache(), settings.encoder_id, spec.features.encoder_dim,
                                       settings.vector_cache_ttl_s)
        log.info("vector cache url=%s encoder_id=%s ttl_s=%d", settings.vector_cache(), settings.encoder_id,
                 settings.vector_cache_ttl_s)
    worker = IngestWorker(
        consumer, dlq, store, CachedEncoder(triton, settings.encoder_cache_size, l2), spec, metrics,
        dlq_topic=settings.dlq_topic, group_id=settings.group_id,
        max_poll_interval_s=settings.max_poll_interval_ms / 1000.0, max_poll_records=settings.max_poll_records,
        poll_timeout_ms=settings.poll_timeout_ms, retry_backoff_s=settings.retry_backoff_s,
        max_batch_attempts=settings.max_batch_attempts, state=state,
        watchdog=rejoin_watchdog(consumer, settings.topic, listener, settings.rejoin_timeout_s),
    )

    def close() -> None:
        consumer.close(autocommit=False)  # leaves the group now, so the partitions move without a timeout
        dlq.close(timeout=10)
        triton.close()
        if l2 is not None:
            l2.close()

    return worker, close


class _RebalanceListener(ConsumerRebalanceListener):
    """Batches are processed and committed inside poll's thread, so a revoke never interrupts one.

    Both callbacks drop the remembered rows of the partitions involved: after a revoke another member may write
    them, and on an assign we may have missed writes made while the partition was elsewhere.
    """

    def __init__(self, state, clock=None) -> None:
        import time

        self.state = state
        self.clock = clock or time.monotonic
        self.rejoining_since: float | None = None  # set by a revoke, cleared by the assign that ends the rejoin

    def on_partitions_revoked(self, revoked) -> None:
        log.info("partitions revoked partitions=%s", ",".join(str(tp.partition) for tp in sorted(revoked)))
        self.state.forget_partitions([tp.partition for tp in revoked], "revoked")
        self.rejoining_since = self.clock()

    def on_partitions_assigned(self, assigned) -> None:
        log.info("partitions assigned partitions=%s", ",".join(str(tp.partition) for tp in sorted(assigned)))
        self.state.forget_partitions([tp.partition for tp in assigned], "assigned")
        self.rejoining_since = None

    def rejoin_stuck(self, timeout_s: float) -> bool:
        """True when a rejoin has been pending longer than `timeout_s` (a surplus member still gets an empty
        assign, so this only fires when the group protocol itself stalled)."""
        return bool(timeout_s) and self.rejoining_since is not None and self.clock() - self.rejoining_since > timeout_s


def rejoin_watchdog(consumer, topic: str, listener: _RebalanceListener, timeout_s: float):
    """A callable for IngestWorker's loop: re-subscribe when the rejoin after a revoke never completes."""
    def check() -> None:
        if listener.rejoin_stuck(timeout_s):
            log.warning("rejoin stuck after revoke for more than %.0fs: re-subscribing topic=%s", timeout_s, topic)
            listener.rejoining_since = listener.clock()
            consumer.unsubscribe()
            consumer.subscribe([topic], listener=listener)
    return check


def main() -> int:
    settings = IngestSettings()
    setup_logging("ingest", settings.log_level)
    # Feast logs a registry refresh per read and kafka-python every connection at INFO: keep our lines greppable.
    for noisy in ("feast", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    stop = threading.Event()

    def on_signal(signum: int, _frame) -> None:
        log.info("signal received signal=%s: finishing the current batch", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("ingest starting topic=%s group=%s bootstrap=%s triton=%s", settings.topic, settings.group_id,
             settings.bootstrap(), settings.triton())
    worker, close = build_worker(settings)
    try:
        worker.run(stop)
    finally:
        close()
    log.info("ingest stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
