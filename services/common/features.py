"""The transport-free feature layer: per-user feature rows, vector bytes, model input arrays; the schema they
follow (`FeatureSpec`, parsed from sources.yaml) comes from `training.data.sources` and is re-exported here.

Pure numpy on purpose: the gateway (services env, numpy 2) and the Triton model (model env, numpy < 2,
no Feast) both import this module. The Feast-backed `FeatureReader` / `FeatureWriter` live in
`services.common.features_online` (services env only), which imports this module, never the other way round.

Layout of one user's features (docs/features.md): per source `<source>_texts` (list[str]), `<source>_vectors`
(little-endian float16 bytes, [n, encoder_dim], newest last), `<source>_timestamps` (list[int], unix seconds),
`<source>_count`; `tabular` (list[float32]); `feature_version` (int64, the serving cache key) and `updated_at`
(int64 unix milliseconds in the store, float seconds here).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

# The schema is parsed from sources.yaml in one place, importable from both environments (docs/features.md).
from training.data.sources import FeatureSpec, SourceSpec, default_sources_path, load_feature_spec, window_start
from training.data.stats import Normalisation, StatsAggregate, StatsSpec

__all__ = [
    "FeatureSpec", "SourceSpec", "StatsSpec", "StatsAggregate", "Normalisation", "SourceEvents", "UserFeatures",
    "UserBatchArrays", "load_feature_spec", "window_start",
    "default_sources_path", "encode_vectors", "decode_vectors", "to_push_columns", "from_feature_dict",
    "build_user_batch_arrays",
]

ENTITY_KEY = "user_id"
VECTOR_DTYPE = np.dtype("<f2")  # little-endian float16, whatever the host byte order


def encode_vectors(vectors: np.ndarray, dim: int = 384) -> bytes:
    """[n, dim] vectors -> raw little-endian float16 bytes (row-major, newest event last)."""
    arr = np.asarray(vectors)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"event vectors must have shape [n, {dim}], got {list(arr.shape)}")
    return np.ascontiguousarray(arr, dtype=VECTOR_DTYPE).tobytes()


def decode_vectors(data: bytes | None, dim: int = 384) -> np.ndarray:
    """Inverse of `encode_vectors`: a read-only [n, dim] float16 view (n = 0 for empty or missing bytes)."""
    if not data:
        return np.zeros((0, dim), dtype=VECTOR_DTYPE)
    row_bytes = dim * VECTOR_DTYPE.itemsize
    if len(data) % row_bytes:
        raise ValueError(f"vector bytes of length {len(data)} are not a whole number of {dim}-d float16 rows; "
                         "the writer and reader disagree on encoder_dim (check sources.yaml)")
    return np.frombuffer(data, dtype=VECTOR_DTYPE).reshape(-1, dim)  # [n, dim]


@dataclass
class SourceEvents:
    # Event texts, oldest first (newest last).
    texts: list[str] = field(default_factory=list)
    # [n, encoder_dim] float16 sentence-encoder vectors, row i belongs to texts[i].
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 384), dtype=VECTOR_DTYPE))
    # [n] int64 unix seconds, non-decreasing.
    timestamps: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class UserFeatures:
    user_id: str
    # Source name -> events; a source absent here is stored (and read back) as empty.
    sources: dict[str, SourceEvents] = field(default_factory=dict)
    # [tabular_dim] float32 statistics; empty means "none" (zeros for the model).
    tabular: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.float32))
    # Bumped by the ingest service on every write; 0 means "no features" (cold start). Serving cache key.
    feature_version: int = 0
    # When the features were written, unix seconds (millisecond resolution in the store).
    updated_at: float = 0.0
    # False when the store has no row for this user (reads only; never raised as an error).
    found: bool = True
    # The most recent event ids ingest applied to this row, newest last (its duplicate check; not a model input).
    event_ids: list[str] = field(default_factory=list)
    # The event time of each id in `event_ids` (empty in rows written before it was kept), and the newest event time
    # among the ids the row has forgotten (0 = none): an event at or before it with an unknown id may be one of them.
    event_ts: list[int] = field(default_factory=list)
    ids_floor: int = 0
    # Ingest's sufficient aggregates of every event applied to this row (`stats_state`, training.data.stats), from
    # which `tabular` is derived; b"" when none. Not a model input.
    stats: bytes = b""

    @classmethod
    def missing(cls, user_id: str) -> "UserFeatures":
        return cls(user_id=user_id, found=False)

    def events(self, source: str, dim: int = 384) -> SourceEvents:
        return self.sources.get(source) or SourceEvents(vectors=np.zeros((0, dim), dtype=VECTOR_DTYPE))

    def validate(self, spec: FeatureSpec) -> None:
        """Raise ValueError naming the user and field when this row does not fit the schema."""
        where = f"user {self.user_id!r}"
        if not self.user_id:
            raise ValueError("user_id must be a non-empty string")
        unknown = set(self.sources) - {s.name for s in spec.sources}
        if unknown:
            raise ValueError(f"{where}: unknown sources {sorted(unknown)}; declare them in sources.yaml first")
        for s in spec.sources:
            ev = self.events(s.name, spec.encoder_dim)
            n = len(ev.texts)
            if np.shape(ev.vectors) != (n, spec.encoder_dim) or np.shape(ev.timestamps) != (n,):
                raise ValueError(f"{where}, source {s.name!r}: {n} texts need vectors [{n}, {spec.encoder_dim}] and "
                                 f"timestamps [{n}], got {list(np.shape(ev.vectors))} and "
                                 f"{list(np.shape(ev.timestamps))}")
            if n > s.k:
                raise ValueError(f"{where}, source {s.name!r}: {n} events exceed k={s.k}; keep the newest {s.k}")
        if len(self.tabular) not in (0, spec.tabular_dim):
            raise ValueError(f"{where}: tabular has {len(self.tabular)} values, sources.yaml says "
                             f"tabular_dim={spec.tabular_dim}")
        if self.feature_version < 0:
            raise ValueError(f"{where}: feature_version must be >= 0")


def to_push_columns(rows: Sequence[UserFeatures], spec: FeatureSpec) -> dict[str, list[Any]]:
    """Column-oriented push payload (one list per feature, plus `user_id`); validates every row first."""
    cols: dict[str, list[Any]] = {name: [] for name in [ENTITY_KEY, *spec.feature_names]}
    for row in rows:
        row.validate(spec)
        cols[ENTITY_KEY].append(row.user_id)
        for s in spec.sources:
            ev = row.events(s.name, spec.encoder_dim)
            texts_f, vecs_f, ts_f, count_f = s.fields
            cols[texts_f].append([str(t) for t in ev.texts])
            cols[vecs_f].append(encode_vectors(ev.vectors, spec.encoder_dim))
            cols[ts_f].append([int(t) for t in ev.timestamps])
            cols[count_f].append(len(ev.texts))
        cols["tabular"].append([float(x) for x in np.asarray(row.tabular, dtype=np.float32)])
        cols["recent_event_ids"].append([str(x) for x in row.event_ids])
        cols["recent_event_ts"].append([int(t) for t in row.event_ts])
        cols["event_ids_floor"].append(int(row.ids_floor))
        cols["stats_state"].append(bytes(row.stats))
        cols["feature_version"].append(int(row.feature_version))
        cols["updated_at"].append(int(round(row.updated_at * 1000)))
    return cols


def from_feature_dict(user_ids: Sequence[str], values: Mapping[str, Sequence[Any]],
                      spec: FeatureSpec) -> list[UserFeatures]:
    """Rows from a column-oriented online response (`OnlineResponse.to_dict()` shape), in `user_ids` order.

    A user without `feature_version` in the store is `found=False`. A source missing for a found user (added to
    sources.yaml after the user's last write) reads as empty.
    """
    out: list[UserFeatures] = []
    versions = values.get("feature_version") or [None] * len(user_ids)
    for i, uid in enumerate(user_ids):
        if versions[i] is None:
            out.append(UserFeatures.missing(uid))
            continue
        sources: dict[str, SourceEvents] = {}
        for s in spec.sources:
            texts_f, vecs_f, ts_f, _ = s.fields
            texts = _at(values, texts_f, i) or []
            sources[s.name] = SourceEvents(
                texts=list(texts),
                vectors=decode_vectors(_at(values, vecs_f, i), spec.encoder_dim),
                timestamps=np.asarray(_at(values, ts_f, i) or [], dtype=np.int64),
            )
        updated = _at(values, "updated_at", i)
        out.append(UserFeatures(
            user_id=uid,
            sources=sources,
            tabular=np.asarray(_at(values, "tabular", i) or [], dtype=np.float32),
            feature_version=int(versions[i]),
            updated_at=(updated or 0) / 1000.0,
            found=True,
            event_ids=list(_at(values, "recent_event_ids", i) or []),
            event_ts=[int(t) for t in _at(values, "recent_event_ts", i) or []],
            ids_floor=int(_at(values, "event_ids_floor", i) or 0),
            stats=bytes(_at(values, "stats_state", i) or b""),
        ))
    return out


def _at(values: Mapping[str, Sequence[Any]], name: str, i: int) -> Any:
    col = values.get(name)
    return None if col is None else col[i]


@dataclass
class UserBatchArrays:
    """numpy twin of `training.model.inputs.UserBatch` (same field names): `UserBatch(**{k: torch.from_numpy})`."""

    # Source name -> [B, K_s, encoder_dim] float32, oldest first, left-aligned; padding rows are zeros.
    event_vecs: dict[str, np.ndarray]
    # Source name -> [B, K_s] bool, True where an event is present.
    event_mask: dict[str, np.ndarray]
    # [B, tabular_dim] float32; zeros for a user without statistics (cold start).
    tabular: np.ndarray

    @property
    def batch_size(self) -> int:
        return int(self.tabular.shape[0])


def build_user_batch_arrays(users: Sequence[UserFeatures], spec: FeatureSpec) -> UserBatchArrays:
    """Pad each source to its K (keeping the newest K when longer), mask the padding, stack tabular stats."""
    b = len(users)
    event_vecs: dict[str, np.ndarray] = {}
    event_mask: dict[str, np.ndarray] = {}
    for s in spec.sources:
        vecs = np.zeros((b, s.k, spec.encoder_dim), dtype=np.float32)  # [B, K, d]
        mask = np.zeros((b, s.k), dtype=bool)  # [B, K]
        for i, u in enumerate(users):
            v = np.asarray(u.events(s.name, spec.encoder_dim).vectors)
            if v.size == 0:
                continue
            if v.ndim != 2 or v.shape[1] != spec.encoder_dim:
                raise ValueError(f"user {u.user_id!r}, source {s.name!r}: vectors have shape {list(v.shape)}, "
                                 f"expected [n, {spec.encoder_dim}]")
            v = v[-s.k:]  # newest K, still oldest first
            vecs[i, : len(v)] = v
            mask[i, : len(v)] = True
        event_vecs[s.name] = vecs
        event_mask[s.name] = mask
    tabular = np.zeros((b, spec.tabular_dim), dtype=np.float32)  # [B, d_tab]
    for i, u in enumerate(users):
        t = np.asarray(u.tabular, dtype=np.float32).reshape(-1)
        if t.size == 0:
            continue
        if t.size != spec.tabular_dim:
            raise ValueError(f"user {u.user_id!r}: tabular has {t.size} values, expected {spec.tabular_dim}")
        tabular[i] = t
    return UserBatchArrays(event_vecs=event_vecs, event_mask=event_mask, tabular=tabular)

