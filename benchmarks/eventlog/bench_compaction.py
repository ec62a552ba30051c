"""Event log compaction: file count, bytes and read time before and after a pass, on a log the writer made.

    .venv/bin/python benchmarks/eventlog/bench_compaction.py [--partitions 4] [--days 30] [--flushes 48] \
        [--rows 50] [--repeats 3] [--out benchmarks/results/eventlog_compaction]

Builds a log in a temporary folder with the writer's own `write_segment` (partitions x days x flushes-per-day files
of `rows` events each: the small files a running writer leaves, at the defaults one file per half hour and
partition), copies it, compacts the copy (`services.eventlog.compact.compact`, no age rule), then times the readers
on both copies in interleaved rounds (warm page cache, `repeats` rounds): `read_events` of the whole log, of one user,
and of one user over one day, and Feast's point-in-time read (`services.eventlog.history.as_of`, the file offline
store over each copy, applied into a Feast state folder of its own) for `--feast-users` users at one instant. The
answers are checked equal on both copies first. Prints a table and writes JSON next to `--out`. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere: this clone first
from benchmarks.machine import describe, summary  # noqa: E402

from services.common.feast_store import apply as feast_apply  # noqa: E402
from services.eventlog.compact import CompactionPolicy, compact  # noqa: E402
from services.eventlog.history import as_of  # noqa: E402
from services.eventlog.segments import SegmentName, event_row, segment_files, write_segment  # noqa: E402
from services.ingest.schema import Event  # noqa: E402
from training.data.event_log import read_events  # noqa: E402

TOPIC = "qanchor.events.v1"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DAY = 86400.0
WORDS = ("Toy Story (1995)", "Heat (1995)", "Casino (1995)", "Sabrina (1995)", "GoldenEye (1995)", "Jumanji (1995)",
         "Balto (1995)", "Nixon (1995)", "Sudden Death (1995)", "Four Rooms (1995)")


def build(root: Path, partitions: int, days: int, flushes: int, rows: int, users: int, seed: int = 0) -> int:
    """Write the log; -> rows written."""
    rng = random.Random(seed)
    offsets = [0] * partitions
    n = 0
    for day in range(days):
        for f in range(flushes):
            for p in range(partitions):
                first = offsets[p]
                batch = []
                for i in range(rows):
                    uid = f"u{rng.randrange(users) * partitions + p}"  # a user always lands on one partition
                    ts = T0 + day * DAY + (f + rng.random()) * DAY / flushes
                    text = f"{rng.choice(('liked', 'rated', 'watched'))}: {rng.choice(WORDS)} | genres: Drama"
                    ev = Event(f"e{p}-{first + i}", uid, "event", ts, "liked", text)
                    batch.append(event_row(ev, TOPIC, p, first + i, created=ts + 5))
                write_segment(root, SegmentName(TOPIC, p, first, first + rows - 1), batch)
                offsets[p] += rows
                n += rows
    return n


def size(root: Path) -> tuple[int, int]:
    files = segment_files(root)
    return len(files), sum(f.stat().st_size for f in files)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--flushes", type=int, default=48, help="flushes per partition and day")
    ap.add_argument("--rows", type=int, default=50, help="events per flush")
    ap.add_argument("--users", type=int, default=500, help="users per partition")
    ap.add_argument("--feast-users", type=int, default=50, help="users in the Feast point-in-time read (0 = skip)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/eventlog_compaction")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-compaction-"))
    try:
        small, merged = tmp / "small", tmp / "merged"
        t0 = time.perf_counter()
        total = build(small, args.partitions, args.days, args.flushes, args.rows, args.users)
        build_s = time.perf_counter() - t0
        shutil.copytree(small, merged)
        report = compact(merged, CompactionPolicy(min_age_s=0))
        before, after = size(small), size(merged)
        user, day0 = "u0", T0 + 3 * DAY
        cases = {"whole log": lambda root: read_events(root),
                 "one user": lambda root: read_events(root, user_ids=[user]),
                 "one user, one day": lambda root: read_events(root, user_ids=[user], start=day0, end=day0 + DAY)}
        if args.feast_users:
            configs = {}
            for root in (small, merged):  # the definitions read the log's folder from the environment when applied
                os.environ["QANCHOR_EVENT_LOG_DIR"] = str(root)
                configs[root] = feast_apply(tmp / f"state-{root.name}")
            os.environ.pop("QANCHOR_EVENT_LOG_DIR")
            who = [f"u{i}" for i in range(args.feast_users)]
            cases["Feast as-of, %d users" % args.feast_users] = lambda root: as_of(
                configs[root], who, T0 + (args.days / 2) * DAY, log_root=root)
        for name, fn in cases.items():  # same answers on both copies, and a warm page cache before timing
            a, b = fn(small), fn(merged)
            assert (a == b) if isinstance(a, list) else a.equals(b), name
        times: dict[str, dict[str, list[float]]] = {c: {"small files": [], "compacted": []} for c in cases}
        for _ in range(args.repeats):
            for name, fn in cases.items():
                times[name]["small files"].append(timed(lambda: fn(small)))
                times[name]["compacted"].append(timed(lambda: fn(merged)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = []
    for name, t in times.items():
        a, b = statistics.median(t["small files"]), statistics.median(t["compacted"])
        rows.append({"read": name, "small_files_s": a, "compacted_s": b, "speedup": a / b})
    meta = {"machine": describe(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "python " + " ".join(sys.argv), "rows": total, "build_s": build_s,
            "files_before": before[0], "files_after": after[0], "bytes_before": before[1], "bytes_after": after[1],
            "compaction": report.as_dict() | {"written": len(report.written)}, "repeats": args.repeats}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"{summary(meta['machine'])}; {total} events, {args.partitions} partitions x {args.days} days x "
          f"{args.flushes} flushes of {args.rows}")
    print(f"files {before[0]} -> {after[0]}, {before[1] / 2**20:.1f} -> {after[1] / 2**20:.1f} MiB; the pass took "
          f"{report.seconds:.1f} s")
    print("| read (median of %d) | small files, s | compacted, s | speed-up |" % args.repeats)
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['read']} | {r['small_files_s']:.3f} | {r['compacted_s']:.3f} | {r['speedup']:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
