"""Registry settings (env prefix REGISTRY_), built once in __main__."""
from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from services.common.settings import GrpcServerSettings


class RegistrySettings(GrpcServerSettings):
    model_config = SettingsConfigDict(env_prefix="REGISTRY_", extra="ignore", frozen=True)
    GRPC_PORT_NAME: ClassVar[str] = "registry_grpc"

    # SQLAlchemy URL; None = SQLite file $QANCHOR_STATE_DIR/registry/registry.db. PostgreSQL:
    # postgresql+psycopg://user:pass@host/db (driver must be installed in the services env).
    database_url: str | None = None
    # Celery broker the tuning worker listens on (redis://..., sqla+sqlite:///...); None = tuning disabled.
    celery_broker: str | None = None
    # Celery queue for tuning tasks; None = Celery's default queue. Must match the worker's -Q.
    tuning_queue: str | None = None
    # Seconds to wait for the broker when enqueueing before reporting UNAVAILABLE.
    celery_publish_timeout_s: float = 5.0
    # How often health re-checks the database; while it does not answer, qanchor.v1.ScenarioRegistry is
    # NOT_SERVING (readiness) and the overall "" status stays SERVING (liveness).
    readiness_interval_s: float = 5.0

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.state_dir / 'registry' / 'registry.db'}"
