"""Reading the event log: a user's history (deduplicated by event_id) and point-in-time "as of" answers via Feast.

    from services.eventlog.history import read_log, as_of
    read_log(root, user_ids=["u42"], start=t0, end=t1)       # pandas DataFrame, one row per event_id, in time order
    as_of(feature_store_yaml, ["u42"], at=datetime(...))     # the user's last event at that instant (Feast)

A replay after a crash can leave one event in two segment files (docs/eventlog.md, "What exactly-once means
here"): `read_log` keeps each event_id once, the copy at the lowest Kafka position. Feast's point-in-time join does
not dedupe, but both copies are the same row, so its answer is the same.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

from services.eventlog.segments import SCHEMA, day_of, segment_files

if TYPE_CHECKING:
    import pandas as pd

# The offline-only feature view over the log (feature_repo/definitions.py) and what it answers.
LAST_EVENT_VIEW = "user_last_event"
LAST_EVENT_FEATURES = ("event_id", "kind", "source", "text", "ts")
POSITION = ["topic", "partition", "offset"]


def _utc(t: datetime | float | None) -> datetime | None:
    if t is None:
        return None
    if isinstance(t, (int, float)):
        return datetime.fromtimestamp(t, tz=timezone.utc)
    if t.tzinfo is None:
        raise ValueError(f"{t.isoformat()} has no time zone; pass an aware datetime (e.g. ...+00:00)")
    return t.astimezone(timezone.utc)


def _files(root: Path, start: datetime | None, end: datetime | None) -> list[Path]:
    """Segment files whose day can hold events in [start, end] (the date= folders prune the scan)."""
    lo = day_of(start.timestamp()) if start else None
    hi = day_of(end.timestamp()) if end else None
    out = []
    for path in segment_files(root):
        day = path.parent.name.removeprefix("date=")
        if (lo is None or day >= lo) and (hi is None or day <= hi):
            out.append(path)
    return out


def dedupe(df: "pd.DataFrame") -> "pd.DataFrame":
    """One row per event_id (the first by Kafka position), in event-time order."""
    df = df.sort_values(POSITION, kind="stable").drop_duplicates("event_id", keep="first")
    return df.sort_values(["event_timestamp", *POSITION], kind="stable").reset_index(drop=True)


def read_log(root: Path, user_ids: Iterable[str] | None = None, start: datetime | float | None = None,
             end: datetime | float | None = None) -> "pd.DataFrame":
    """Events of `user_ids` (None = everyone) with start <= event time <= end, each event_id once."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    lo, hi = _utc(start), _utc(end)
    files = _files(Path(root), lo, hi)
    if not files:
        return SCHEMA.empty_table().to_pandas()
    expr = None
    conds = []
    if user_ids is not None:
        conds.append(pc.field("user_id").isin(list(user_ids)))
    if lo is not None:
        conds.append(pc.field("event_timestamp") >= lo)
    if hi is not None:
        conds.append(pc.field("event_timestamp") <= hi)
    for c in conds:
        expr = c if expr is None else expr & c
    # The file list, not the folder: a segment deleted (covered) or renamed in place between listing and reading
    # is the only race, and it is retried once below.
    try:
        table = ds.dataset([str(f) for f in files], schema=SCHEMA, format="parquet").to_table(filter=expr)
    except FileNotFoundError:
        table = ds.dataset([str(f) for f in _files(Path(root), lo, hi)], schema=SCHEMA,
                           format="parquet").to_table(filter=expr)
    return dedupe(table.to_pandas())


_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _one_partition_reads() -> Iterator[None]:
    """Make Feast's Dask offline store read every source as a single partition, for the duration.

    Feast sorts the joined frame by the created and event timestamps; Dask computes sort divisions per
    partition and raises NotImplementedError when a partition is empty after the join (a segment file with no row
    for the users asked). One partition has no divisions to compute. The cost: the join runs in one task, which
    is what a dev-sized log wants anyway; a large log wants a real offline store (docs/eventlog.md, "Limits").
    """
    from feast.infra.offline_stores import dask as feast_dask

    with _PATCH_LOCK:
        original = feast_dask._read_datasource

        def read_one_partition(data_source, repo_path):  # type: ignore[no-untyped-def]
            return original(data_source, repo_path).repartition(npartitions=1)

        feast_dask._read_datasource = read_one_partition
        try:
            yield
        finally:
            feast_dask._read_datasource = original


@dataclass(frozen=True)
class LastEvent:
    """A user's last logged event at an instant (Feast's point-in-time answer); found=False when none yet."""

    user_id: str
    at: datetime
    found: bool
    event_id: str | None = None
    kind: str | None = None
    source: str | None = None
    text: str | None = None
    ts: float | None = None


def as_of(feast_config: Path, user_ids: Sequence[str], at: datetime | float,
          log_root: Path | None = None) -> list[LastEvent]:
    """Each user's last event with event time <= `at`, through Feast's get_historical_features.

    Feast gaps this wraps: its file offline store fails on a log folder with no Parquet yet (answered as "not
    found" without asking Feast when `log_root` is given and empty); its Dask sort fails on a source read as
    several partitions once the join leaves one of them empty ("Divisions calculation failed for non-numeric
    column 'created'", seen with Feast 0.67 / Dask 2026.8), so the log is read as one partition while this runs
    (`_one_partition_reads`); it needs a time-zone-aware entity timestamp; and it returns NaN, not None, for a user
    with no event.
    """
    import pandas as pd

    from services.common.feast_store import get_store

    when = _utc(at)
    assert when is not None
    if log_root is not None and not segment_files(log_root):
        return [LastEvent(u, when, False) for u in user_ids]
    store = get_store(Path(feast_config))
    entity_df = pd.DataFrame({"user_id": list(user_ids), "event_timestamp": [when] * len(user_ids)})
    try:
        with _one_partition_reads():
            df = store.get_historical_features(
                entity_df=entity_df, features=[f"{LAST_EVENT_VIEW}:{f}" for f in LAST_EVENT_FEATURES]).to_df()
    except (FileNotFoundError, OSError, ValueError) as exc:
        if "parquet" in str(exc).lower() or isinstance(exc, FileNotFoundError):
            raise RuntimeError(f"Feast cannot read the event log ({type(exc).__name__}: {str(exc)[:200]}); is the "
                               "eventlog service running and has it flushed yet? (qanchor stack status eventlog)") \
                from exc
        raise
    out = {}
    for row in df.to_dict("records"):
        found = isinstance(row.get("event_id"), str)
        out[row["user_id"]] = LastEvent(
            row["user_id"], when, found, *(
                (row["event_id"], row["kind"], row["source"], row["text"], float(row["ts"])) if found else ()))
    return [out.get(u, LastEvent(u, when, False)) for u in user_ids]
