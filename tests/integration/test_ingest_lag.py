"""The consumer-lag gauge against the real broker: exactly the records not yet committed by the group."""
from __future__ import annotations

import uuid

import pytest
from prometheus_client import CollectorRegistry, Gauge

from services.ingest.lag import GroupLagReader, LagMonitor
from services.ingest.producer import make_producer

pytestmark = pytest.mark.integration


def test_lag_is_end_offset_minus_committed_offset(stack) -> None:  # type: ignore[no-untyped-def]
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.structs import OffsetAndMetadata

    topic, group = f"test.lag.{uuid.uuid4().hex[:8]}", f"lag-{uuid.uuid4().hex[:6]}"
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        admin.close()
    producer = make_producer(stack.kafka_bootstrap)
    try:
        for i in range(30):  # 20 records on partition 0, 10 on partition 1
            producer.send(topic, key=f"u{i}".encode(), value=b"{}", partition=0 if i < 20 else 1)
        producer.flush()
    finally:
        producer.close()

    reader = GroupLagReader(stack.kafka_bootstrap, group, topic)
    try:
        assert reader.read() == {0: 20, 1: 10}  # nothing committed: everything is behind
        committer = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, group_id=group,
                                  enable_auto_commit=False)
        try:
            committer.commit({TopicPartition(topic, 0): OffsetAndMetadata(15, "", -1)})
        finally:
            committer.close(autocommit=False)
        assert reader.read() == {0: 5, 1: 10}

        registry = CollectorRegistry()
        gauge = Gauge("qanchor_ingest_consumer_lag", "lag", ["partition"], registry=registry)
        LagMonitor(reader, gauge, owned=lambda: frozenset({0})).poll_once()
        assert registry.get_sample_value("qanchor_ingest_consumer_lag", {"partition": "0"}) == 5
        assert registry.get_sample_value("qanchor_ingest_consumer_lag", {"partition": "1"}) is None
    finally:
        reader.close()
