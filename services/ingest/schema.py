"""The event contract (v1): what producers put on `qanchor.events.v1`, and its validation.

JSON on the wire, UTF-8, one event per Kafka record, record key = user_id (so one partition holds one user's
order). Two kinds:

    {"schema_version": 1, "event_id": "e-1", "user_id": "u42", "kind": "event", "source": "liked",
     "ts": 1767225600.25, "text": "Rated 'Heat (1995)' [Action, Crime] 5/5", "attributes": {"rating": 5}}
    {"schema_version": 1, "event_id": "t-1", "user_id": "u42", "kind": "tabular", "ts": 1767225600,
     "vector": [0.1, -0.3, ...]}

Pure: no Kafka, no Feast. `parse_event` either returns an `Event` or raises `EventRejected` with a stable reason
code, which the consumer puts on the DLQ record (docs/ingest.md lists the codes). Nothing a producer can put in a
record makes it raise anything else: sizes, nesting, numbers and strings are bounded by `EventLimits` before and
while decoding, so one bad record can never stop the stream.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping

from services.common.validation import user_id_problem

SCHEMA_VERSION = 1
EVENTS_TOPIC = "qanchor.events.v1"
DLQ_TOPIC = "qanchor.events.dlq.v1"
KINDS = ("event", "tabular")

# Unix seconds above this are almost surely milliseconds (year 5138); reject with a hint instead of storing junk.
MAX_TS_SECONDS = 1e11

# Stable DLQ reason codes (the `qanchor.reason` header); dashboards group by them.
REASONS = (
    "invalid_json", "not_an_object", "unsupported_schema_version", "missing_field", "invalid_field",
    "unknown_kind", "unknown_source", "key_mismatch", "vector_dim_mismatch",
    "record_too_large", "too_deep", "invalid_number", "invalid_encoding", "missing_key", "ts_in_future",
    "beyond_dedup_memory", "internal_error",
)


@dataclass(frozen=True)
class EventLimits:
    """Bounds on what one record may hold (INGEST_* settings); generous for behaviour events, tight for abuse."""

    # Bytes of the record value; larger records are refused before they are decoded.
    max_record_bytes: int = 64 * 1024
    # Nesting of the JSON value: an event is an object whose `attributes` / `vector` are one level deeper.
    max_depth: int = 4
    # event_id and source names (user ids follow services.common.validation: 128 printable characters).
    max_id_chars: int = 256
    # The behaviour text, which is what gets encoded.
    max_text_chars: int = 2000
    max_attributes: int = 32
    max_attribute_chars: int = 1000
    # Magnitude of any number (tabular values, numeric attributes).
    max_abs_number: float = 1e12
    # How far an event's ts may run ahead of its record's time (producer clocks drift; a far-future ts would push
    # every later event out of the user's window).
    max_future_skew_s: float = 300.0


DEFAULT_LIMITS = EventLimits()


class EventRejected(ValueError):
    """An event that cannot be applied; `reason` is one of REASONS, `detail` tells the producer what to fix."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Event:
    event_id: str
    user_id: str
    # "event" (a behaviour with a text) or "tabular" (replaces the user's statistics vector).
    kind: str
    # Event time, unix seconds (fractions allowed; the feature store keeps whole seconds).
    ts: float
    # Source name from sources.yaml; "" for tabular updates.
    source: str = ""
    text: str = ""
    # Tabular statistics, length tabular_dim; empty for behaviour events.
    vector: tuple[float, ...] = ()
    # Free-form producer metadata; carried for audit, not stored as features.
    attributes: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": self.schema_version, "event_id": self.event_id,
                               "user_id": self.user_id, "kind": self.kind, "ts": self.ts}
        if self.kind == "event":
            out["source"] = self.source
            out["text"] = self.text
        else:
            out["vector"] = list(self.vector)
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        return out

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")).encode()


def _str_field(obj: Mapping[str, Any], name: str, max_chars: int) -> str:
    if name not in obj or obj[name] is None:
        raise EventRejected("missing_field", f"field {name!r} is required")
    value = obj[name]
    if not isinstance(value, str) or not value.strip():
        raise EventRejected("invalid_field", f"{name!r} must be a non-empty string, got {value!r:.80}")
    if len(value) > max_chars:
        raise EventRejected("invalid_field", f"{name!r} has {len(value)} characters; the limit is {max_chars}")
    return value


def _number(x: Any, where: str, limits: EventLimits) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise EventRejected("invalid_field", f"{where} must be a number, got {x!r:.40}")
    if not math.isfinite(x) or abs(x) > limits.max_abs_number:
        raise EventRejected("invalid_number", f"{where}={x!r:.40} is not a finite number within "
                                              f"+-{limits.max_abs_number:g}")
    return float(x)


def _ts_field(obj: Mapping[str, Any], now: float | None, limits: EventLimits) -> float:
    if "ts" not in obj or obj["ts"] is None:
        raise EventRejected("missing_field", "field 'ts' (event time, unix seconds) is required")
    ts = obj["ts"]
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or ts < 0:
        raise EventRejected("invalid_field", f"'ts' must be a non-negative number of unix seconds, got {ts!r:.80}")
    if not math.isfinite(ts):
        raise EventRejected("invalid_number", f"'ts'={ts!r} is not finite; send unix seconds")
    if ts > MAX_TS_SECONDS:
        raise EventRejected("invalid_field", f"'ts'={ts} looks like milliseconds; send unix seconds (ts / 1000)")
    if now is not None and ts > now + limits.max_future_skew_s:
        raise EventRejected("ts_in_future", f"'ts'={ts:.3f} is {ts - now:.0f} s after the record was produced "
                                            f"(limit {limits.max_future_skew_s:g} s); fix the producer's clock or "
                                            "its time unit")
    return float(ts)


def _vector_field(obj: Mapping[str, Any], dim: int, limits: EventLimits) -> tuple[float, ...]:
    if "vector" not in obj or obj["vector"] is None:
        raise EventRejected("missing_field", "tabular updates need 'vector' (a list of numbers)")
    vec = obj["vector"]
    if not isinstance(vec, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vec):
        raise EventRejected("invalid_field", "'vector' must be a list of numbers")
    if len(vec) != dim:
        raise EventRejected("vector_dim_mismatch",
                            f"'vector' has {len(vec)} values; sources.yaml says tabular_dim={dim}")
    return tuple(_number(x, f"'vector'[{i}]", limits) for i, x in enumerate(vec))


def _attributes_field(obj: Mapping[str, Any], limits: EventLimits) -> Mapping[str, Any]:
    attrs = obj.get("attributes")
    if attrs is None:
        return {}
    if not isinstance(attrs, dict) or len(attrs) > limits.max_attributes:
        raise EventRejected("invalid_field",
                            f"'attributes' must be an object with at most {limits.max_attributes} keys")
    for k, v in attrs.items():
        if len(k) > limits.max_attribute_chars or (isinstance(v, str) and len(v) > limits.max_attribute_chars):
            raise EventRejected("invalid_field", f"attribute {k!r:.40}: keys and values hold at most "
                                                 f"{limits.max_attribute_chars} characters")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            _number(v, f"attribute {k!r:.40}", limits)
        elif not isinstance(v, (str, bool)) and v is not None:
            raise EventRejected("invalid_field", f"attribute {k!r:.40} must be a string, number, boolean or null")
    return attrs


def _reject_constant(name: str) -> Any:
    raise EventRejected("invalid_number", f"{name} is not a JSON number; send a finite number")


def _depth_and_strings(obj: Any, max_depth: int) -> None:
    """Iteratively (no recursion to exhaust): nesting within `max_depth`, every string encodable as UTF-8 (JSON's
    `\\ud800` escapes decode to lone surrogates that no encoder, store or client can handle)."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise EventRejected("too_deep", f"the value nests deeper than {max_depth} levels; events are flat objects")
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            for s in (k, v):
                if isinstance(s, str):
                    try:
                        s.encode("utf-8")
                    except UnicodeEncodeError:
                        raise EventRejected("invalid_encoding", f"a string holds an unpaired surrogate "
                                                                f"({s!r:.60}); send valid Unicode text") from None
            if isinstance(v, (dict, list)):
                stack.append((v, depth + 1))


def _decode(value: bytes, limits: EventLimits) -> Any:
    if len(value) > limits.max_record_bytes:
        raise EventRejected("record_too_large", f"the value has {len(value)} bytes; the limit is "
                                                f"{limits.max_record_bytes} (INGEST_MAX_RECORD_BYTES)")
    try:
        obj = json.loads(value.decode("utf-8"), parse_constant=_reject_constant)
    except EventRejected:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventRejected("invalid_json", f"value is not UTF-8 JSON ({exc.__class__.__name__}: {exc})") from None
    except RecursionError:
        raise EventRejected("too_deep", "the value nests too deep to decode; events are flat objects") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise EventRejected("invalid_number", f"a number cannot be decoded ({str(exc)[:120]})") from None
    _depth_and_strings(obj, limits.max_depth)
    return obj


def parse_event(value: bytes | None, key: bytes | None, sources: Collection[str], tabular_dim: int,
                limits: EventLimits = DEFAULT_LIMITS, now: float | None = None) -> Event:
    """Decode and validate one record; raise EventRejected (reason code + what to fix) when it cannot be applied.

    `key` is the Kafka record key and must equal user_id: the consumer's per-user high-water mark assumes all of a
    user's events share one partition (docs/ingest.md, "Ordering"). `now` is the record's own time (Kafka's
    timestamp, in seconds): an event may not claim a `ts` more than `limits.max_future_skew_s` after it.
    """
    if value is None:
        raise EventRejected("not_an_object", "the value is null (a tombstone?); send a JSON object")
    obj = _decode(value, limits)
    if not isinstance(obj, dict):
        raise EventRejected("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
    version = obj.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise EventRejected("unsupported_schema_version",
                            f"schema_version={version!r:.40}; this consumer reads version {SCHEMA_VERSION}")
    event_id = _str_field(obj, "event_id", limits.max_id_chars)
    user_id = _str_field(obj, "user_id", limits.max_id_chars)
    problem = user_id_problem(user_id)
    if problem:
        raise EventRejected("invalid_field", problem)
    if key is None:
        raise EventRejected("missing_key", "the record has no key; produce with key=user_id so one partition "
                                           "holds one user's order")
    if key != user_id.encode("utf-8"):
        raise EventRejected("key_mismatch", f"record key {key[:80]!r} differs from user_id {user_id!r:.80}; "
                                            "produce with key=user_id so one partition holds one user's order")
    kind = obj.get("kind", "event")
    if kind not in KINDS:
        raise EventRejected("unknown_kind", f"kind={kind!r:.40}; use one of {list(KINDS)}")
    ts = _ts_field(obj, now, limits)
    attributes = _attributes_field(obj, limits)
    if kind == "tabular":
        return Event(event_id=event_id, user_id=user_id, kind=kind, ts=ts,
                     vector=_vector_field(obj, tabular_dim, limits), attributes=attributes)
    source = _str_field(obj, "source", limits.max_id_chars)
    if source not in sources:
        raise EventRejected("unknown_source",
                            f"source {source!r:.80} is not declared in sources.yaml (known: {sorted(sources)})")
    text = _str_field(obj, "text", limits.max_text_chars)
    return Event(event_id=event_id, user_id=user_id, kind=kind, ts=ts, source=source, text=text,
                 attributes=attributes)
