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
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

from training.data.event_log import read_events, segment_files
from training.data.event_log import utc as _utc

if TYPE_CHECKING:
    import pandas as pd

# The offline-only feature view over the log (feature_repo/definitions.py) and what it answers.
LAST_EVENT_VIEW = "user_last_event"
LAST_EVENT_FEATURES = ("event_id", "kind", "source", "text", "ts")


def read_log(root: Path, user_ids: Iterable[str] | None = None, start: datetime | float | None = None,
             end: datetime | float | None = None) -> "pd.DataFrame":
    """Events of `user_ids` (None = everyone) with start <= event time <= end, each event_id once, as pandas
    (training.data.event_log.read_events, the one reader of the log, does the work)."""
    return read_events(Path(root), user_ids, start, end).to_pandas()


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

    def read() -> "pd.DataFrame":
        with _one_partition_reads():
            return store.get_historical_features(
                entity_df=entity_df, features=[f"{LAST_EVENT_VIEW}:{f}" for f in LAST_EVENT_FEATURES]).to_df()

    try:
        try:
            df = read()
        except (FileNotFoundError, OSError):
            # A file deleted between Feast's listing and its read (compaction merged it, or a replay's covering
            # segment replaced it): its rows are in the file that replaced it, so one more read sees them.
            df = read()
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
