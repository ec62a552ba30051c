"""The event contract (v1): what producers put on `qanchor.events.v1`, and its validation.

JSON on the wire, UTF-8, one event per Kafka record, record key = user_id (so one partition holds one user's
order). Two kinds:

    {"schema_version": 1, "event_id": "e-1", "user_id": "u42", "kind": "event", "source": "liked",
     "ts": 1767225600.25, "text": "Rated 'Heat (1995)' [Action, Crime] 5/5", "attributes": {"rating": 5}}
    {"schema_version": 1, "event_id": "t-1", "user_id": "u42", "kind": "tabular", "ts": 1767225600,
     "vector": [0.1, -0.3, ...]}

Pure: no Kafka, no Feast. `parse_event` either returns an `Event` or raises `EventRejected` with a stable reason
code, which the consumer puts on the DLQ record (docs/ingest.md lists the codes).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping

SCHEMA_VERSION = 1
EVENTS_TOPIC = "qanchor.events.v1"
DLQ_TOPIC = "qanchor.events.dlq.v1"
KINDS = ("event", "tabular")

# Bounds that catch producer bugs early; generous for real behaviour texts (a few words to a sentence).
MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 2000
MAX_ATTRIBUTES = 32
# Unix seconds above this are almost surely milliseconds (year 5138); reject with a hint instead of storing junk.
MAX_TS_SECONDS = 1e11

# Stable DLQ reason codes (the `qanchor.reason` header); dashboards group by them.
REASONS = (
    "invalid_json", "not_an_object", "unsupported_schema_version", "missing_field", "invalid_field",
    "unknown_kind", "unknown_source", "key_mismatch", "vector_dim_mismatch",
)


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


def _ts_field(obj: Mapping[str, Any]) -> float:
    if "ts" not in obj or obj["ts"] is None:
        raise EventRejected("missing_field", "field 'ts' (event time, unix seconds) is required")
    ts = obj["ts"]
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) or ts < 0:
        raise EventRejected("invalid_field", f"'ts' must be a non-negative number of unix seconds, got {ts!r:.80}")
    if ts > MAX_TS_SECONDS:
        raise EventRejected("invalid_field", f"'ts'={ts} looks like milliseconds; send unix seconds (ts / 1000)")
    return float(ts)


def _vector_field(obj: Mapping[str, Any], dim: int) -> tuple[float, ...]:
    if "vector" not in obj or obj["vector"] is None:
        raise EventRejected("missing_field", "tabular updates need 'vector' (a list of numbers)")
    vec = obj["vector"]
    if not isinstance(vec, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vec):
        raise EventRejected("invalid_field", "'vector' must be a list of numbers")
    if len(vec) != dim:
        raise EventRejected("vector_dim_mismatch",
                            f"'vector' has {len(vec)} values; sources.yaml says tabular_dim={dim}")
    if not all(math.isfinite(x) for x in vec):
        raise EventRejected("invalid_field", "'vector' contains NaN or infinity")
    return tuple(float(x) for x in vec)


def _attributes_field(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    attrs = obj.get("attributes")
    if attrs is None:
        return {}
    if not isinstance(attrs, dict) or len(attrs) > MAX_ATTRIBUTES:
        raise EventRejected("invalid_field", f"'attributes' must be an object with at most {MAX_ATTRIBUTES} keys")
    for k, v in attrs.items():
        if not isinstance(v, (str, int, float, bool)) and v is not None:
            raise EventRejected("invalid_field", f"attribute {k!r} must be a string, number, boolean or null")
    return attrs


def parse_event(value: bytes | None, key: bytes | None, sources: Collection[str], tabular_dim: int) -> Event:
    """Decode and validate one record; raise EventRejected (reason code + what to fix) when it cannot be applied.

    `key` is the Kafka record key: when present it must equal user_id, because the consumer's per-user
    high-water mark assumes all of a user's events share one partition (docs/ingest.md, "Ordering").
    """
    try:
        obj = json.loads(value.decode("utf-8")) if value is not None else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventRejected("invalid_json", f"value is not UTF-8 JSON ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise EventRejected("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
    version = obj.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise EventRejected("unsupported_schema_version",
                            f"schema_version={version!r}; this consumer reads version {SCHEMA_VERSION}")
    event_id = _str_field(obj, "event_id", MAX_ID_CHARS)
    user_id = _str_field(obj, "user_id", MAX_ID_CHARS)
    if key is not None and key != user_id.encode("utf-8"):
        raise EventRejected("key_mismatch", f"record key {key[:80]!r} differs from user_id {user_id!r:.80}; "
                                            "produce with key=user_id so one partition holds one user's order")
    kind = obj.get("kind", "event")
    if kind not in KINDS:
        raise EventRejected("unknown_kind", f"kind={kind!r:.40}; use one of {list(KINDS)}")
    ts = _ts_field(obj)
    attributes = _attributes_field(obj)
    if kind == "tabular":
        return Event(event_id=event_id, user_id=user_id, kind=kind, ts=ts,
                     vector=_vector_field(obj, tabular_dim), attributes=attributes)
    source = _str_field(obj, "source", MAX_ID_CHARS)
    if source not in sources:
        raise EventRejected("unknown_source",
                            f"source {source!r:.80} is not declared in sources.yaml (known: {sorted(sources)})")
    text = _str_field(obj, "text", MAX_TEXT_CHARS)
    return Event(event_id=event_id, user_id=user_id, kind=kind, ts=ts, source=source, text=text,
                 attributes=attributes)
