"""`qanchor events produce FILE`: publish event-contract JSONL (docs/ingest.md) to Kafka, keyed by user_id.

    qanchor events produce events.jsonl              # validate every line, send the valid ones
    qanchor events produce - --no-validate < x.jsonl # send as is (e.g. to exercise the DLQ)
    qanchor events dlq --max 10                      # print rejected events with their reason headers

Lines that would be rejected by the consumer are refused up front and reported with their line numbers (exit 1).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings
from services.ingest.schema import DLQ_TOPIC, EVENTS_TOPIC


class CliEventsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="QANCHOR_", extra="ignore", frozen=True)

    # Kafka bootstrap servers; None = the local stack's broker at QANCHOR_PORT_BASE + 92.
    kafka_bootstrap: str | None = None


def _bootstrap(args: argparse.Namespace) -> str:
    settings = CliEventsSettings()
    return args.bootstrap or settings.kafka_bootstrap or f"127.0.0.1:{settings.port('kafka')}"


def _produce(args: argparse.Namespace) -> int:
    from services.ingest.producer import make_producer, publish_lines
    from services.ingest.transform import load_ingest_spec

    spec = load_ingest_spec(args.sources_yaml)
    if args.file == "-":
        lines = (line.encode("utf-8") for line in sys.stdin)
    else:
        path = Path(args.file)
        if not path.exists():
            print(f"error: {path} not found; pass a JSONL file of events (see docs/ingest.md)", file=sys.stderr)
            return 2
        lines = iter(path.read_bytes().splitlines())
    producer = make_producer(_bootstrap(args), client_id="qanchor-cli")
    try:
        report = publish_lines(producer, lines, topic=args.topic, validate=not args.no_validate,
                               sources=spec.source_names, tabular_dim=spec.features.tabular_dim)
    finally:
        producer.close(timeout=30)
    for n, reason in report.refused[:20]:
        print(f"line {n}: refused: {reason}", file=sys.stderr)
    if len(report.refused) > 20:
        print(f"... and {len(report.refused) - 20} more refused lines", file=sys.stderr)
    print(json.dumps({"topic": args.topic, "sent": report.sent, "refused": len(report.refused)}))
    return 1 if report.refused else 0


def _dlq(args: argparse.Namespace) -> int:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(args.topic, bootstrap_servers=_bootstrap(args), group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=3000)
    shown = 0
    try:
        for rec in consumer:
            headers = {k: v.decode("utf-8", "replace") for k, v in rec.headers or []}
            print(json.dumps({"offset": rec.offset, "key": rec.key.decode("utf-8", "replace") if rec.key else None,
                              "headers": headers, "value": (rec.value or b"").decode("utf-8", "replace")[:500]}))
            shown += 1
            if shown >= args.max:
                break
    finally:
        consumer.close()
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("events", help="publish events to the ingest topic; inspect the DLQ")
    sub = p.add_subparsers(dest="events_command", metavar="ACTION", required=True)
    prod = sub.add_parser("produce", help="publish a JSONL file of events (one JSON object per line)")
    prod.add_argument("file", help="JSONL file, or '-' for stdin")
    prod.add_argument("--topic", default=EVENTS_TOPIC)
    prod.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: the local stack)")
    prod.add_argument("--no-validate", action="store_true", help="send lines as they are, even invalid ones")
    prod.add_argument("--sources-yaml", type=Path, default=None,
                      help="sources.yaml to validate against (default: feature_repo/sources.yaml)")
    prod.set_defaults(func=_produce)
    dlq = sub.add_parser("dlq", help="print rejected events (value + reason headers) from the DLQ topic")
    dlq.add_argument("--topic", default=DLQ_TOPIC)
    dlq.add_argument("--bootstrap", default=None)
    dlq.add_argument("--max", type=int, default=20, help="stop after this many records")
    dlq.set_defaults(func=_dlq)
