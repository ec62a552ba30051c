"""`qanchor events history|as-of|compact`: read the offline event log, and merge its small files (docs/eventlog.md).

    qanchor events history u42 --since 2026-01-01T00:00Z      # the user's logged events, each event_id once
    qanchor events as-of u42 2026-01-02T12:00:00Z              # the last event at that instant (Feast, point in time)
    qanchor events compact --dry-run                           # what a compaction pass would merge

The log root is --root, else EVENTLOG_ROOT / QANCHOR_EVENT_LOG_DIR, else the local stack's `$QANCHOR_STATE_DIR/
eventlog`; the Feast config is --feast-config, else the local stack's `$QANCHOR_STATE_DIR/feast/feature_store.yaml`.
"""
from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

from services.cli.output import CliError, add_json_flag, format_table, print_json


def parse_time(text: str) -> datetime:
    """ISO 8601 with a zone (Z or +hh:mm), or unix seconds -> an aware UTC datetime (training.data.event_log's
    reading of a time, with the zone required)."""
    from training.data.event_log import parse_time as seconds

    try:
        return datetime.fromtimestamp(seconds(text, zone_required=True), tz=timezone.utc)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _iso(t: datetime | float | None) -> str | None:
    if t is None:
        return None
    if isinstance(t, (int, float)):
        t = datetime.fromtimestamp(t, tz=timezone.utc)
    return t.isoformat().replace("+00:00", "Z")


def _root(args: argparse.Namespace) -> Path:
    from services.eventlog.settings import EventLogSettings

    root = Path(args.root) if args.root else EventLogSettings().resolved_root()
    if not root.is_dir():
        raise CliError(f"no event log at {root}; start it with `qanchor stack up eventlog` (or pass --root, or set "
                       "QANCHOR_EVENT_LOG_DIR to where the eventlog service writes)")
    return root


def _history(args: argparse.Namespace) -> int:
    from services.eventlog.history import read_log

    root = _root(args)
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    df = read_log(root, user_ids=[args.user], start=since, end=until)
    if args.limit:
        df = df.tail(args.limit)
    rows = [{"event_id": r["event_id"], "ts": r["ts"], "time": _iso(r["ts"]), "kind": r["kind"],
             "source": r["source"], "text": r["text"], "partition": int(r["partition"]), "offset": int(r["offset"])}
            for r in df.to_dict("records")]
    if args.json:
        print_json({"user_id": args.user, "root": str(root), "events": rows})
        return 0
    if not rows:
        print(f"no logged events for {args.user} under {root}")
        return 0
    print(format_table([[r["time"], r["kind"], r["source"] or "-", r["event_id"], (r["text"] or "")[:80]]
                        for r in rows], ["time", "kind", "source", "event_id", "text"]))
    print(f"\n{len(rows)} events of {args.user} (each event_id once) from {root}")
    return 0


def _as_of(args: argparse.Namespace) -> int:
    from services.common.feast_store import config_path
    from services.common.settings import ServiceSettings
    from services.eventlog.history import as_of

    at = parse_time(args.time)
    config = Path(args.feast_config) if args.feast_config else config_path(ServiceSettings().state_dir)
    if not config.is_file():
        raise CliError(f"no Feast config at {config}; run `qanchor stack up feast eventlog` or pass --feast-config")
    root = _root(args)
    try:
        [last] = as_of(config, [args.user], at, log_root=root)
    except RuntimeError as exc:
        raise CliError(str(exc)) from None
    doc = {"user_id": args.user, "as_of": _iso(at), "found": last.found, "event_id": last.event_id,
           "kind": last.kind, "source": last.source, "text": last.text, "ts": last.ts, "time": _iso(last.ts)}
    if args.json:
        print_json(doc)
    elif not last.found:
        print(f"{args.user} had no logged event at or before {doc['as_of']}")
    else:
        print(f"{args.user} as of {doc['as_of']}: last event {last.event_id} at {doc['time']} "
              f"({last.kind}{', ' + last.source if last.source else ''})\n  {last.text}")
    return 0


def _compact(args: argparse.Namespace) -> int:
    from services.eventlog.compact import CompactionBusy, CompactionPolicy, compact
    from training.data.event_log import segment_files

    if args.min_age < 0 or args.target_rows < 2 or args.memory_mib <= 0:
        raise CliError(f"--min-age must be >= 0, --target-rows >= 2 and --memory-mib > 0 (got {args.min_age:g}, "
                       f"{args.target_rows} and {args.memory_mib:g})")
    root = _root(args)
    before = len(segment_files(root))
    try:
        report = compact(root, CompactionPolicy(min_age_s=args.min_age, target_rows=args.target_rows,
                                                memory_mib=args.memory_mib), dry_run=args.dry_run)
    except CompactionBusy as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot compact {root} ({exc.strerror or exc}: {exc.filename or ''}); run it where the log "
                       "is writable (the eventlog service's host or volume), as the user that writes it") from None
    after = len(segment_files(root))
    doc = {"root": str(root), "dry_run": args.dry_run, "files_before": before, "files_after": after,
           **report.as_dict()}
    if args.json:
        print_json(doc)
        return 0
    mib = 2 ** 20
    if args.dry_run:
        print(f"would merge {report.files_in} of {before} files into {report.runs} ({report.rows_in} rows, "
              f"{report.bytes_in / mib:.1f} MiB) under {root}")
    else:
        print(f"merged {report.files_in} files into {report.runs} under {root}: {before} -> {after} files, "
              f"{report.rows_out} rows ({report.duplicates} second copies dropped), {report.bytes_in / mib:.1f} -> "
              f"{report.bytes_out / mib:.1f} MiB in {report.seconds:.1f} s")
    if report.skipped:
        print("left for the next pass: " + ", ".join(f"{v} run(s) {k}" for k, v in sorted(report.skipped.items())))
    return 0


def add_history_parsers(sub: argparse._SubParsersAction) -> None:
    hist = sub.add_parser("history", help="a user's events from the offline event log (each event_id once)")
    hist.add_argument("user")
    hist.add_argument("--since", default=None, help="ISO 8601 time with a zone, or unix seconds")
    hist.add_argument("--until", default=None, help="ISO 8601 time with a zone, or unix seconds")
    hist.add_argument("--limit", type=int, default=0, help="only the last N events (0 = all)")
    hist.add_argument("--root", default=None, help="event log root (default: the local stack's)")
    add_json_flag(hist)
    hist.set_defaults(func=_history)
    asof = sub.add_parser("as-of", help="a user's last logged event at an instant (Feast point-in-time read)")
    asof.add_argument("user")
    asof.add_argument("time", help="ISO 8601 time with a zone (2026-01-02T12:00:00Z), or unix seconds")
    asof.add_argument("--root", default=None, help="event log root (default: the local stack's)")
    asof.add_argument("--feast-config", default=None, help="feature_store.yaml (default: the local stack's)")
    add_json_flag(asof)
    asof.set_defaults(func=_as_of)
    comp = sub.add_parser("compact", help="merge the log's small files (per day and partition), each event once; "
                          "safe beside the running eventlog service")
    comp.add_argument("--root", default=None, help="event log root (default: the local stack's)")
    comp.add_argument("--min-age", type=float, default=3600.0,
                      help="only files not modified for this many seconds (default 3600)")
    comp.add_argument("--target-rows", type=int, default=200_000, help="rows per merged file at most")
    comp.add_argument("--memory-mib", type=float, default=256.0,
                      help="what merging one run may take in memory (estimated from the files' footers; default 256)")
    comp.add_argument("--dry-run", action="store_true", help="say what would be merged; change nothing")
    add_json_flag(comp)
    comp.set_defaults(func=_compact)
