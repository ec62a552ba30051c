"""Re-drive dead letters: send rejected records back to the topic they came from, once their cause is fixed.

The DLQ keeps every record ingest rejected, with why (docs/ingest.md, "Dead letters"). After the fix (a source
added to sources.yaml and ingest restarted, a limit raised, a producer bug fixed and the events re-built), the
operator sends the letters back:

    qanchor events redrive --reason unknown_source --dry-run    # what would go back, and what would fail again
    qanchor events redrive --reason unknown_source              # send them

Each selected letter is validated first as ingest would (its parser, this shell's INGEST_MAX_* limits, the
sources.yaml given), and only the records that now pass are sent: with their original key and value, their own
headers (the `qanchor.*` ones dropped) and `qanchor.redrive_of` naming the letter, to the topic their
`qanchor.topic` header names. Those that would be rejected again stay where they are and are reported with the
reason, as are `beyond_dedup_memory` letters, which the user's row (not the parser) rejected and would reject again.
A value the DLQ cut (`qanchor.truncated_from`) is never sent: the original is not there.

Re-driving twice is safe: ingest applies an event_id once (its per-user memory, docs/ingest.md "Re-sent events
apply once"), so the second copy counts as a duplicate. The read stops at the DLQ's end as it was when it started,
so a record that fails again and lands in the DLQ anew is not picked up by the same run.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Collection, Iterable, Iterator

from services.ingest.dlq import HEADER_PREFIX, REASON, REJECTED_AT, TOPIC, TRUNCATED_FROM
from services.ingest.schema import EventLimits, EventRejected, parse_event

REDRIVE_HEADER = "qanchor.redrive_of"


@dataclass(frozen=True)
class DeadLetter:
    topic: str       # the DLQ topic
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v.decode("utf-8", "replace")
        return None

    @property
    def reason(self) -> str:
        return self.header(REASON) or "unknown"

    @property
    def rejected_at(self) -> float | None:
        text = self.header(REJECTED_AT)
        try:
            return float(text) if text is not None else None
        except ValueError:
            return None

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class Selection:
    """Which letters to re-drive: all of these that are given (None = no condition)."""

    reasons: frozenset[str] | None = None
    users: frozenset[str] | None = None   # by record key (the user id)
    since: float | None = None            # rejected at or after (unix seconds)
    until: float | None = None            # rejected at or before
    limit: int | None = None              # at most this many letters

    def matches(self, letter: DeadLetter) -> bool:
        if self.reasons is not None and letter.reason not in self.reasons:
            return False
        if self.users is not None and (letter.key or b"").decode("utf-8", "replace") not in self.users:
            return False
        at = letter.rejected_at
        if self.since is not None and (at is None or at < self.since):
            return False
        if self.until is not None and (at is None or at > self.until):
            return False
        return True


@dataclass
class RedriveReport:
    read: int = 0
    selected: int = 0
    sent: int = 0
    selected_by_reason: Counter = field(default_factory=Counter)
    # (where, the reason it was rejected then, why it is not sent now)
    refused: list[tuple[str, str, str]] = field(default_factory=list)
    sent_to: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"read": self.read, "selected": self.selected, "sent": self.sent,
                "selected_by_reason": dict(self.selected_by_reason), "sent_to": dict(self.sent_to),
                "refused": [{"letter": w, "reason": r, "now": why} for w, r, why in self.refused]}


def read_dead_letters(consumer: Any, topic: str) -> Iterator[DeadLetter]:
    """Every record of `topic` from its beginning up to its end *as it is now*, through an unsubscribed consumer
    (manual assignment: no group, nothing committed)."""
    from kafka.structs import TopicPartition

    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise LookupError(f"no topic {topic} on this broker (nothing was ever dead-lettered, or another name: "
                          "--topic)")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    end = {tp: o for tp, o in consumer.end_offsets(tps).items()}
    pending = {tp for tp in tps if end[tp] > consumer.position(tp)}
    while pending:
        polled = consumer.poll(timeout_ms=1000, max_records=500)
        for tp, records in polled.items():
            for rec in records:
                if rec.offset >= end[tp]:
                    continue
                yield DeadLetter(rec.topic, rec.partition, rec.offset, rec.key, rec.value or b"",
                                 tuple(rec.headers or ()))
        for tp in list(pending):
            if consumer.position(tp) >= end[tp]:
                pending.discard(tp)


def redrive(letters: Iterable[DeadLetter], selection: Selection, producer: Any | None, *,
            sources: Collection[str], tabular_dim: int, limits: EventLimits | None = None, validate: bool = True,
            to_topic: str | None = None, timeout_s: float = 60.0) -> RedriveReport:
    """Validate and send the selected letters (`producer` None = a dry run: validate and count only)."""
    report = RedriveReport()
    limits = limits or EventLimits()
    known = set(sources)
    futures = []
    for letter in letters:
        report.read += 1
        if not selection.matches(letter):
            continue
        if selection.limit is not None and report.selected >= selection.limit:
            break
        report.selected += 1
        report.selected_by_reason[letter.reason] += 1
        target = to_topic or letter.header(TOPIC)
        if letter.header(TRUNCATED_FROM) is not None:
            report.refused.append((letter.where, letter.reason, "the DLQ kept only the first 900 KiB of this value "
                                   f"({letter.header(TRUNCATED_FROM)} bytes): send it again from its "
                                   "producer"))
            continue
        if not target:
            report.refused.append((letter.where, letter.reason, "no qanchor.topic header: pass --to TOPIC"))
            continue
        if validate and letter.reason == "beyond_dedup_memory":
            # Rejected by the user's row, not the parser: its floor only rises, so ingest would reject it again.
            report.refused.append((letter.where, letter.reason, "ingest rejects it again: the user's row cannot tell "
                                   "it from a re-send of an event it no longer remembers (docs/ingest.md)"))
            continue
        if validate:
            try:
                parse_event(letter.value, letter.key, known, tabular_dim, limits, now=time.time())
            except EventRejected as exc:
                report.refused.append((letter.where, letter.reason, f"{exc.reason}: {exc.detail}"))
                continue
        report.sent_to[target] += 1
        if producer is None:
            continue
        headers = [(k, v) for k, v in letter.headers if not k.startswith(HEADER_PREFIX)]
        headers.append((REDRIVE_HEADER, letter.where.encode()))
        futures.append(producer.send(target, key=letter.key, value=letter.value, headers=headers))
    if producer is not None:
        producer.flush(timeout=timeout_s)
        for fut in futures:
            fut.get(timeout=timeout_s)  # a failed send raises: nothing is reported sent that was not
        report.sent = len(futures)
    return report
