"""Publishing events: the Kafka producer settings every qanchor producer should use, and a JSONL publisher.

acks=all + enable_idempotence: the broker de-duplicates producer retries, so a retried send neither loses nor
doubles an event; records are keyed by user_id, so one partition holds one user's order.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from services.ingest.schema import EVENTS_TOPIC, EventRejected, parse_event

log = logging.getLogger(__name__)


def make_producer(bootstrap: str, client_id: str = "qanchor-producer", **overrides: Any):
    from kafka import KafkaProducer

    config: dict[str, Any] = dict(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,  # broker drops duplicates of retried batches
        retries=2**31 - 1,  # bounded by delivery_timeout_ms instead
        delivery_timeout_ms=120_000,
        linger_ms=5,  # a few ms of batching is worth ~10x throughput
        max_in_flight_requests_per_connection=5,  # the most idempotence allows while keeping order
    )
    config.update(overrides)
    return KafkaProducer(**config)


@dataclass
class PublishReport:
    sent: int = 0
    # (line number, reason) of lines that were not sent because they failed validation.
    refused: list[tuple[int, str]] = field(default_factory=list)


def user_key(line: bytes) -> bytes | None:
    """The record key (user_id) of a JSON event line, None when it has none."""
    try:
        obj = json.loads(line)
        uid = obj.get("user_id") if isinstance(obj, dict) else None
    except (ValueError, UnicodeDecodeError):
        return None
    return uid.encode("utf-8") if isinstance(uid, str) and uid else None


def publish_lines(producer, lines: Iterable[bytes], topic: str = EVENTS_TOPIC, validate: bool = True,
                  sources: Iterable[str] = (), tabular_dim: int = 0, timeout_s: float = 120.0) -> PublishReport:
    """Send JSON event lines keyed by user_id; with `validate`, refuse (and report) lines the consumer would DLQ."""
    report = PublishReport()
    known = set(sources)
    futures = []
    for n, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        key = user_key(line)
        if validate:
            try:
                parse_event(line, key, known, tabular_dim, now=time.time())
            except EventRejected as exc:
                report.refused.append((n, str(exc)))
                continue
        futures.append(producer.send(topic, key=key, value=line))
        report.sent += 1
    producer.flush(timeout=timeout_s)
    for fut in futures:
        fut.get(timeout=timeout_s)  # raises the first delivery error instead of reporting success
    return report
