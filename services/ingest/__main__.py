"""`python -m services.ingest`: run one ingest consumer (start more with the same INGEST_GROUP_ID to scale out).

Settings come from INGEST_* and QANCHOR_* environment variables (services/ingest/settings.py). SIGTERM/SIGINT
finish the batch in hand (push + commit), then close the consumer cleanly so the group rebalances at once.
"""
from __future__ import annotations

import logging
import sys

from services.common.logging import setup_logging
from services.common.signals import stop_on_signals
from services.ingest.service import build_ingest
from services.ingest.settings import IngestSettings

log = logging.getLogger(__name__)


def main() -> int:
    settings = IngestSettings()
    setup_logging("ingest", settings.log_level)
    # Feast logs a registry refresh per read and kafka-python every connection at INFO: keep our lines greppable.
    for noisy in ("feast", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    stop = stop_on_signals(log, "finishing the current batch")
    log.info("ingest starting", extra={"topic": settings.topic, "group": settings.group_id,
                                       "bootstrap": settings.resolved_kafka_bootstrap(),
                                       "triton": settings.resolved_triton_url()})
    service = build_ingest(settings)
    try:
        service.worker.run(stop)
    finally:
        service.close()
    log.info("ingest stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
