"""Rejoin watchdog: a revoke must be followed by an assign; a stalled rejoin re-subscribes once per timeout."""
from __future__ import annotations

from services.ingest.group import RebalanceListener, rejoin_watchdog
from services.ingest.state import PartitionUserState


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeConsumer:  # records what the watchdog asks of the Kafka client
    def __init__(self) -> None:
        self.calls: list[str] = []

    def unsubscribe(self) -> None:
        self.calls.append("unsubscribe")

    def subscribe(self, topics, listener) -> None:
        self.calls.append(f"subscribe {topics[0]}")


def test_a_completed_rejoin_even_with_no_partitions_is_not_stuck():
    clock = Clock()
    listener = RebalanceListener(PartitionUserState(0), clock)
    listener.on_partitions_revoked([])
    clock.t = 100.0
    assert listener.rejoin_stuck(30.0)
    listener.on_partitions_assigned([])  # a surplus member: the rejoin completed with nothing to own
    assert not listener.rejoin_stuck(30.0)


def test_a_stalled_rejoin_resubscribes_once_per_timeout():
    clock, consumer = Clock(), FakeConsumer()
    listener = RebalanceListener(PartitionUserState(0), clock)
    check = rejoin_watchdog(consumer, "events", listener, 30.0)
    listener.on_partitions_revoked([])
    clock.t = 29.0
    check()
    assert consumer.calls == []
    clock.t = 31.0
    check()
    check()  # the timer restarted at the re-subscribe
    assert consumer.calls == ["unsubscribe", "subscribe events"]
    clock.t = 62.0
    check()
    assert consumer.calls.count("unsubscribe") == 2
    assert not rejoin_watchdog(consumer, "events", RebalanceListener(PartitionUserState(0), clock), 0.0)()
