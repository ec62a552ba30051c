"""`python -m services.eventlog`: run one event-log consumer (its own group; start more to scale out).

Settings come from EVENTLOG_* and QANCHOR_* environment variables (services/eventlog/settings.py), the record
limits from ingest's INGEST_MAX_* ones. SIGTERM/SIGINT flush what is buffered (segments, then commit), then close
the consumer cleanly so the group rebalances at once.
"""
from __future__ import annotations

import logging
import sys

from services.common.logging import setup_logging
from services.common.signals import stop_on_signals
from services.eventlog.service import build_eventlog
from services.eventlog.settings import EventLogSettings
from services.ingest.settings import IngestSettings

log = logging.getLogger(__name__)


def main() -> int:
    settings = EventLogSettings()
    setup_logging("eventlog", settings.log_level)
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    stop = stop_on_signals(log, "flushing the buffer")
    log.info("eventlog starting", extra={"topic": settings.topic, "group": settings.group_id,
                                         "bootstrap": settings.resolved_kafka_bootstrap(),
                                         "root": str(settings.resolved_root())})
    service = build_eventlog(settings, IngestSettings())
    try:
        service.worker.run(stop)
    finally:
        service.close()
    log.info("eventlog stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
