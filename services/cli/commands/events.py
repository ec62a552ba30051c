"""`qanchor events produce FILE`: publish event-contract JSONL (docs/ingest.md) to Kafka, keyed by user_id.

    qanchor events produce events.jsonl              # validate every line, send the valid ones
    qanchor events produce - --no-validate < x.jsonl # send as is (e.g. to exercise the DLQ)
    qanchor events dlq --max 10 --reason invalid_json  # print rejected events with their reason headers
    qanchor events redrive --reason unknown_source   # send dead letters back once their cause is fixed
    qanchor events history u42                       # the user's events in the offline log (docs/eventlog.md)
    qanchor events as-of u42 2026-01-02T12:00:00Z    # the user's last event at that instant (Feast point in time)
    qanchor events compact                           # merge the log's small files (docs/eventlog.md, Compaction)

Lines that would be rejected by the consumer are refused up front and reported with their line numbers (exit 1).
The local stack's broker is found on its own; --bootstrap (or QANCHOR_KAFKA_BOOTSTRAP) names another.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from services.cli.commands._event_history import add_history_parsers
from services.cli.output import CliError, add_json_flag, print_json, require_reachable
from services.cli.target import kafka_bootstrap
from services.ingest.schema import DLQ_TOPIC, EVENTS_TOPIC


def _connect(args: argparse.Namespace) -> str:
    bootstrap = kafka_bootstrap(args)
    require_reachable(bootstrap)
    # kafka-python logs every failed connection attempt at ERROR: the CLI reports failures in one line itself.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    return bootstrap


def _produce(args: argparse.Namespace) -> int:
    from services.ingest.producer import make_producer, publish_lines
    from services.ingest.transform import load_ingest_spec

    spec = load_ingest_spec(args.sources_yaml)
    if args.file == "-":
        lines = (line.encode("utf-8") for line in sys.stdin)
    else:
        path = Path(args.file)
        if not path.is_file():
            raise CliError(f"{path} not found; pass a JSONL file of events (one JSON object per line, docs/ingest.md)"
                           " or '-' for stdin")
        lines = iter(path.read_bytes().splitlines())
    bootstrap = _connect(args)
    # kafka-python 3 refuses a delivery timeout not above linger + request timeout (its default request timeout
    # is 30 s): name all three.
    producer = make_producer(bootstrap, client_id="qanchor-cli", max_block_ms=10_000, delivery_timeout_ms=30_000,
                             request_timeout_ms=10_000)
    try:
        report = publish_lines(producer, lines, topic=args.topic, validate=not args.no_validate,
                               sources=spec.source_names, tabular_dim=spec.features.tabular_dim, timeout_s=30.0)
    finally:
        producer.close(timeout=10)
    if args.json:
        print_json({"topic": args.topic, "bootstrap": bootstrap, "sent": report.sent,
                    "refused": [{"line": n, "reason": reason} for n, reason in report.refused]})
    else:
        for n, reason in report.refused[:20]:
            print(f"line {n}: refused: {reason}", file=sys.stderr)
        if len(report.refused) > 20:
            print(f"... and {len(report.refused) - 20} more refused lines", file=sys.stderr)
        print(f"sent {report.sent} events to {args.topic} at {bootstrap}; {len(report.refused)} lines refused")
    return 1 if report.refused else 0


def _selection(args: argparse.Namespace):
    """The dead letters `dlq` shows and `redrive` sends: --reason, --user, --since/--until, --max."""
    from services.cli.commands._event_history import parse_time
    from services.ingest.redrive import Selection

    if args.max is not None and args.max < 1:
        raise CliError("--max must be at least 1")
    return Selection(reasons=frozenset(args.reason) if args.reason else None,
                     users=frozenset(args.user) if args.user else None,
                     since=parse_time(args.since).timestamp() if args.since else None,
                     until=parse_time(args.until).timestamp() if args.until else None, limit=args.max)


def _dlq(args: argparse.Namespace) -> int:
    from kafka import KafkaConsumer

    from services.ingest.redrive import read_dead_letters

    selection = _selection(args)
    consumer = KafkaConsumer(bootstrap_servers=_connect(args), group_id=None, enable_auto_commit=False,
                             client_id="qanchor-cli-dlq")
    records = []
    try:
        for letter in read_dead_letters(consumer, args.topic):
            if not selection.matches(letter):
                continue
            records.append({"offset": letter.offset, "partition": letter.partition,
                            "key": letter.key.decode("utf-8", "replace") if letter.key else None,
                            "headers": {k: v.decode("utf-8", "replace") for k, v in letter.headers},
                            "value": letter.value.decode("utf-8", "replace")[:500]})
            if len(records) >= args.max:
                break
    except LookupError as exc:  # nothing dead-lettered yet: an empty DLQ, not an error
        print(f"0 rejected events: {exc}", file=sys.stderr)
        records = []
    finally:
        consumer.close()
    if args.json:
        print_json(records)
        return 0
    for r in records:
        h = r["headers"]
        print(f"offset {r['offset']}  key {r['key']}  reason {h.get('qanchor.reason', '-')}  "
              f"from {h.get('qanchor.topic', '-')}[{h.get('qanchor.partition', '-')}]@{h.get('qanchor.offset', '-')}"
              f"\n  {h.get('qanchor.detail', '')}\n  value: {r['value'][:200]}")
    print(f"{len(records)} rejected events shown from {args.topic}" + (" (--max reached)" if len(records) >= args.max
                                                                          else ""))
    return 0


def _redrive(args: argparse.Namespace) -> int:
    from kafka import KafkaConsumer

    from services.ingest.producer import make_producer
    from services.ingest.redrive import read_dead_letters, redrive
    from services.ingest.service import limits_from
    from services.ingest.settings import IngestSettings
    from services.ingest.transform import load_ingest_spec

    selection = _selection(args)
    spec = load_ingest_spec(args.sources_yaml)
    limits = limits_from(IngestSettings()).events  # this shell's INGEST_MAX_*: the defaults unless set
    bootstrap = _connect(args)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             client_id="qanchor-cli-redrive")
    producer = None if args.dry_run else make_producer(
        bootstrap, client_id="qanchor-cli-redrive", max_block_ms=10_000, delivery_timeout_ms=30_000,
        request_timeout_ms=10_000)
    try:
        report = redrive(read_dead_letters(consumer, args.topic), selection, producer, sources=spec.source_names,
                         tabular_dim=spec.features.tabular_dim, limits=limits, validate=not args.no_validate,
                         to_topic=args.to)
    except LookupError as exc:
        raise CliError(str(exc)) from None
    finally:
        consumer.close()
        if producer is not None:
            producer.close(timeout=10)
    if args.json:
        print_json({"dlq": args.topic, "bootstrap": bootstrap, "dry_run": args.dry_run, **report.as_dict()})
    else:
        for where, was, why in report.refused[:20]:
            print(f"{where} ({was}): not sent: {why}", file=sys.stderr)
        if len(report.refused) > 20:
            print(f"... and {len(report.refused) - 20} more not sent", file=sys.stderr)
        verb = "would send" if args.dry_run else "sent"
        reasons = ", ".join(f"{r} {n}" for r, n in report.selected_by_reason.most_common()) or "none"
        to = ", ".join(f"{n} to {t}" for t, n in report.sent_to.items()) or "nothing"
        print(f"{report.selected} of {report.read} dead letters selected ({reasons}); {verb} {to}; "
              f"{len(report.refused)} would be rejected again and stay in {args.topic}")
    return 1 if report.refused else 0


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", action="append", default=None,
                   help="only letters rejected for this reason (repeatable; docs/ingest.md lists them)")
    p.add_argument("--user", action="append", default=None, help="only this user's letters (repeatable)")
    p.add_argument("--since", default=None, help="only letters rejected at or after this time (ISO with a zone, or "
                                                 "unix seconds)")
    p.add_argument("--until", default=None, help="only letters rejected at or before this time")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("events", help="publish events to the ingest topic; inspect the DLQ; read the event log",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="events_command", metavar="ACTION", required=True)
    prod = sub.add_parser("produce", help="publish a JSONL file of events (one JSON object per line)")
    prod.add_argument("file", help="JSONL file, or '-' for stdin")
    prod.add_argument("--topic", default=EVENTS_TOPIC)
    prod.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (env QANCHOR_KAFKA_BOOTSTRAP; "
                                                        "default: the local stack)")
    prod.add_argument("--no-validate", action="store_true", help="send lines as they are, even invalid ones")
    prod.add_argument("--sources-yaml", type=Path, default=None,
                      help="sources.yaml to validate against (default: feature_repo/sources.yaml)")
    add_json_flag(prod)
    prod.set_defaults(func=_produce)
    dlq = sub.add_parser("dlq", help="print rejected events (value + reason headers) from the DLQ topic")
    dlq.add_argument("--topic", default=DLQ_TOPIC)
    dlq.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: the local stack)")
    dlq.add_argument("--max", type=int, default=20, help="stop after this many records")
    _add_selection(dlq)
    add_json_flag(dlq)
    dlq.set_defaults(func=_dlq)
    red = sub.add_parser("redrive", help="send dead letters back to their topic once their cause is fixed (each "
                         "validated first; those that would fail again stay)")
    red.add_argument("--topic", default=DLQ_TOPIC, help="the DLQ topic to read")
    red.add_argument("--to", default=None, help="topic to send to (default: each letter's qanchor.topic header)")
    red.add_argument("--max", type=int, default=None, help="at most this many letters")
    _add_selection(red)
    red.add_argument("--dry-run", action="store_true", help="validate and count; send nothing")
    red.add_argument("--no-validate", action="store_true",
                     help="send the selected letters as they are (ingest dead-letters them again if still bad)")
    red.add_argument("--sources-yaml", type=Path, default=None,
                     help="sources.yaml to validate against (default: feature_repo/sources.yaml)")
    red.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: the local stack)")
    add_json_flag(red)
    red.set_defaults(func=_redrive)
    add_history_parsers(sub)
