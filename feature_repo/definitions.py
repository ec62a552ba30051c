"""Feast definitions for qanchor user features, laid out like Feast's own `feast init` template.

One `user` entity; one FeatureView `user_features` holding every source, the statistics and the version, fed by a
PushSource (ingest pushes fresh rows; the FileSource behind it only satisfies Feast, nothing is written offline);
one versioned FeatureService the gateway reads. A write is one atomic row and a read one lookup (docs/features.md).
Offline only: the `event_log` FileSource over the Parquet event log (services/eventlog, docs/eventlog.md) and the
`user_last_event` view on it, for point-in-time reads with `get_historical_features`.

The per-source fields come from `sources.yaml` (the feature schema): every source gets `<source>_texts`,
`<source>_vectors`, `<source>_timestamps` and `<source>_count`.

Apply with `python -m services.common.feast_store apply` (or `feast -c feature_repo -f <yaml> apply` with
QANCHOR_FEAST_DATA_DIR set): Feast imports this file, so the data dir, the event log's root and sources.yaml come
from the environment at import time (QANCHOR_FEAST_DATA_DIR, QANCHOR_EVENT_LOG_DIR, QANCHOR_SOURCES_YAML), the only
channel the Feast CLI offers.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Bytes, Float32, Float64, Int64, String

from services.common.features import ENTITY_KEY, load_feature_spec


def _data_dir() -> Path:
    explicit = os.environ.get("QANCHOR_FEAST_DATA_DIR")
    if explicit:
        return Path(explicit)
    return _state_dir() / "feast" / "data"


def _state_dir() -> Path:
    return Path(os.environ.get("QANCHOR_STATE_DIR") or str(Path(__file__).resolve().parents[1] / "var"))


def _event_log_dir() -> Path:
    # The same variable and default as the writer (services/eventlog/settings.py): <state dir>/eventlog, the state
    # dir being the one whose feast/data folder this apply uses (`feast plan` with only QANCHOR_FEAST_DATA_DIR set
    # then sees the same path as services.common.feast_store.apply).
    explicit = os.environ.get("QANCHOR_EVENT_LOG_DIR")
    return Path(explicit) if explicit else _data_dir().parents[1] / "eventlog"


spec = load_feature_spec()

user = Entity(name="user", join_keys=[ENTITY_KEY], value_type=ValueType.STRING,
              description="a user; any string id, not only integers")

# Feast wants a batch (offline) source behind every PushSource even though qanchor pushes online only; it lives
# under the state dir so the repository stays free of runtime files.
user_features_source = FileSource(
    name="user_features_batch",
    path=str(_data_dir() / "user_features.parquet"),
    timestamp_field="event_timestamp",
)

user_features_push_source = PushSource(name="user_features_push", batch_source=user_features_source)

user_features_fv = FeatureView(
    name="user_features",
    entities=[user],
    # Zero = never expire: the ingest service owns the event window and drops old events itself.
    ttl=timedelta(0),
    schema=[
        Field(name=ENTITY_KEY, dtype=String),
        *[f for s in spec.sources for f in (
            Field(name=s.fields[0], dtype=Array(String), description=f"last {s.k} event texts, newest last"),
            Field(name=s.fields[1], dtype=Bytes,
                  description=f"little-endian float16 [n, {spec.encoder_dim}] encoder vectors, newest last"),
            Field(name=s.fields[2], dtype=Array(Int64), description="event unix seconds, newest last"),
            Field(name=s.fields[3], dtype=Int64, description="number of events stored (<= k)"),
        )],
        Field(name="recent_event_ids", dtype=Array(String),
              description="event ids ingest applied last, newest last (applies a re-sent event once)"),
        Field(name="recent_event_ts", dtype=Array(Int64), description="event unix seconds of recent_event_ids"),
        Field(name="event_ids_floor", dtype=Int64,
              description="newest event time among forgotten ids: an unknown id at or before it is dead-lettered"),
        Field(name="stats_state", dtype=Bytes, description="ingest's aggregates that tabular derives from"),
        Field(name="tabular", dtype=Array(Float32), description=f"[{spec.tabular_dim}] user statistics"),
        Field(name="feature_version", dtype=Int64, description="bumped on every write; serving cache key"),
        Field(name="updated_at", dtype=Int64, description="write time, unix milliseconds"),
    ],
    source=user_features_push_source,
    online=True,
    tags={"owner": "qanchor"},
)

user_features_service = FeatureService(
    name=spec.feature_service,
    features=[user_features_fv],
    description="everything the gateway reads for one user (one batched online lookup)",
)

# The offline event log: every validated event, one row each, in Parquet folders by day (date=YYYY-MM-DD), written
# by services/eventlog. A replay after a crash may leave an event in two files; both copies are the same row, so a
# point-in-time answer is unchanged (services/eventlog/history.py dedupes by event_id for plain reads).
event_log_source = FileSource(
    name="event_log",
    path=str(_event_log_dir()),
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    description="validated events from Kafka, written by services/eventlog (docs/eventlog.md)",
)

user_last_event_fv = FeatureView(
    name="user_last_event",
    entities=[user],
    ttl=timedelta(0),  # no limit: "the last event ever, as of T"
    schema=[
        Field(name=ENTITY_KEY, dtype=String),
        Field(name="event_id", dtype=String, description="id of the user's last event as of the entity time"),
        Field(name="kind", dtype=String, description="event or tabular"),
        Field(name="source", dtype=String, description="source of that event ('' for tabular)"),
        Field(name="text", dtype=String, description="its text ('' for tabular)"),
        Field(name="ts", dtype=Float64, description="its event time, unix seconds as sent"),
    ],
    source=event_log_source,
    online=False,  # history, not serving: read with get_historical_features
    tags={"owner": "qanchor", "store": "offline"},
)
