"""`python -m services.gateway`: serve EmbeddingService until SIGTERM (settings: GATEWAY_* env, docs/gateway.md)."""
from __future__ import annotations

import gc
import logging
import sys

from services.common.errors import QAnchorError
from services.common.grpc_server import InsecureServer, require_token, serve
from services.common.logging import setup_logging
from services.gateway.ab_config import ConfigError
from services.gateway.server import SERVICE_NAME, build_gateway
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


def main() -> int:
    settings = GatewaySettings()
    if settings.metrics_port is None:
        settings = settings.model_copy(update={"metrics_port": settings.resolved_metrics_port()})
    setup_logging("gateway", settings.log_level)
    try:
        require_token(settings)  # before the slow start-up: a misconfigured pod fails in a second
    except InsecureServer as exc:
        log.error("startup failed", extra={"event": "startup_failed", "reason": "no_token", "error": str(exc)})
        print(f"gateway: cannot start: {exc}", file=sys.stderr)
        return 2
    # Before the slow part: importing Feast and opening the store can take tens of seconds on a busy machine.
    log.info("gateway starting", extra={"event": "gateway_starting", "service": SERVICE_NAME,
                                        "triton": settings.resolved_triton_url(),
                                        "registry": settings.resolved_registry_target(),
                                        "ab_config": str(settings.ab_config)})
    try:
        gateway = build_gateway(settings)
    except ConfigError as exc:
        log.error("startup failed", extra={"event": "startup_failed", "reason": "ab_config", "error": str(exc)})
        print(f"gateway: cannot start: {exc}\nFix {settings.ab_config} (GATEWAY_AB_CONFIG) and start again.",
              file=sys.stderr)
        return 2
    except (FileNotFoundError, QAnchorError) as exc:  # e.g. Feast never applied, registry unreachable
        log.error("startup failed", extra={"event": "startup_failed", "error": str(exc)})
        print(f"gateway: cannot start: {exc}", file=sys.stderr)
        return 1
    gateway.watcher.start()
    # Feast, pandas and protobuf leave many long-lived objects; a full collection scans them all while every
    # in-flight call waits. Freeze what startup built so the collector skips it (GATEWAY_GC_FREEZE=false: off).
    if settings.gc_freeze:
        gc.collect()
        gc.freeze()
        log.info("gc frozen", extra={"event": "gc_frozen", "objects": gc.get_freeze_count()})
    serve(settings, gateway.servicer(), service="gateway", on_stop=[gateway.close], readiness=gateway.ready,
          readiness_interval_s=settings.readiness_interval_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
