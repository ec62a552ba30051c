"""Malformed records, one of each kind, with the DLQ reason each must get (unit and integration tests share them).

Every entry is (kind, key, value, reason). `user` is the user id the record claims (or was keyed by), `now` the
record's time: the values are bytes exactly as a producer could put them on the topic.
"""
from __future__ import annotations

import json

from training.data.sources import load_feature_spec

TABULAR_DIM = load_feature_spec().tabular_dim  # feature_repo/sources.yaml: what the real ingest validates against


def _event(user: str, now: float, **fields: object) -> dict:
    base = {"schema_version": 1, "event_id": f"{user}-bad", "user_id": user, "kind": "event", "source": "liked",
            "ts": now - 60, "text": "Rated 'Heat (1995)' [Action] 5/5"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def _json(obj: object) -> bytes:
    return json.dumps(obj).encode()


def corpus(user: str, now: float) -> list[tuple[str, bytes | None, bytes | None, str]]:
    key = user.encode()
    ev = lambda **f: _json(_event(user, now, **f))  # noqa: E731
    deep = b"[" * 3000 + b"]" * 3000
    out = [
        ("not utf-8", key, b"\xff\xfe\x00garbage", "invalid_json"),
        ("truncated json", key, b'{"schema_version": 1, "user_id": "' + key + b'"', "invalid_json"),
        ("tombstone (null value)", key, None, "not_an_object"),
        ("null key and null value", None, None, "not_an_object"),
        ("json array", key, b"[1, 2, 3]", "not_an_object"),
        ("json string", key, b'"hello"', "not_an_object"),
        ("schema version 2", key, ev(schema_version=2), "unsupported_schema_version"),
        ("no event_id", key, ev(event_id=...), "missing_field"),
        ("empty user_id", key, ev(user_id=""), "invalid_field"),
        ("control character in user_id", (user + "\x07").encode(), ev(user_id=user + "\x07"), "invalid_field"),
        ("user_id of 200 characters", b"u" * 200, ev(user_id="u" * 200), "invalid_field"),
        ("lone surrogate in user_id", key,
         ev().replace(json.dumps(user).encode(), b'"\\ud800' + key + b'"', 1), "invalid_encoding"),
        ("lone surrogate in text", key, ev(text="x").replace(b'"x"', b'"bad \\udfff text"'), "invalid_encoding"),
        ("json nested 3000 deep", key, deep, "too_deep"),
        ("attributes nested 5 deep", key, ev(attributes={"a": {"b": {"c": {"d": 1}}}}), "too_deep"),
        ("integer of 4301 digits", key, ev(ts=0).replace(b'"ts": 0', b'"ts": ' + b"9" * 4301), "invalid_number"),
        ("NaN ts", key, ev(ts=0).replace(b'"ts": 0', b'"ts": NaN'), "invalid_number"),
        ("ts overflowing to infinity", key, ev(ts=0).replace(b'"ts": 0', b'"ts": 1e400'), "invalid_number"),
        ("tabular value 1e300", key, _json(_event(user, now, kind="tabular", source=..., text=...,
                                                  vector=[1e300] * TABULAR_DIM)), "invalid_number"),
        ("record over 64 KiB", key, ev(text="x" * 70_000), "record_too_large"),
        ("no key", None, ev(), "missing_key"),
        ("key differs from user_id", b"someone-else", ev(), "key_mismatch"),
        ("ts a day in the future", key, ev(ts=now + 86_400), "ts_in_future"),
        ("ts in milliseconds", key, ev(ts=now * 1000), "invalid_field"),
        ("unknown source", key, ev(source="pages"), "unknown_source"),
        ("unknown kind", key, ev(kind="click"), "unknown_kind"),
        ("tabular vector of the wrong length", key, _json(_event(user, now, kind="tabular", source=..., text=...,
                                                                  vector=[0.5, 1.0])), "vector_dim_mismatch"),
        ("blank text", key, ev(text="   "), "invalid_field"),
        ("attribute string of 5000 characters", key, ev(attributes={"note": "y" * 5000}), "invalid_field"),
    ]
    return out
