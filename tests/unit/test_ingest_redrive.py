"""Re-driving dead letters (services/ingest/redrive.py): selection, validation, what is sent (pure logic; the real
broker and ingest: tests/integration/test_dlq_redrive.py)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

pytest.importorskip("kafka", reason="services env only (Kafka structs)")

from kafka.structs import TopicPartition

from services.ingest.dlq import dlq_headers
from services.ingest.redrive import REDRIVE_HEADER, DeadLetter, Selection, read_dead_letters, redrive
from services.ingest.schema import EventLimits, EventRejected

SOURCES = ("liked", "neutral", "disliked")
T = 1_767_225_600.0


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list = field(default_factory=list)


def event(uid: str, i: int, source: str = "liked", text: str = "a film") -> bytes:
    return json.dumps({"schema_version": 1, "event_id": f"{uid}-{i}", "user_id": uid, "kind": "event",
                       "source": source, "ts": T + i, "text": text}).encode()


def letter(offset: int, uid: str, value: bytes, reason: str, at: float = T, own=(("trace", b"t1"),),
           cut: bool = False) -> DeadLetter:
    original = Rec("qanchor.events.v1", 2, 100 + offset, uid.encode(), value, list(own))
    headers = dlq_headers(original, EventRejected(reason, "why"), "qanchor-ingest", at)
    if cut:
        headers.append(("qanchor.truncated_from", b"2000000"))
    return DeadLetter("qanchor.events.v1.dlq", 0, offset, uid.encode(), value, tuple(headers))


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, list]] = []

    def send(self, topic, key=None, value=None, headers=None):
        self.sent.append((topic, key, value, headers))

        class Done:
            def get(self, timeout=None):
                return None
        return Done()

    def flush(self, timeout=None) -> None:
        pass


def test_the_selection_filters_by_reason_user_and_rejection_time():
    a = letter(0, "u1", event("u1", 0), "unknown_source", at=T)
    b = letter(1, "u2", event("u2", 1), "invalid_field", at=T + 100)
    assert Selection().matches(a) and Selection().matches(b)
    assert [Selection(reasons=frozenset({"invalid_field"})).matches(x) for x in (a, b)] == [False, True]
    assert [Selection(users=frozenset({"u1"})).matches(x) for x in (a, b)] == [True, False]
    assert [Selection(since=T + 50).matches(x) for x in (a, b)] == [False, True]
    assert [Selection(until=T + 50).matches(x) for x in (a, b)] == [True, False]


def test_letters_that_now_pass_go_back_with_their_key_value_and_own_headers_the_rest_stay():
    good = letter(0, "u1", event("u1", 0, source="liked"), "unknown_source")   # fixed: the source exists now
    still = letter(1, "u2", event("u2", 1, source="wishlist"), "unknown_source")  # not yet
    cut = letter(2, "u3", event("u3", 2), "record_too_large", cut=True)
    other = letter(3, "u4", b"{not json", "invalid_json")
    producer = Producer()
    report = redrive([good, still, cut, other], Selection(reasons=frozenset({"unknown_source", "record_too_large"})),
                     producer, sources=SOURCES, tabular_dim=4)
    assert (report.read, report.selected, report.sent) == (4, 3, 1)
    [(topic, key, value, headers)] = producer.sent
    assert (topic, key, value) == ("qanchor.events.v1", b"u1", good.value)
    assert headers == [("trace", b"t1"), (REDRIVE_HEADER, b"qanchor.events.v1.dlq[0]@0")]  # no stale qanchor.*
    assert [(w, r) for w, r, _ in report.refused] == [("qanchor.events.v1.dlq[0]@1", "unknown_source"),
                                                      ("qanchor.events.v1.dlq[0]@2", "record_too_large")]
    assert report.refused[0][2].startswith("unknown_source:") and "900 KiB" in report.refused[1][2]
    assert report.selected_by_reason == {"unknown_source": 2, "record_too_large": 1}


def test_limits_are_the_ones_given_and_a_dry_run_sends_nothing():
    long_text = letter(0, "u1", event("u1", 0, text="x" * 300), "invalid_field")
    producer = Producer()
    tight = redrive([long_text], Selection(), producer, sources=SOURCES, tabular_dim=4,
                    limits=EventLimits(max_text_chars=100))
    assert tight.sent == 0 and "invalid_field" in tight.refused[0][2]
    dry = redrive([long_text], Selection(), None, sources=SOURCES, tabular_dim=4,
                  limits=EventLimits(max_text_chars=1000))
    assert (dry.sent, dict(dry.sent_to), dry.refused) == (0, {"qanchor.events.v1": 1}, []) and not producer.sent
    forced = redrive([long_text], Selection(), producer, sources=SOURCES, tabular_dim=4,
                     limits=EventLimits(max_text_chars=100), validate=False, to_topic="elsewhere")
    assert forced.sent == 1 and producer.sent[0][0] == "elsewhere"


def test_letters_the_users_row_rejected_are_not_sent_back_to_be_rejected_again():
    forgotten = letter(0, "u1", event("u1", 0), "beyond_dedup_memory")
    report = redrive([forgotten], Selection(), Producer(), sources=SOURCES, tabular_dim=4)
    assert report.sent == 0 and "cannot tell it from a re-send" in report.refused[0][2]


def test_max_and_a_letter_without_origin():
    letters = [letter(i, f"u{i}", event(f"u{i}", i), "unknown_source") for i in range(5)]
    orphan = DeadLetter("dlq", 0, 9, b"u9", event("u9", 9), (("qanchor.reason", b"unknown_source"),))
    report = redrive(letters + [orphan], Selection(limit=3), Producer(), sources=SOURCES, tabular_dim=4)
    assert (report.selected, report.sent) == (3, 3)
    report = redrive([orphan], Selection(), Producer(), sources=SOURCES, tabular_dim=4)
    assert report.sent == 0 and "--to TOPIC" in report.refused[0][2]


class Consumer:
    """kafka-python's consumer as read_dead_letters uses it: records arriving after the start are not read."""

    def __init__(self, records: list[Rec], late: list[Rec]) -> None:
        self.records, self.late, self.pos = records, late, 0

    def partitions_for_topic(self, topic):
        return {0}

    def assign(self, tps):
        pass

    def seek_to_beginning(self, *tps):
        self.pos = 0

    def end_offsets(self, tps):
        return {tps[0]: len(self.records)}

    def position(self, tp):
        return self.pos

    def poll(self, timeout_ms=0, max_records=0):
        self.records += self.late  # a re-rejected record lands in the DLQ while the run reads it
        self.late = []
        batch = self.records[self.pos:self.pos + 2]
        self.pos += len(batch)
        return {TopicPartition("dlq", 0): batch} if batch else {}


def test_the_read_stops_at_the_dlq_end_as_it_was_when_it_started():
    recs = [Rec("dlq", 0, i, b"u", b"{}") for i in range(3)]
    got = list(read_dead_letters(Consumer(recs, [Rec("dlq", 0, 3, b"u", b"{}")]), "dlq"))
    assert [g.offset for g in got] == [0, 1, 2]

    class NoTopic(Consumer):
        def partitions_for_topic(self, topic):
            return None

    with pytest.raises(LookupError, match="no topic dlq"):
        list(read_dead_letters(NoTopic([], []), "dlq"))
