"""Kafka broker of the local stack: project topics exist, keyed messages round-trip in per-key order."""
from __future__ import annotations

import time
import uuid
from collections import defaultdict

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from services.stack import Endpoints
from services.stack.kafka import load_topics

pytestmark = pytest.mark.integration


def test_project_topics_are_created(stack: Endpoints) -> None:
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    try:
        names = [t.name for t in load_topics()]
        described = {d["name"]: len(d["partitions"]) for d in admin.describe_topics(names)}
    finally:
        admin.close()
    assert described == {t.name: t.partitions for t in load_topics()}
    assert described["qanchor.events.v1"] == 4


def test_keyed_round_trip_keeps_per_key_order(stack: Endpoints) -> None:
    topic = f"stack-test-{uuid.uuid4().hex[:8]}"  # own topic: other tests consume the project topics
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 4, 1)])
    admin.close()

    users, per_user = [f"user-{i}" for i in range(12)], 25
    producer = KafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all", linger_ms=5,
                             key_serializer=str.encode, value_serializer=str.encode)
    sent = []
    for seq in range(per_user):  # interleave users, as a live event stream would
        for user in users:
            sent.append(producer.send(topic, key=user, value=f"{user}:{seq}"))
    producer.flush(timeout=30)
    metadata = [f.get(timeout=30) for f in sent]
    producer.close()

    consumer = KafkaConsumer(topic, bootstrap_servers=stack.kafka_bootstrap, group_id=f"g-{topic}",
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             key_deserializer=bytes.decode, value_deserializer=bytes.decode)
    received = []
    deadline = time.monotonic() + 60
    while len(received) < len(sent) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            received.extend(records)
    consumer.commit()
    committed = {tp.partition: consumer.committed(tp) for tp in consumer.assignment()}
    end_offsets = {tp.partition: off for tp, off in consumer.end_offsets(list(consumer.assignment())).items()}
    consumer.close()

    assert len(received) == len(users) * per_user
    by_user: dict[str, list[int]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for rec in received:
        user, seq = rec.value.split(":")
        assert rec.key == user
        by_user[user].append(int(seq))
        partitions[user].add(rec.partition)
    # Same key -> same partition -> delivered in the order it was produced.
    assert all(seqs == list(range(per_user)) for seqs in by_user.values())
    assert all(len(p) == 1 for p in partitions.values())
    # The producer's view agrees with the consumer's, and the keys spread over more than one partition.
    produced_partition = {}
    for rec_meta, fut_user in zip(metadata, [u for _ in range(per_user) for u in users]):
        produced_partition.setdefault(fut_user, rec_meta.partition)
    assert produced_partition == {u: next(iter(p)) for u, p in partitions.items()}
    assert len({next(iter(p)) for p in partitions.values()}) > 1
    assert committed == end_offsets and sum(end_offsets.values()) == len(sent)
