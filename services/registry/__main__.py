"""`python -m services.registry`: apply migrations, then serve ScenarioRegistry until SIGTERM."""
from __future__ import annotations

import logging
import sys

from services.common.errors import QAnchorError
from services.common.grpc_server import InsecureServer, require_token, serve
from services.common.logging import setup_logging
from services.registry.server import build_app
from services.registry.servicer import AUTH_POLICY
from services.registry.settings import RegistrySettings

log = logging.getLogger(__name__)


def main() -> int:
    settings = RegistrySettings()
    setup_logging("registry", settings.log_level)
    try:
        require_token(settings)  # before migrations: a misconfigured pod fails in a second
        app = build_app(settings)
        # Readiness: SERVING only while the database answers (a registry without its database serves nothing).
        serve(settings, app.grpc_servicer(), service="registry", auth_policy=AUTH_POLICY,
              on_stop=[app.db.dispose], readiness=app.db.ping, readiness_interval_s=settings.readiness_interval_s)
    except QAnchorError as exc:
        log.error("registry failed to start", extra={"error": exc.message})
        return 1
    except InsecureServer as exc:
        log.error("registry failed to start", extra={"reason": "no_token", "error": str(exc)})
        print(f"registry: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
