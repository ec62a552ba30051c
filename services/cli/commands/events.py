"""`qanchor events produce FILE`: publish event-contract JSONL (docs/ingest.md) to Kafka, keyed by user_id.

    qanchor events produce events.jsonl              # validate every line, send the valid ones
    qanchor events produce - --no-validate < x.jsonl # send as is (e.g. to exercise the DLQ)
    qanchor events dlq --max 10                      # print rejected events with their reason headers
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


def _dlq(args: argparse.Namespace) -> int:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(args.topic, bootstrap_servers=_connect(args), group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=3000)
    records = []
    try:
        for rec in consumer:
            headers = {k: v.decode("utf-8", "replace") for k, v in rec.headers or []}
            records.append({"offset": rec.offset, "key": rec.key.decode("utf-8", "replace") if rec.key else None,
                            "headers": headers, "value": (rec.value or b"").decode("utf-8", "replace")[:500]})
            if len(records) >= args.max:
                break
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
    add_json_flag(dlq)
    dlq.set_defaults(func=_dlq)
    add_history_parsers(sub)
