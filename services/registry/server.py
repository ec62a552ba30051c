"""Wire the registry: database (migrated), repository, job queue, servicer, gRPC server."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc

from services.common.grpc_server import Servicer, create_server
from services.common.proto.qanchor.v1 import registry_pb2_grpc as pb_grpc
from services.registry.db import Database
from services.registry.enqueue import CeleryJobQueue, DisabledJobQueue, JobQueue
from services.registry.repository import Repository
from services.registry.servicer import AUTH_POLICY, SERVICE_NAME, ScenarioRegistryServicer
from services.registry.settings import RegistrySettings

log = logging.getLogger(__name__)


@dataclass
class RegistryApp:
    db: Database
    repo: Repository
    servicer: ScenarioRegistryServicer

    def grpc_servicer(self) -> Servicer:
        return Servicer(pb_grpc.add_ScenarioRegistryServicer_to_server, self.servicer, SERVICE_NAME)


def build_app(settings: RegistrySettings, *, migrate: bool = True) -> RegistryApp:
    db = Database(settings.resolved_database_url())
    if migrate:
        db.migrate()
    jobs: JobQueue = (CeleryJobQueue(settings.celery_broker, settings.tuning_queue, settings.celery_publish_timeout_s)
                      if settings.celery_broker else DisabledJobQueue())
    if settings.celery_broker is None:
        log.warning("tuning disabled: REGISTRY_CELERY_BROKER is not set; StartTuningJob will be refused")
    if not (settings.admin_token and settings.admin_token.get_secret_value()):
        log.warning("no REGISTRY_ADMIN_TOKEN: admin RPCs (register, promote, tune) will be refused")
    repo = Repository(db)
    return RegistryApp(db=db, repo=repo, servicer=ScenarioRegistryServicer(repo, jobs))


def create_registry_server(settings: RegistrySettings) -> tuple[grpc.Server, int, RegistryApp]:
    app = build_app(settings)
    server, port = create_server(settings, app.grpc_servicer(), service="registry", auth_policy=AUTH_POLICY)
    return server, port, app
