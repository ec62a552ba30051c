"""The offline event log's layout and its reader: one definition for the service that writes it and for training.

Layout (docs/eventlog.md):

    <root>/date=YYYY-MM-DD/<topic>-p<partition>-<first_offset>-<last_offset>.parquet
    <root>/date=YYYY-MM-DD/<topic>-p<partition>-<first_offset>-<last_offset>-c.parquet   (compacted)

One flush of one Kafka partition is one *segment* (services/eventlog/segments.py writes them); compaction
(services/eventlog/compact.py) merges a day's small segment files of one partition into a `-c` file. A replay after a
crash can leave one event in two segment files; `read_events` keeps each event_id once, the copy at the lowest Kafka
position, in event-time order.

    from training.data.event_log import read_events
    table = read_events(root)                                   # pyarrow Table, every user, each event once
    table = read_events(root, user_ids=["u42"], start=t0, end=t1)

pyarrow + numpy only, no services code: the model environment (training.pretrain --dataset offline) and the
services environment (services/eventlog, `qanchor events history`) both import it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa

# Where the log lives: the variable the eventlog service, Feast's definitions (feature_repo/definitions.py) and
# training all read, so the writer, the FileSource and the reader agree.
EVENT_LOG_DIR_ENV = "QANCHOR_EVENT_LOG_DIR"


def default_log_root() -> Path:
    """$QANCHOR_EVENT_LOG_DIR, else the local stack's log: $QANCHOR_STATE_DIR/eventlog (default <checkout>/var)."""
    explicit = os.environ.get(EVENT_LOG_DIR_ENV) or os.environ.get("EVENTLOG_ROOT")
    if explicit:
        return Path(explicit)
    state = os.environ.get("QANCHOR_STATE_DIR")
    # training/data/event_log.py -> the checkout (the editable install keeps this layout)
    return (Path(state) if state else Path(__file__).resolve().parents[2] / "var") / "eventlog"


SCHEMA = pa.schema([
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("user_id", pa.string(), nullable=False),
    # The event's own time (its `ts`), UTC: Feast's timestamp_field, what point-in-time reads compare against.
    pa.field("event_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
    # When the log consumer read it: Feast's created_timestamp_column (breaks ties between same-time events).
    pa.field("created", pa.timestamp("us", tz="UTC"), nullable=False),
    # `ts` as sent (unix seconds, fractions kept): a feature Feast can return, unlike its timestamp field.
    pa.field("ts", pa.float64(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("source", pa.string()),            # "" for tabular updates
    pa.field("text", pa.string()),              # "" for tabular updates
    pa.field("vector", pa.list_(pa.float32())),  # tabular statistics; empty for behaviour events
    pa.field("attributes", pa.string()),        # the producer's attributes object as JSON; null when absent
    pa.field("topic", pa.string(), nullable=False),
    pa.field("partition", pa.int32(), nullable=False),
    pa.field("offset", pa.int64(), nullable=False),
])
POSITION = ("topic", "partition", "offset")

_NAME = re.compile(r"^(?P<topic>.+)-p(?P<partition>\d+)-(?P<first>\d+)-(?P<last>\d+)(?P<compacted>-c)?\.parquet$")


@dataclass(frozen=True)
class SegmentName:
    """A log file's name: the partition and the Kafka offset range its rows come from.

    A flush's file (compacted=False) holds *every* valid record of first..last whose event falls on its day, which is
    what lets the writer delete a file its new segment covers. A compacted file (`-c`) holds the rows of the files it
    merged, all from first..last, but not necessarily every record of the range (another file may hold some): it is
    never the reason to delete anything but its own inputs, and its name can never be a flush's.
    """

    topic: str
    partition: int
    first: int  # first Kafka offset the segment covers
    last: int   # last one, inclusive
    compacted: bool = False

    @property
    def filename(self) -> str:
        return f"{self.topic}-p{self.partition}-{self.first}-{self.last}{'-c' if self.compacted else ''}.parquet"

    @classmethod
    def parse(cls, filename: str) -> "SegmentName | None":
        m = _NAME.match(filename)
        if m is None:
            return None
        return cls(m["topic"], int(m["partition"]), int(m["first"]), int(m["last"]), m["compacted"] is not None)

    def covers(self, other: "SegmentName") -> bool:
        return (self.topic, self.partition) == (other.topic, other.partition) and \
            self.first <= other.first and other.last <= self.last


def day_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d")


def day_dir(root: Path, day: str) -> Path:
    return Path(root) / f"date={day}"


def segment_files(root: Path) -> list[Path]:
    """Every finished segment file under `root` (temporary files excluded), oldest day first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("date=*/*.parquet") if SegmentName.parse(p.name) is not None)


def utc(t: datetime | float | None) -> datetime | None:
    """An aware UTC datetime from unix seconds or an aware datetime (naive ones are refused: which zone?)."""
    if t is None:
        return None
    if isinstance(t, (int, float)):
        return datetime.fromtimestamp(t, tz=timezone.utc)
    if t.tzinfo is None:
        raise ValueError(f"{t.isoformat()} has no time zone; pass an aware datetime (e.g. ...+00:00)")
    return t.astimezone(timezone.utc)


def parse_time(text: str, *, zone_required: bool = False) -> float:
    """Unix seconds, or an ISO 8601 date or time (a time without a zone is UTC; Z allowed) -> unix seconds.

    The one reading of a time a person writes: `training.pretrain --cutoff`, the quality harness's `--as-of`, a
    tuning labels file's `as_of` column, and `qanchor events history/as-of`, which pass `zone_required=True` (a
    command typed at a terminal in another zone must not be read as UTC silently). ValueError says what to write
    instead."""
    text = str(text).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: give unix seconds (e.g. 975000000) or an ISO time (e.g. "
                         "2000-11-25, 2000-11-25T12:00:00Z or 2000-11-25T12:00:00+02:00)") from None
    if t.tzinfo is None and zone_required:
        example = text if len(text) > 10 else text[:10] + "T00:00:00"  # a date alone takes no zone
        raise ValueError(f"{text!r} has no time zone; add Z for UTC (e.g. {example}Z) or an offset such as +02:00")
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def files_between(root: Path, start: datetime | None, end: datetime | None) -> list[Path]:
    """Segment files whose day can hold events in [start, end] (the date= folders prune the scan)."""
    lo = day_of(start.timestamp()) if start else None
    hi = day_of(end.timestamp()) if end else None
    out = []
    for path in segment_files(root):
        day = path.parent.name.removeprefix("date=")
        if (lo is None or day >= lo) and (hi is None or day <= hi):
            out.append(path)
    return out


def first_copies(table: pa.Table) -> pa.Table:
    """One row per event_id, the copy at the lowest Kafka position, in Kafka position order (one `take` of the
    table: only the ids and row numbers are sorted and grouped, so the rows are copied once)."""
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return table
    order = pc.sort_indices(table.select(list(POSITION)), sort_keys=[(c, "ascending") for c in POSITION])
    ids = pa.table({"event_id": table.column("event_id").take(order), "i": pa.array(np.arange(len(order)))})
    first = ids.group_by("event_id", use_threads=False).aggregate([("i", "min")]).column("i_min").to_numpy()
    return table.take(order.take(pa.array(np.sort(first))))


def dedupe(table: pa.Table) -> pa.Table:
    """One row per event_id (the first by Kafka position), in event-time order (ties by Kafka position)."""
    if table.num_rows == 0:
        return table
    kept = first_copies(table)
    return kept.sort_by([("event_timestamp", "ascending")] + [(c, "ascending") for c in POSITION])


def read_events(root: Path, user_ids: Iterable[str] | None = None, start: datetime | float | None = None,
                end: datetime | float | None = None) -> pa.Table:
    """Events of `user_ids` (None = everyone) with start <= event time <= end, each event_id once (SCHEMA)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    lo, hi = utc(start), utc(end)
    files = files_between(Path(root), lo, hi)
    if not files:
        return SCHEMA.empty_table()
    conds = []
    if user_ids is not None:
        conds.append(pc.field("user_id").isin(list(user_ids)))
    if lo is not None:
        conds.append(pc.field("event_timestamp") >= lo)
    if hi is not None:
        conds.append(pc.field("event_timestamp") <= hi)
    expr = None
    for c in conds:
        expr = c if expr is None else expr & c
    # The file list, not the folder: a segment deleted between listing and reading (covered by a replay, or merged
    # by compaction: its rows are in the file that replaced it) is the only race, and it is retried once below.
    try:
        table = ds.dataset([str(f) for f in files], schema=SCHEMA, format="parquet").to_table(filter=expr)
    except FileNotFoundError:
        table = ds.dataset([str(f) for f in files_between(Path(root), lo, hi)], schema=SCHEMA,
                           format="parquet").to_table(filter=expr)
    return dedupe(table)
