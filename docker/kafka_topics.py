#!/usr/bin/env python3
"""Create qanchor's Kafka topics (services/stack/topics.yaml) on a broker; existing topics are left alone.

    qanchor-kafka-topics --bootstrap kafka:9092 [--replication 3] [--wait 120]

Compose runs it as a one-shot before ingest starts; the Helm chart as a post-install/upgrade hook Job. The topic
list is the local stack's, so names, partitions and retention are the same everywhere; only the replication
factor differs (1 on a single broker, 3 on a production cluster).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time

log = logging.getLogger("qanchor.kafka_topics")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qanchor-kafka-topics", description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True, help="bootstrap servers host:port[,host:port]")
    parser.add_argument("--replication", type=int, default=None,
                        help="replication factor for new topics (default: the value in topics.yaml)")
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to keep retrying an unreachable broker")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="level=%(levelname)s logger=%(name)s %(message)s")
    # kafka-python logs every refused connection while the broker starts; the outcome is logged below.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)

    from services.stack.kafka import ensure_topics, load_topics

    specs = load_topics()
    if args.replication is not None:
        specs = [dataclasses.replace(s, replication=args.replication) for s in specs]
    deadline = time.monotonic() + args.wait
    while True:
        try:
            created = ensure_topics(args.bootstrap, specs)
            break
        except Exception as exc:  # broker still starting (NoBrokersAvailable, timeouts): retry until the deadline
            if time.monotonic() > deadline:
                log.error("event=kafka_topics_failed bootstrap=%s error=%r hint='check the bootstrap address and "
                          "that the broker accepts connections from this pod'", args.bootstrap, exc)
                return 1
            time.sleep(2.0)
    log.info("event=kafka_topics_ok bootstrap=%s created=%s existing=%s", args.bootstrap, ",".join(created) or "-",
             ",".join(s.name for s in specs if s.name not in created) or "-")
    return 0


if __name__ == "__main__":
    sys.exit(main())
