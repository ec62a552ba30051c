"""The dead-letter queue: where a record that cannot be applied goes, with why and where it came from.

A rejected record is copied with its original key, value and headers, plus `qanchor.*` headers (reason, detail,
source topic/partition/offset, group, time); docs/ingest.md lists the reasons. The batch waits for every DLQ send
before it commits, so a rejected record is never lost (delivery is at-least-once: a replay may send it again).
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from services.ingest.schema import EventRejected


class Record(Protocol):
    """The parts of kafka-python's ConsumerRecord the worker reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


# The headers a dead letter carries besides the record's own (all under HEADER_PREFIX); services/ingest/redrive.py
# reads them back.
HEADER_PREFIX = "qanchor."
REASON, DETAIL, TOPIC = "qanchor.reason", "qanchor.detail", "qanchor.topic"
PARTITION, OFFSET, GROUP, REJECTED_AT = "qanchor.partition", "qanchor.offset", "qanchor.group", "qanchor.rejected_at"
TRUNCATED_FROM = "qanchor.truncated_from"


def dlq_headers(record: Record, exc: EventRejected, group_id: str, now: float) -> list[tuple[str, bytes]]:
    """Original headers plus where the record came from and why it was rejected."""
    ours = [
        (REASON, exc.reason.encode()),
        (DETAIL, exc.detail.encode("utf-8", "replace")[:1000]),
        (TOPIC, record.topic.encode()),
        (PARTITION, str(record.partition).encode()),
        (OFFSET, str(record.offset).encode()),
        (GROUP, group_id.encode()),
        (REJECTED_AT, f"{now:.3f}".encode()),
    ]
    return [*(record.headers or []), *ours]


# The most of a rejected value the DLQ keeps (Kafka's default request limit is 1 MiB, and headers ride along);
# a longer value is cut, and `qanchor.truncated_from` says how long it was.
MAX_DLQ_VALUE_BYTES = 900 * 1024


class DeadLetterUnavailable(RuntimeError):
    """A dead letter could not be written: the batch must not commit (its rejected records would be lost)."""


class DeadLetterQueue:
    """Sends rejected records to `topic` through a Kafka producer (or anything with send/flush)."""

    def __init__(self, producer: Any, topic: str, group_id: str, clock: Callable[[], float]) -> None:
        self.producer, self.topic, self.group_id, self.clock = producer, topic, group_id, clock

    def send(self, record: Record, exc: EventRejected) -> Any:
        """Start the send; -> a future the batch waits on (`wait`) before committing."""
        headers = dlq_headers(record, exc, self.group_id, self.clock())
        value = record.value if record.value is not None else b""  # a record may have neither key nor value
        if len(value) > MAX_DLQ_VALUE_BYTES:
            headers.append((TRUNCATED_FROM, str(len(value)).encode()))
            value = value[:MAX_DLQ_VALUE_BYTES]
        try:
            return self.producer.send(self.topic, key=record.key, value=value, headers=headers)
        except Exception as err:
            raise DeadLetterUnavailable(f"cannot send to {self.topic}: {type(err).__name__}: {err}") from err

    def wait(self, futures: Sequence[Any], timeout_s: float = 60.0) -> None:
        """Block until every send is acknowledged; a failed send raises (it must fail the batch, not vanish)."""
        if not futures:
            return
        try:
            self.producer.flush(timeout=timeout_s)
            for fut in futures:
                fut.get(timeout=timeout_s)
        except Exception as err:
            raise DeadLetterUnavailable(f"{self.topic} did not acknowledge: {type(err).__name__}: {err}") from err
