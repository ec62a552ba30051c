"""The v1 event contract: valid events parse, every malformed kind gets its stable reason code."""
from __future__ import annotations

import json

import pytest

from services.ingest.producer import user_key
from services.ingest.schema import REASONS, Event, EventRejected, parse_event

SOURCES = {"liked", "disliked"}


def _raw(**fields) -> bytes:
    base = {"schema_version": 1, "event_id": "e1", "user_id": "u1", "kind": "event", "source": "liked",
            "ts": 1_700_000_000.5, "text": "Rated 'Heat (1995)' 5/5"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_behaviour_event_round_trips():
    ev = parse_event(_raw(attributes={"rating": 5}), b"u1", SOURCES, 4)
    assert (ev.user_id, ev.source, ev.text, ev.ts, ev.kind) == ("u1", "liked", "Rated 'Heat (1995)' 5/5",
                                                                 1_700_000_000.5, "event")
    assert parse_event(ev.to_json(), b"u1", SOURCES, 4) == ev


def test_kind_defaults_to_event():
    ev = parse_event(_raw(kind=...), b"u1", SOURCES, 4)
    assert ev.kind == "event"


def test_tabular_update():
    ev = parse_event(_raw(kind="tabular", source=..., text=..., vector=[1, 2.5, -3, 0]), b"u1", SOURCES, 4)
    assert ev.vector == (1.0, 2.5, -3.0, 0.0) and ev.source == "" and ev.kind == "tabular"
    assert parse_event(ev.to_json(), b"u1", SOURCES, 4) == ev


@pytest.mark.parametrize("value,key,reason", [
    (b"\xff\xfe not utf8", b"u1", "invalid_json"),
    (b"{not json", b"u1", "invalid_json"),
    (None, b"u1", "not_an_object"),
    (b"[1, 2]", b"u1", "not_an_object"),
    (_raw(schema_version=2), b"u1", "unsupported_schema_version"),
    (_raw(schema_version=True), b"u1", "unsupported_schema_version"),
    (_raw(event_id=...), b"u1", "missing_field"),
    (_raw(user_id=""), b"u1", "invalid_field"),
    (_raw(ts=...), b"u1", "missing_field"),
    (_raw(ts="yesterday"), b"u1", "invalid_field"),
    (_raw(ts=-1), b"u1", "invalid_field"),
    (_raw(ts=1_700_000_000_000), b"u1", "invalid_field"),
    (_raw(text="   "), b"u1", "invalid_field"),
    (_raw(text="x" * 5000), b"u1", "invalid_field"),
    (_raw(source="pages"), b"u1", "unknown_source"),
    (_raw(kind="click"), b"u1", "unknown_kind"),
    (_raw(), b"u2", "key_mismatch"),
    (_raw(), None, "missing_key"),  # a keyless record lands on any partition: its order cannot be kept
    (_raw(attributes=[1]), b"u1", "invalid_field"),
    (_raw(attributes={"nested": {"a": 1}}), b"u1", "invalid_field"),
    (_raw(kind="tabular", vector=[1, 2]), b"u1", "vector_dim_mismatch"),
    (_raw(kind="tabular", vector=[1, 2, "3", 4]), b"u1", "invalid_field"),
    (_raw(kind="tabular"), b"u1", "missing_field"),
])
def test_rejections_carry_reason(value, key, reason):
    with pytest.raises(EventRejected) as info:
        parse_event(value, key, SOURCES, 4)
    assert info.value.reason == reason and info.value.reason in REASONS
    assert info.value.detail  # tells the producer what to fix


def test_millisecond_timestamps_get_a_hint():
    with pytest.raises(EventRejected, match="milliseconds"):
        parse_event(_raw(ts=1_700_000_000_000), b"u1", SOURCES, 4)


def test_user_key():
    assert user_key(_raw()) == b"u1"
    assert user_key(b"{broken") is None
    assert user_key(b'{"user_id": 7}') is None


def test_event_to_dict_omits_unused_fields():
    d = Event(event_id="t", user_id="u", kind="tabular", ts=1.0, vector=(1.0,)).to_dict()
    assert "text" not in d and "source" not in d and d["vector"] == [1.0]
