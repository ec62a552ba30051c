"""Consumer-group membership: the Kafka consumer, joining once the topic is known, the rebalance listener, and
the rejoin watchdog (docs/ingest.md, "Scaling out" and "Rejoin watchdog").
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Protocol

from kafka import ConsumerRebalanceListener

from services.ingest.settings import IngestSettings
from services.ingest.state import PartitionUserState

log = logging.getLogger(__name__)


class ConsumerSettings(Protocol):
    """The settings a group consumer reads (IngestSettings, EventLogSettings)."""

    group_id: str
    group_instance_id: str | None
    auto_offset_reset: str
    max_poll_records: int
    max_poll_interval_ms: int
    session_timeout_ms: int
    group_timeout_ms: int

    def resolved_kafka_bootstrap(self) -> str: ...


def open_consumer(settings: ConsumerSettings, client_name: str = "qanchor-ingest") -> Any:
    """A KafkaConsumer of the settings' group, not yet subscribed (see `join`)."""
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=settings.resolved_kafka_bootstrap(),
        group_id=settings.group_id,
        group_instance_id=settings.group_instance_id,
        client_id=f"{client_name}-{settings.group_instance_id or 'dynamic'}",
        enable_auto_commit=False,  # offsets are committed only after the batch's effect is durable
        auto_offset_reset=settings.auto_offset_reset,
        max_poll_records=settings.max_poll_records,
        max_poll_interval_ms=settings.max_poll_interval_ms,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(1000, settings.session_timeout_ms // 3),
        isolation_level="read_committed",
        # Backstop for the race in wait_for_topic: a member assigned nothing re-checks metadata (and rejoins)
        # within 10 s.
        metadata_max_age_ms=10_000,
    )


def leave_group(consumer: Any, settings: ConsumerSettings) -> None:
    """Close the consumer, leaving the group so its partitions move at once instead of after the session timeout.
    Best effort, bounded by group_timeout_ms (kafka-python's own default is the 30 s request timeout); nothing is
    committed here: the worker commits what it finished."""
    consumer.close(autocommit=False, timeout_ms=settings.group_timeout_ms)


def wait_for_topic(consumer: Any, topic: str, timeout_s: float) -> None:
    """Join the group only once this client knows the topic's partitions.

    A member that joins before its metadata has the topic is assigned nothing (kafka-python's assignor logs
    "No partition metadata for topic") and was seen to stay idle for minutes on a fresh topic.
    """
    deadline = time.monotonic() + timeout_s
    while not consumer.partitions_for_topic(topic):
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic!r} has no partitions after {timeout_s:.0f}s: create it "
                               "(qanchor stack up creates the project's topics) or fix INGEST_TOPIC")
        time.sleep(0.5)


class RebalanceListener(ConsumerRebalanceListener):
    """Batches are processed and committed inside poll's thread, so a revoke never interrupts one.

    Both callbacks drop the remembered rows of the partitions involved: after a revoke another member may write
    them, and on an assign we may have missed writes made while the partition was elsewhere.
    """

    def __init__(self, state: PartitionUserState, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.clock = clock
        self.rejoining_since: float | None = None  # set by a revoke, cleared by the assign that ends the rejoin
        # Partitions this member owns now; replaced, never mutated, so other threads (the lag monitor) read it.
        self.owned: frozenset[int] = frozenset()

    def on_partitions_revoked(self, revoked) -> None:  # type: ignore[no-untyped-def]
        log.info("partitions revoked", extra={"partitions": ",".join(str(tp.partition) for tp in sorted(revoked))})
        self.state.forget_partitions([tp.partition for tp in revoked], "revoked")
        self.owned = self.owned - {tp.partition for tp in revoked}
        self.rejoining_since = self.clock()

    def on_partitions_assigned(self, assigned) -> None:  # type: ignore[no-untyped-def]
        log.info("partitions assigned",
                 extra={"partitions": ",".join(str(tp.partition) for tp in sorted(assigned))})
        self.state.forget_partitions([tp.partition for tp in assigned], "assigned")
        self.owned = frozenset(tp.partition for tp in assigned)
        self.rejoining_since = None

    def rejoin_stuck(self, timeout_s: float) -> bool:
        """True when a rejoin has been pending longer than `timeout_s` (a surplus member still gets an empty
        assign, so this only fires when the group protocol itself stalled)."""
        return bool(timeout_s) and self.rejoining_since is not None and self.clock() - self.rejoining_since > timeout_s


def rejoin_watchdog(consumer: Any, topic: str, listener: RebalanceListener,
                    timeout_s: float) -> Callable[[], None]:
    """A callable for IngestWorker's loop: re-subscribe when the rejoin after a revoke never completes."""
    def check() -> None:
        if listener.rejoin_stuck(timeout_s):
            log.warning("rejoin stuck after revoke: re-subscribing", extra={"timeout_s": timeout_s, "topic": topic})
            listener.rejoining_since = listener.clock()
            consumer.unsubscribe()
            consumer.subscribe([topic], listener=listener)
    return check


def join(consumer: Any, settings: IngestSettings, state: PartitionUserState) -> RebalanceListener:
    """Wait for the topic and subscribe with the rebalance listener (which then knows the owned partitions)."""
    wait_for_topic(consumer, settings.topic, timeout_s=60.0)
    listener = RebalanceListener(state)
    consumer.subscribe([settings.topic], listener=listener)
    return listener
