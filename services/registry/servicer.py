"""gRPC ScenarioRegistry servicer: validate -> repository -> translate. No business logic here."""
from __future__ import annotations

import logging
from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.errors import InvalidArgument
from services.common.interceptors import Access
from services.common.proto.qanchor.v1 import registry_pb2 as pb
from services.common.proto.qanchor.v1 import registry_pb2_grpc as pb_grpc
from services.registry.domain import JobState, ModelState, ModelVersionRecord, PromptKind, PromptStatus, \
    PromptVersionRecord, ScenarioRecord, TuningJobRecord
from services.registry.enqueue import DisabledJobQueue, JobQueue
from services.registry.model_versions import ModelVersions
from services.registry.repository import Repository

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ScenarioRegistry"].full_name
_PREFIX = f"/{SERVICE_NAME}/"
# Writes that change what is served need the admin token; everything else the regular token (if configured).
AUTH_POLICY = {
    _PREFIX + "RegisterScenario": Access.ADMIN,
    _PREFIX + "PromotePromptVersion": Access.ADMIN,
    _PREFIX + "StartTuningJob": Access.ADMIN,
    _PREFIX + "CancelTuningJob": Access.ADMIN,
    _PREFIX + "RegisterModel": Access.ADMIN,
    _PREFIX + "PublishModel": Access.ADMIN,
    _PREFIX + "PromoteModel": Access.ADMIN,
    _PREFIX + "RetireModel": Access.ADMIN,
}

_KIND = {PromptKind.ZERO_SHOT: pb.PROMPT_KIND_ZERO_SHOT, PromptKind.TUNED: pb.PROMPT_KIND_TUNED}
_STATUS = {PromptStatus.READY: pb.PROMPT_STATUS_READY, PromptStatus.ACTIVE: pb.PROMPT_STATUS_ACTIVE,
           PromptStatus.RETIRED: pb.PROMPT_STATUS_RETIRED}
_STATE = {JobState.QUEUED: pb.JOB_STATE_QUEUED, JobState.RUNNING: pb.JOB_STATE_RUNNING,
          JobState.SUCCEEDED: pb.JOB_STATE_SUCCEEDED, JobState.FAILED: pb.JOB_STATE_FAILED,
          JobState.CANCELLED: pb.JOB_STATE_CANCELLED}
_STATE_FROM_PB = {v: k for k, v in _STATE.items()}
_MODEL_STATE = {ModelState.REGISTERED: pb.MODEL_STATE_REGISTERED, ModelState.PUBLISHED: pb.MODEL_STATE_PUBLISHED,
                ModelState.PROMOTED: pb.MODEL_STATE_PROMOTED, ModelState.RETIRED: pb.MODEL_STATE_RETIRED}
_MODEL_STATE_FROM_PB = {v: k for k, v in _MODEL_STATE.items()}


def _ts(dt: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt)
    return ts


def version_to_proto(v: PromptVersionRecord) -> pb.PromptVersion:
    return pb.PromptVersion(
        scenario=v.scenario, version=v.version, kind=_KIND[v.kind], status=_STATUS[v.status],
        model_version=v.model_version, artifact_uri=v.artifact_uri, sha256=v.sha256, metrics=v.metrics,
        created_at=_ts(v.created_at),
    )


def scenario_to_proto(s: ScenarioRecord) -> pb.Scenario:
    return pb.Scenario(
        name=s.name, query_text=s.query_text, description=s.description, active_version=s.active_version,
        versions=[version_to_proto(v) for v in s.versions], created_at=_ts(s.created_at),
    )


def job_to_proto(j: TuningJobRecord) -> pb.TuningJob:
    return pb.TuningJob(
        job_id=j.job_id, scenario=j.scenario, state=_STATE[j.state], progress=j.progress, message=j.message,
        prompt_version=j.prompt_version or 0, metrics=j.metrics, created_at=_ts(j.created_at),
        updated_at=_ts(j.updated_at), labels_uri=j.labels_uri, model_version=j.model_version,
    )


def model_to_proto(m: ModelVersionRecord) -> pb.ModelVersion:
    return pb.ModelVersion(
        model_version=m.model_version, state=_MODEL_STATE[m.state], artifact_uri=m.artifact_uri, sha256=m.sha256,
        metrics=m.metrics, source_id=m.source_id, published_uri=m.published_uri, created_by=m.created_by,
        created_at=_ts(m.created_at), published_at=_ts(m.published_at) if m.published_at else None,
        promoted_at=_ts(m.promoted_at) if m.promoted_at else None,
    )


class ScenarioRegistryServicer(pb_grpc.ScenarioRegistryServicer):
    def __init__(self, repo: Repository, jobs: JobQueue | None = None, models: ModelVersions | None = None) -> None:
        self.repo = repo
        self.jobs = jobs or DisabledJobQueue()
        self.models = models or ModelVersions(repo.db)

    def RegisterScenario(self, request: pb.RegisterScenarioRequest, context: grpc.ServicerContext) -> pb.Scenario:
        return scenario_to_proto(self.repo.register_scenario(request.name, request.query_text, request.description))

    def GetScenario(self, request: pb.GetScenarioRequest, context: grpc.ServicerContext) -> pb.Scenario:
        return scenario_to_proto(self.repo.get_scenario(request.name))

    def ListScenarios(self, request: pb.ListScenariosRequest, context: grpc.ServicerContext
                      ) -> pb.ListScenariosResponse:
        page, token = self.repo.list_scenarios(request.page_size, request.page_token)
        return pb.ListScenariosResponse(scenarios=[scenario_to_proto(s) for s in page], next_page_token=token)

    def ListPromptVersions(self, request: pb.ListPromptVersionsRequest, context: grpc.ServicerContext
                           ) -> pb.ListPromptVersionsResponse:
        return pb.ListPromptVersionsResponse(
            versions=[version_to_proto(v) for v in self.repo.list_prompt_versions(request.scenario)])

    def PromotePromptVersion(self, request: pb.PromotePromptVersionRequest, context: grpc.ServicerContext
                             ) -> pb.PromptVersion:
        if request.version <= 0:
            raise InvalidArgument("version must be a positive prompt version number (see ListPromptVersions)")
        return version_to_proto(self.repo.promote(request.scenario, request.version))

    def StartTuningJob(self, request: pb.StartTuningJobRequest, context: grpc.ServicerContext) -> pb.TuningJob:
        if isinstance(self.jobs, DisabledJobQueue):
            self.jobs.enqueue("")  # raises FAILED_PRECONDITION before any row is written
        job = self.repo.create_tuning_job(request.scenario, request.labels_uri, request.model_version,
                                          dict(request.params))
        try:
            self.jobs.enqueue(job.job_id)
        except Exception as exc:
            # Never leave a QUEUED row that no worker will ever see.
            self.repo.update_tuning_job(job.job_id, state=JobState.FAILED, message=f"not queued: {exc}")
            raise
        return job_to_proto(job)

    def GetTuningJob(self, request: pb.GetTuningJobRequest, context: grpc.ServicerContext) -> pb.TuningJob:
        if not request.job_id:
            raise InvalidArgument("job_id is empty; pass the id StartTuningJob returned")
        return job_to_proto(self.repo.get_tuning_job(request.job_id))

    def ListTuningJobs(self, request: pb.ListTuningJobsRequest, context: grpc.ServicerContext
                       ) -> pb.ListTuningJobsResponse:
        unknown = [s for s in request.states if s not in _STATE_FROM_PB]
        if unknown:
            raise InvalidArgument(f"unknown job state(s) {unknown}; use QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED")
        jobs, token = self.repo.list_tuning_jobs(request.scenario, [_STATE_FROM_PB[s] for s in request.states],
                                                 request.page_size, request.page_token)
        return pb.ListTuningJobsResponse(jobs=[job_to_proto(j) for j in jobs], next_page_token=token)

    def CancelTuningJob(self, request: pb.CancelTuningJobRequest, context: grpc.ServicerContext) -> pb.TuningJob:
        if not request.job_id:
            raise InvalidArgument("job_id is empty; pass the id StartTuningJob returned (see ListTuningJobs)")
        return job_to_proto(self.repo.cancel_tuning_job(request.job_id, request.reason))

    # --- model versions ---------------------------------------------------------------------------------------

    def RegisterModel(self, request: pb.RegisterModelRequest, context: grpc.ServicerContext) -> pb.ModelVersion:
        return model_to_proto(self.models.register(
            request.model_version, artifact_uri=request.artifact_uri, sha256=request.sha256,
            metrics=dict(request.metrics), source_id=request.source_id, created_by=request.created_by))

    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.ModelVersion:
        return model_to_proto(self.models.get(request.model_version))

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        unknown = [s for s in request.states if s not in _MODEL_STATE_FROM_PB]
        if unknown:
            raise InvalidArgument(f"unknown model state(s) {unknown}; use REGISTERED, PUBLISHED, PROMOTED, RETIRED")
        found = self.models.list([_MODEL_STATE_FROM_PB[s] for s in request.states])
        return pb.ListModelsResponse(models=[model_to_proto(m) for m in found])

    def PublishModel(self, request: pb.PublishModelRequest, context: grpc.ServicerContext) -> pb.ModelVersion:
        return model_to_proto(self.models.publish(request.model_version, request.published_uri))

    def PromoteModel(self, request: pb.PromoteModelRequest, context: grpc.ServicerContext) -> pb.ModelVersion:
        return model_to_proto(self.models.promote(request.model_version))

    def RetireModel(self, request: pb.RetireModelRequest, context: grpc.ServicerContext) -> pb.ModelVersion:
        return model_to_proto(self.models.retire(request.model_version))
