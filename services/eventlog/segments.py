"""Parquet segments of the event log: the row schema, names, atomic writes, and covered-segment clean-up.

Layout (docs/eventlog.md):

    <root>/date=YYYY-MM-DD/<topic>-p<partition>-<first_offset>-<last_offset>.parquet

One flush of one partition is one *segment*: the Kafka offsets first..last it consumed (rejected records included,
they just have no row), split into one file per event day. The name depends only on the topic, partition and
offset range, so a replay of the same range writes the same names and replaces the files. Pure apart from the
file system: no Kafka.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from services.ingest.schema import Event
# The layout (schema, names, days) is shared with training, which reads the log: defined once there.
from training.data.event_log import SCHEMA, SegmentName, day_dir, day_of, segment_files  # noqa: F401  (re-exported)

def event_row(ev: Event, topic: str, partition: int, offset: int, created: float) -> dict[str, Any]:
    """One log row of a validated event (the columns of SCHEMA)."""
    return {
        "event_id": ev.event_id, "user_id": ev.user_id,
        "event_timestamp": datetime.fromtimestamp(ev.ts, tz=timezone.utc),
        "created": datetime.fromtimestamp(created, tz=timezone.utc), "ts": float(ev.ts),
        "kind": ev.kind, "source": ev.source, "text": ev.text, "vector": [float(v) for v in ev.vector],
        "attributes": json.dumps(dict(ev.attributes), ensure_ascii=False, sort_keys=True) if ev.attributes else None,
        "topic": topic, "partition": partition, "offset": offset,
    }


def to_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    # Always the full schema: a file whose attributes are all null must not read back as a null-typed column.
    return pa.Table.from_pylist(list(rows), schema=SCHEMA)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write `path` so a reader (or a crash) sees the old file or the whole new one, never a part.

    The temporary name starts with "." so Parquet readers (pyarrow, dask, Feast) skip it while it is written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # the rename itself is durable only once the directory is


@dataclass(frozen=True)
class Written:
    files: list[Path]
    deleted: list[Path]


def write_segment(root: Path, name: SegmentName, rows: Sequence[dict[str, Any]]) -> Written:
    """Write one segment's rows (one file per event day, each atomic) and delete segments it covers.

    Returns the files written and deleted. A segment with no rows (every record rejected) writes nothing. Deletion comes
    after every file of the new segment is durable: a crash between leaves duplicates (readers dedupe by
    event_id), never a hole.
    """
    by_day: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_day.setdefault(row["event_timestamp"].strftime("%Y-%m-%d"), []).append(row)
    written = []
    for day, day_rows in sorted(by_day.items()):
        path = day_dir(root, day) / name.filename
        write_atomic(to_table(sorted(day_rows, key=lambda r: r["offset"])), path)
        written.append(path)
    return Written(written, delete_covered(root, name, by_day))


def delete_covered(root: Path, name: SegmentName, days: Iterable[str]) -> list[Path]:
    """Delete older segments of the same partition whose offset range lies inside `name`'s.

    Only the event days the new segment wrote need looking at: a covered segment holds a subset of the same Kafka
    records, so its rows fall on those days. A compacted file inside the range goes too (its rows are records of the
    range); a compacted name never deletes anything here, as it need not hold every record of its range.
    """
    if name.compacted:
        raise ValueError(f"{name.filename} is a compacted file's name: only a flush's segment deletes what it covers")
    deleted = []
    for day in days:
        d = day_dir(root, day)
        for path in d.glob(f"{glob_escape(name.topic)}-p{name.partition}-*.parquet"):
            other = SegmentName.parse(path.name)
            if other is not None and other != name and name.covers(other):
                path.unlink(missing_ok=True)
                deleted.append(path)
        if deleted:
            _fsync_dir(d)
    return deleted


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)
