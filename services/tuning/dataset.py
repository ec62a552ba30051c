"""Tuning data: labels CSV in, a feature snapshot (.npz) through, model-shaped arrays out. numpy only.

Both environments import this module: the services env writes snapshots (`services.tuning.snapshot`, with Feast),
the model env reads them (the tuning worker, numpy < 2, no Feast). The .npz holds only plain arrays, so it is read
with `allow_pickle=False`.

Snapshot layout (one row per labelled user that the online store knows; newest events last, left-aligned):
    user_ids [B] str, labels [B] int64, feature_version [B] int64, tabular [B, d_tab] float32,
    events__<source> [B, K_s, d_enc] float16, mask__<source> [B, K_s] bool, meta (JSON string)
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

SNAPSHOT_FORMAT = "qanchor-tuning-snapshot/1"


class DatasetError(ValueError):
    """The labels or snapshot file cannot be used; the message says what to fix."""


def local_path(uri: str) -> Path:
    """A plain path or a file:// URI -> Path. Other schemes are refused with what to do instead."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path) if parsed.scheme else uri)
    raise DatasetError(f"labels_uri {uri!r}: scheme {parsed.scheme!r} is not supported; copy the file onto the "
                       "artifacts volume and pass its path or file:// URI")


@dataclass(frozen=True)
class Labels:
    """A labels file: one row per user, and each row's label time where the file has an `as_of` column."""

    user_ids: list[str]
    labels: np.ndarray  # [B] int64
    as_of: np.ndarray | None = None  # [B] float64 unix seconds: features from the events before it; None: no column


def read_labels(path: Path) -> Labels:
    """CSV with a header `user_id,label` and optionally `as_of` (extra columns ignored); labels are integers (0/1
    or class ids). `as_of` (unix seconds or an ISO time, UTC without a zone) is the time each label was known at:
    the user's features are then the ones their events before it give (docs/tuning.md, "Labels as of a time")."""
    if not path.is_file():
        raise DatasetError(f"labels file {path} not found; the worker must see the same path as the caller "
                           "(put it on the shared artifacts volume)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"user_id", "label"} <= set(reader.fieldnames):
            raise DatasetError(f"{path}: header must contain user_id,label (got {reader.fieldnames})")
        timed = "as_of" in reader.fieldnames
        users: list[str] = []
        labels: list[int] = []
        times: list[float] = []
        seen: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            uid = (row["user_id"] or "").strip()
            try:
                label = int(str(row["label"]).strip())
            except ValueError:
                raise DatasetError(f"{path}:{line}: label {row['label']!r} is not an integer; use 0/1") from None
            if not uid:
                raise DatasetError(f"{path}:{line}: empty user_id")
            at = _row_time(path, line, row.get("as_of")) if timed else float("nan")
            if uid in seen:
                first = seen[uid]
                if labels[first] != label:
                    raise DatasetError(f"{path}:{line}: user {uid!r} is labelled both {labels[first]} and "
                                       f"{label}; keep one row per user")
                if timed and times[first] != at:
                    raise DatasetError(f"{path}:{line}: user {uid!r} is labelled as of two times; keep one row per "
                                       "user (a job tunes on one state of each user)")
                continue
            seen[uid] = len(users)
            users.append(uid)
            labels.append(label)
            times.append(at)
    if not users:
        raise DatasetError(f"{path} has no rows; give labelled users (user_id,label)")
    return Labels(users, np.asarray(labels, dtype=np.int64), np.asarray(times, np.float64) if timed else None)


def _row_time(path: Path, line: int, text: str | None) -> float:
    from training.data.event_log import parse_time  # pyarrow's module: both environments have it

    if text is None or not str(text).strip():
        raise DatasetError(f"{path}:{line}: empty as_of; give every row its time (unix seconds or an ISO time such "
                           "as 2026-06-01T00:00:00Z), or drop the column to read the features as served now")
    try:
        return parse_time(text)
    except ValueError as exc:
        raise DatasetError(f"{path}:{line}: as_of {exc}") from None


def read_labels_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """(user ids, labels) of a labels file (`read_labels` without the times)."""
    got = read_labels(path)
    return got.user_ids, got.labels


@dataclass
class TuningData:
    user_ids: list[str]
    labels: np.ndarray  # [B] int64
    event_vecs: dict[str, np.ndarray]  # source -> [B, K_s, d_enc] float16/32, oldest first, left-aligned
    event_mask: dict[str, np.ndarray]  # source -> [B, K_s] bool
    tabular: np.ndarray  # [B, d_tab] float32
    feature_version: np.ndarray  # [B] int64 (what the snapshot read; 0 never appears: unknown users are dropped)
    meta: dict = field(default_factory=dict)  # format, feature_service, n_labelled, n_missing, created_at

    def __post_init__(self) -> None:
        b = len(self.user_ids)
        if self.labels.shape != (b,) or self.tabular.shape[0] != b or self.feature_version.shape != (b,):
            raise DatasetError(f"snapshot arrays disagree on the number of users ({b})")
        for s, v in self.event_vecs.items():
            if v.ndim != 3 or v.shape[0] != b or self.event_mask.get(s, np.zeros(0)).shape != v.shape[:2]:
                raise DatasetError(f"snapshot source {s!r}: events {list(v.shape)} and mask do not fit {b} users")

    def take(self, rows: np.ndarray) -> "TuningData":
        """The users at positions `rows` (in that order), every array alike; meta is kept."""
        rows = np.asarray(rows, dtype=np.int64)
        return TuningData(user_ids=[self.user_ids[i] for i in rows], labels=self.labels[rows],
                          event_vecs={s: v[rows] for s, v in self.event_vecs.items()},
                          event_mask={s: m[rows] for s, m in self.event_mask.items()},
                          tabular=self.tabular[rows], feature_version=self.feature_version[rows], meta=dict(self.meta))

    def save(self, path: Path) -> Path:
        """Write atomically (temp file + rename): a worker never reads half a snapshot."""
        arrays = {"user_ids": np.asarray(self.user_ids, dtype=str), "labels": self.labels,
                  "feature_version": self.feature_version, "tabular": self.tabular.astype(np.float32),
                  "meta": np.asarray(json.dumps({**self.meta, "format": SNAPSHOT_FORMAT}))}
        for s in self.event_vecs:
            arrays[f"events__{s}"] = self.event_vecs[s].astype(np.float16)  # the store's own precision
            arrays[f"mask__{s}"] = self.event_mask[s].astype(bool)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub mistakes kwargs for allow_pickle
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> "TuningData":
        if not Path(path).is_file():
            raise DatasetError(f"snapshot {path} not found; make one with python -m services.tuning.snapshot")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("format") != SNAPSHOT_FORMAT:
                    raise DatasetError(f"{path}: format {meta.get('format')!r}, expected {SNAPSHOT_FORMAT!r}")
                sources = [k.split("__", 1)[1] for k in z.files if k.startswith("events__")]
                return cls(user_ids=[str(u) for u in z["user_ids"]], labels=z["labels"].astype(np.int64),
                           event_vecs={s: z[f"events__{s}"] for s in sources},
                           event_mask={s: z[f"mask__{s}"].astype(bool) for s in sources},
                           tabular=z["tabular"].astype(np.float32),
                           feature_version=z["feature_version"].astype(np.int64), meta=meta)
        except (OSError, KeyError, ValueError) as exc:
            if isinstance(exc, DatasetError):
                raise
            raise DatasetError(f"{path} is not a tuning snapshot ({type(exc).__name__}: {exc}); re-create it "
                               "with python -m services.tuning.snapshot") from None


def model_arrays(data: TuningData, sources: dict[str, int], d_enc: int, d_tab: int
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Re-pad the snapshot to the model's sources and K (newest K kept): what the model's UserBatch needs.

    The snapshot follows the feature store's K per source (sources.yaml), which may exceed the model's; a source
    the snapshot lacks reads as empty (as the serving path treats a missing source). Returns (vecs, mask, tabular)
    with vecs [B, K, d_enc] float32.
    """
    b = len(data.user_ids)
    if data.tabular.shape[1] not in (0, d_tab):
        raise DatasetError(f"snapshot tabular width {data.tabular.shape[1]} != the model's d_tab {d_tab}; the model "
                           "was exported for another feature schema: tune against a matching model version")
    vecs_out: dict[str, np.ndarray] = {}
    mask_out: dict[str, np.ndarray] = {}
    for name, k in sources.items():
        vecs = np.zeros((b, k, d_enc), dtype=np.float32)  # [B, K, d_enc]
        mask = np.zeros((b, k), dtype=bool)  # [B, K]
        src_v, src_m = data.event_vecs.get(name), data.event_mask.get(name)
        if src_v is not None and src_m is not None:
            if src_v.shape[2] != d_enc:
                raise DatasetError(f"snapshot source {name!r} has {src_v.shape[2]}-d vectors, the model reads "
                                   f"{d_enc}-d: the event encoder differs")
            for i in range(b):
                rows = src_v[i][src_m[i]][-k:]  # [n <= K, d_enc], newest K, oldest first
                vecs[i, : len(rows)] = rows
                mask[i, : len(rows)] = True
        vecs_out[name], mask_out[name] = vecs, mask
    tab = data.tabular if data.tabular.shape[1] == d_tab else np.zeros((b, d_tab), dtype=np.float32)
    return vecs_out, mask_out, tab.astype(np.float32)
