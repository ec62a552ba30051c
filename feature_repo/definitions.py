"""Feast definitions for qanchor user features, generated from `sources.yaml`.

Declarative in the Feast sense: one `user` entity, PushSources for fresh data, FeatureViews, and one versioned
FeatureService that the gateway reads. What is generated (and not written out by hand) is the per-source
boilerplate: every source in sources.yaml gets `<source>_texts`, `<source>_vectors`, `<source>_timestamps` and
`<source>_count`.

Two layouts (sources.yaml `layout`, docs/features.md explains the default):
  single      one FeatureView `user_features` with every feature: a write is one atomic row, a read one lookup.
  per_source  `<source>_events` views + `user_stats` + `user_meta`, one PushSource each.

Apply with `python -m services.common.feast_store apply` (or `feast -c feature_repo -f <yaml> apply` with
QANCHOR_FEAST_DATA_DIR set): Feast imports this file, so the data dir comes from the environment at import time,
which is the only channel the Feast CLI offers.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Bytes, Float32, Int64, String

from services.common.features import ENTITY_KEY, FeatureSpec, load_feature_spec


def _data_dir() -> Path:
    # Feast wants a batch (offline) source behind every PushSource even though qanchor pushes online only;
    # it lives under the state dir so the repo stays free of runtime files.
    explicit = os.environ.get("QANCHOR_FEAST_DATA_DIR")
    if explicit:
        return Path(explicit)
    state = os.environ.get("QANCHOR_STATE_DIR") or str(Path(__file__).resolve().parents[1] / "var")
    return Path(state) / "feast" / "data"


def _source_fields(spec: FeatureSpec) -> dict[str, list[Field]]:
    out: dict[str, list[Field]] = {}
    for s in spec.sources:
        texts, vectors, timestamps, count = s.fields
        out[s.name] = [
            Field(name=texts, dtype=Array(String), description=f"last {s.k} event texts, newest last"),
            Field(name=vectors, dtype=Bytes,
                  description=f"little-endian float16 [n, {spec.encoder_dim}] encoder vectors, newest last"),
            Field(name=timestamps, dtype=Array(Int64), description="event unix seconds, newest last"),
            Field(name=count, dtype=Int64, description="number of events stored (<= k)"),
        ]
    return out


def _stats_fields(spec: FeatureSpec) -> list[Field]:
    return [Field(name="tabular", dtype=Array(Float32), description=f"[{spec.tabular_dim}] user statistics")]


def _meta_fields() -> list[Field]:
    return [
        Field(name="feature_version", dtype=Int64, description="bumped on every write; serving cache key"),
        Field(name="updated_at", dtype=Int64, description="write time, unix milliseconds"),
    ]


def build_definitions(spec: FeatureSpec, data_dir: Path) -> dict[str, object]:
    """Every Feast object for `spec`, by Python name (Feast discovers objects as module attributes)."""
    user = Entity(name="user", join_keys=[ENTITY_KEY], value_type=ValueType.STRING,
                  description="a user; any string id, not only integers")
    source_fields = _source_fields(spec)
    if spec.layout == "single":
        groups = {"user_features": [f for fs in source_fields.values() for f in fs]
                  + _stats_fields(spec) + _meta_fields()}
    else:
        # user_meta first: Feast reads views in service order and FeatureWriter writes user_meta last, so a read
        # racing a write can pair an OLD feature_version with newer data (harmless: the next read sees the new
        # version) but never a NEW version with old data (which would poison the serving cache under that key).
        groups = {"user_meta": _meta_fields()}
        groups.update({f"{name}_events": fs for name, fs in source_fields.items()})
        groups["user_stats"] = _stats_fields(spec)

    objects: dict[str, object] = {"user": user}
    views = []
    for view_name, fields in groups.items():
        batch = FileSource(
            name=f"{view_name}_batch",
            path=str(data_dir / f"{view_name}.parquet"),
            timestamp_field="event_timestamp",
        )
        push = PushSource(name=f"{view_name}_push", batch_source=batch)
        view = FeatureView(
            name=view_name,
            entities=[user],
            # Zero = never expire: the ingest service owns the event window and drops old events itself.
            ttl=timedelta(0),
            schema=[Field(name=ENTITY_KEY, dtype=String), *fields],
            source=push,
            online=True,
            tags={"owner": "qanchor", "layout": spec.layout},
        )
        objects[f"{view_name}_batch"] = batch
        objects[f"{view_name}_push"] = push
        objects[view_name] = view
        views.append(view)
    objects[spec.feature_service] = FeatureService(
        name=spec.feature_service,
        features=views,
        description="everything the gateway reads for one user (one batched online lookup)",
    )
    return objects


# Feast's CLI collects definitions from module attributes, hence the globals() update.
globals().update(build_definitions(load_feature_spec(), _data_dir()))
