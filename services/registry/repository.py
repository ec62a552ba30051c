"""Registry repository: every read and write of scenarios, prompt versions and tuning jobs.

Transport-free: raises services.common.errors exceptions and returns frozen records (domain.py), so the gRPC
servicer, the CLI and the tuning worker share one implementation.

For the tuning worker (it writes through this module, in-process, against the same database):
  - `update_tuning_job(job_id, state=RUNNING, progress=0.3, message=...)` while it runs;
  - `complete_tuning_job(job_id, artifact_uri=..., sha256=..., metrics={...}, model_version=...)` at the end:
    adds the TUNED prompt version (READY) and marks the job SUCCEEDED in one transaction; idempotent (a retried
    task gets the version it already created);
  - `update_tuning_job(job_id, state=FAILED, message=...)` on error;
  - `cancel_tuning_job(job_id)` (CancelTuningJob): the worker sees CANCELLED at its next progress step;
  - `add_prompt_version(...)` adds a version outside any job (imports, backfills).
"""
from __future__ import annotations

import base64
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.common.validation import validate_scenario_name
from services.registry.db import Database
from services.registry.domain import (
    JobState,
    PromptKind,
    PromptStatus,
    PromptVersionRecord,
    ScenarioRecord,
    TuningJobRecord,
)
from services.registry.models import PromptVersionRow, ScenarioRow, TuningJobRow, utcnow

log = logging.getLogger(__name__)

QUERY_TEXT_MAX = 4096
DESCRIPTION_MAX = 4096
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _aware(ts: datetime) -> datetime:
    # SQLite drops the zone; everything is written in UTC.
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _version_record(row: PromptVersionRow, scenario: str) -> PromptVersionRecord:
    return PromptVersionRecord(
        scenario=scenario, version=row.version, kind=PromptKind(row.kind), status=PromptStatus(row.status),
        model_version=row.model_version, artifact_uri=row.artifact_uri, sha256=row.sha256,
        metrics={k: float(v) for k, v in (row.metrics or {}).items()}, created_at=_aware(row.created_at),
    )


def _scenario_record(row: ScenarioRow) -> ScenarioRecord:
    return ScenarioRecord(
        name=row.name, query_text=row.query_text, description=row.description, active_version=row.active_version,
        created_at=_aware(row.created_at), versions=tuple(_version_record(v, row.name) for v in row.versions),
    )


def _job_record(row: TuningJobRow, scenario: str) -> TuningJobRecord:
    return TuningJobRecord(
        job_id=row.id, scenario=scenario, state=JobState(row.state), progress=row.progress, message=row.message,
        labels_uri=row.labels_uri, model_version=row.model_version, params=dict(row.params or {}),
        prompt_version=row.prompt_version, metrics={k: float(v) for k, v in (row.metrics or {}).items()},
        created_at=_aware(row.created_at), updated_at=_aware(row.updated_at),
    )


def validate_query_text(query_text: str) -> str:
    text = (query_text or "").strip()
    if not text:
        raise InvalidArgument("query_text is empty; give the natural-language question that anchors the scenario")
    if len(text) > QUERY_TEXT_MAX:
        raise InvalidArgument(f"query_text is {len(text)} characters; the maximum is {QUERY_TEXT_MAX}")
    return text


def _encode_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode()


def _decode_token(token: str) -> str:
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("page_token is not valid; pass next_page_token from the previous response") from None


class Repository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- scenarios -------------------------------------------------------------------------------------------

    def _scenario_row(self, session: Session, name: str, *, lock: bool = False) -> ScenarioRow:
        stmt = select(ScenarioRow).where(ScenarioRow.name == name).options(selectinload(ScenarioRow.versions))
        if lock:
            stmt = stmt.with_for_update()  # PostgreSQL row lock; SQLite's BEGIN IMMEDIATE already serialises
        row = session.scalars(stmt).one_or_none()
        if row is None:
            raise NotFound(f"scenario {name!r} is not registered; list scenarios or register it first")
        return row

    def register_scenario(self, name: str, query_text: str, description: str = "") -> ScenarioRecord:
        """Create the scenario with prompt version 1 (ZERO_SHOT, ACTIVE): servable at once."""
        validate_scenario_name(name)
        query_text = validate_query_text(query_text)
        if len(description) > DESCRIPTION_MAX:
            raise InvalidArgument(f"description is {len(description)} characters; the maximum is {DESCRIPTION_MAX}")
        now = utcnow()
        row = ScenarioRow(name=name, query_text=query_text, description=description, active_version=1,
                          created_at=now, updated_at=now)
        row.versions.append(PromptVersionRow(
            version=1, kind=PromptKind.ZERO_SHOT.value, status=PromptStatus.ACTIVE.value, model_version="",
            artifact_uri="", sha256="", metrics={}, created_at=now,
        ))
        try:
            with self.db.write() as session, session.begin():
                session.add(row)
        except IntegrityError:
            # The unique name constraint, not a pre-check, decides races between concurrent registrations.
            raise AlreadyExists(f"scenario {name!r} already exists; pick another name or use GetScenario") from None
        log.info("scenario registered", extra={"scenario": name})
        return _scenario_record(row)

    def get_scenario(self, name: str) -> ScenarioRecord:
        validate_scenario_name(name)
        with self.db.read() as session:
            return _scenario_record(self._scenario_row(session, name))

    def list_scenarios(self, page_size: int = 0, page_token: str = "") -> tuple[list[ScenarioRecord], str]:
        """Scenarios ordered by name; returns (page, next_page_token or "")."""
        if page_size < 0:
            raise InvalidArgument("page_size must be >= 0 (0 = default of 100)")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        stmt = select(ScenarioRow).options(selectinload(ScenarioRow.versions)).order_by(ScenarioRow.name)
        if page_token:
            stmt = stmt.where(ScenarioRow.name > _decode_token(page_token))
        with self.db.read() as session:
            rows = list(session.scalars(stmt.limit(size + 1)))
            page = [_scenario_record(r) for r in rows[:size]]
        next_token = _encode_token(page[-1].name) if len(rows) > size else ""
        return page, next_token

    # --- prompt versions -------------------------------------------------------------------------------------

    def list_prompt_versions(self, scenario: str) -> list[PromptVersionRecord]:
        return list(self.get_scenario(scenario).versions)

    def _add_version(
        self, session: Session, scenario_row: ScenarioRow, *, kind: PromptKind, status: PromptStatus,
        artifact_uri: str, sha256: str, metrics: Mapping[str, float], model_version: str, job_id: str | None,
    ) -> PromptVersionRow:
        if status is PromptStatus.ACTIVE:
            raise InvalidArgument("new versions start READY (or RETIRED); promote one to make it ACTIVE")
        if kind is PromptKind.TUNED:
            if not artifact_uri:
                raise InvalidArgument("a TUNED prompt version needs artifact_uri (the soft prompt safetensors file)")
            if not _SHA256_RE.fullmatch(sha256):
                raise InvalidArgument("sha256 must be the artifact's 64-character lowercase hex digest")
        next_version = (session.scalar(
            select(func.max(PromptVersionRow.version)).where(PromptVersionRow.scenario_id == scenario_row.id)
        ) or 0) + 1
        row = PromptVersionRow(
            scenario_id=scenario_row.id, version=next_version, kind=kind.value, status=status.value,
            model_version=model_version, artifact_uri=artifact_uri, sha256=sha256,
            metrics={k: float(v) for k, v in metrics.items()}, job_id=job_id, created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        return row

    def add_prompt_version(
        self, scenario: str, *, kind: PromptKind = PromptKind.TUNED, artifact_uri: str = "", sha256: str = "",
        metrics: Mapping[str, float] | None = None, model_version: str = "",
        status: PromptStatus = PromptStatus.READY,
    ) -> PromptVersionRecord:
        """Append the next version number to `scenario` (READY by default; promote it to serve by default)."""
        with self.db.write() as session, session.begin():
            srow = self._scenario_row(session, scenario, lock=True)
            row = self._add_version(session, srow, kind=kind, status=status, artifact_uri=artifact_uri,
                                    sha256=sha256, metrics=metrics or {}, model_version=model_version, job_id=None)
            record = _version_record(row, scenario)
        log.info("prompt version added", extra={"scenario": scenario, "version": record.version,
                                                "kind": kind.value})
        return record

    def promote(self, scenario: str, version: int) -> PromptVersionRecord:
        """Make `version` ACTIVE; the previous ACTIVE version becomes READY. Idempotent for the active one."""
        with self.db.write() as session, session.begin():
            srow = self._scenario_row(session, scenario, lock=True)
            target = next((v for v in srow.versions if v.version == version), None)
            if target is None:
                known = ", ".join(str(v.version) for v in srow.versions)
                raise NotFound(f"scenario {scenario!r} has no prompt version {version}; versions: {known}")
            if target.status == PromptStatus.RETIRED.value:
                raise FailedPrecondition(f"version {version} of {scenario!r} is RETIRED and cannot be served")
            for v in srow.versions:
                if v.status == PromptStatus.ACTIVE.value and v.version != version:
                    v.status = PromptStatus.READY.value
            target.status = PromptStatus.ACTIVE.value
            srow.active_version = version
            srow.updated_at = utcnow()
            record = _version_record(target, scenario)
        log.info("prompt version promoted", extra={"scenario": scenario, "version": version})
        return record

    def retire(self, scenario: str, version: int) -> PromptVersionRecord:
        """Stop a READY version from ever serving again (the A/B config can no longer route to it)."""
        with self.db.write() as session, session.begin():
            srow = self._scenario_row(session, scenario, lock=True)
            target = next((v for v in srow.versions if v.version == version), None)
            if target is None:
                raise NotFound(f"scenario {scenario!r} has no prompt version {version}")
            if target.status == PromptStatus.ACTIVE.value:
                raise FailedPrecondition(f"version {version} is {scenario!r}'s active version; promote another "
                                         "version first, then retire this one")
            target.status = PromptStatus.RETIRED.value
            record = _version_record(target, scenario)
        log.info("prompt version retired", extra={"scenario": scenario, "version": version})
        return record

    # --- tuning jobs -----------------------------------------------------------------------------------------

    def create_tuning_job(
        self, scenario: str, labels_uri: str, model_version: str = "", params: Mapping[str, str] | None = None,
    ) -> TuningJobRecord:
        if not labels_uri.strip():
            raise InvalidArgument("labels_uri is empty; point it at a CSV of user_id,label[,as_of] or a snapshot .npz")
        with self.db.write() as session, session.begin():
            srow = self._scenario_row(session, scenario)
            now = utcnow()
            row = TuningJobRow(
                id=str(uuid.uuid4()), scenario_id=srow.id, state=JobState.QUEUED.value, progress=0.0,
                message="queued", labels_uri=labels_uri.strip(), model_version=model_version,
                params=dict(params or {}), prompt_version=None, metrics={}, created_at=now, updated_at=now,
            )
            session.add(row)
            session.flush()
            record = _job_record(row, scenario)
        log.info("tuning job created", extra={"scenario": scenario, "job_id": record.job_id})
        return record

    def _job_row(self, session: Session, job_id: str) -> TuningJobRow:
        row = session.get(TuningJobRow, job_id, options=[selectinload(TuningJobRow.scenario)])
        if row is None:
            raise NotFound(f"tuning job {job_id!r} does not exist; use the job_id StartTuningJob returned")
        return row

    def get_tuning_job(self, job_id: str) -> TuningJobRecord:
        with self.db.read() as session:
            row = self._job_row(session, job_id)
            return _job_record(row, row.scenario.name)

    def list_tuning_jobs(
        self, scenario: str = "", states: Sequence[JobState] = (), page_size: int = 0, page_token: str = "",
    ) -> tuple[list[TuningJobRecord], str]:
        """Jobs newest first (created_at, then id), optionally of one scenario and/or in some states."""
        if page_size < 0:
            raise InvalidArgument("page_size must be >= 0 (0 = default of 100)")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        stmt = (select(TuningJobRow).options(selectinload(TuningJobRow.scenario))
                .order_by(TuningJobRow.created_at.desc(), TuningJobRow.id.desc()))
        if scenario:
            validate_scenario_name(scenario)
            stmt = (stmt.join(ScenarioRow, TuningJobRow.scenario_id == ScenarioRow.id)
                    .where(ScenarioRow.name == scenario))
        if states:
            stmt = stmt.where(TuningJobRow.state.in_([JobState(s).value for s in states]))
        if page_token:
            created, _, last_id = _decode_token(page_token).partition("|")
            try:
                after = datetime.fromisoformat(created)
            except ValueError:
                raise InvalidArgument("page_token is not valid; pass next_page_token from the previous response") \
                    from None
            stmt = stmt.where((TuningJobRow.created_at < after)
                              | ((TuningJobRow.created_at == after) & (TuningJobRow.id < last_id)))
        with self.db.read() as session:
            rows = list(session.scalars(stmt.limit(size + 1)))
            page = [_job_record(r, r.scenario.name) for r in rows[:size]]
            last = rows[size - 1] if len(rows) > size else None
            next_token = _encode_token(f"{last.created_at.isoformat()}|{last.id}") if last is not None else ""
        return page, next_token

    def count_tuning_jobs(self) -> dict[JobState, int]:
        """Jobs per state (every state present, zeros included): the worker's `jobs by state` gauge."""
        with self.db.read() as session:
            counted = dict(session.execute(select(TuningJobRow.state, func.count()).group_by(TuningJobRow.state)).all())
        return {state: int(counted.get(state.value, 0)) for state in JobState}

    def cancel_tuning_job(self, job_id: str, reason: str = "") -> TuningJobRecord:
        """QUEUED/RUNNING -> CANCELLED. Idempotent for a cancelled job; a finished one cannot be cancelled."""
        with self.db.write() as session, session.begin():
            row = self._job_row(session, job_id)
            current = JobState(row.state)
            if current in (JobState.SUCCEEDED, JobState.FAILED):
                raise FailedPrecondition(f"tuning job {job_id} already {current.value}; nothing to cancel"
                                         + (f" (its prompt version {row.prompt_version} can be retired instead)"
                                            if row.prompt_version else ""))
            if current is not JobState.CANCELLED:
                row.state = JobState.CANCELLED.value
                row.message = f"cancelled{': ' + reason.strip() if reason.strip() else ''} (was {current.value})"
                row.updated_at = utcnow()
            record = _job_record(row, row.scenario.name)
        log.info("tuning job cancelled", extra={"job_id": job_id, "was": current.value})
        return record

    def update_tuning_job(
        self, job_id: str, *, state: JobState | None = None, progress: float | None = None,
        message: str | None = None, prompt_version: int | None = None, metrics: Mapping[str, float] | None = None,
    ) -> TuningJobRecord:
        """Record worker progress. A finished (SUCCEEDED/FAILED) job cannot change state again."""
        if progress is not None and not 0.0 <= progress <= 1.0:
            raise InvalidArgument(f"progress must be within [0, 1], got {progress}")
        with self.db.write() as session, session.begin():
            row = self._job_row(session, job_id)
            current = JobState(row.state)
            if current.terminal and state is not None and state is not current:
                raise FailedPrecondition(f"tuning job {job_id} already {current.value}; start a new job instead")
            if state is not None:
                row.state = state.value
            if progress is not None:
                row.progress = progress
            if message is not None:
                row.message = message
            if prompt_version is not None:
                row.prompt_version = prompt_version
            if metrics is not None:
                row.metrics = {k: float(v) for k, v in metrics.items()}
            row.updated_at = utcnow()
            record = _job_record(row, row.scenario.name)
        log.info("tuning job updated", extra={"job_id": job_id, "state": record.state.value,
                                              "progress": record.progress})
        return record

    def complete_tuning_job(
        self, job_id: str, *, artifact_uri: str, sha256: str, metrics: Mapping[str, float],
        model_version: str = "",
    ) -> PromptVersionRecord:
        """Add the job's TUNED version (READY) and mark the job SUCCEEDED atomically; idempotent per job."""
        with self.db.write() as session, session.begin():
            job = self._job_row(session, job_id)
            scenario = job.scenario.name
            existing = session.scalars(select(PromptVersionRow).where(PromptVersionRow.job_id == job_id)).first()
            if existing is not None:
                return _version_record(existing, scenario)
            if job.state in (JobState.FAILED.value, JobState.CANCELLED.value):
                raise FailedPrecondition(f"tuning job {job_id} already {job.state}; start a new job instead")
            srow = self._scenario_row(session, scenario, lock=True)
            row = self._add_version(
                session, srow, kind=PromptKind.TUNED, status=PromptStatus.READY, artifact_uri=artifact_uri,
                sha256=sha256, metrics=metrics, model_version=model_version or job.model_version, job_id=job_id,
            )
            job.state, job.progress, job.prompt_version = JobState.SUCCEEDED.value, 1.0, row.version
            job.metrics = {k: float(v) for k, v in metrics.items()}
            job.message = _job_done_message(row.version, metrics)
            job.updated_at = utcnow()
            record = _version_record(row, scenario)
        log.info("tuning job completed", extra={"job_id": job_id, "scenario": scenario, "version": record.version})
        return record


def _job_done_message(version: int, metrics: dict[str, float]) -> str:
    """What a finished tuning job says: the version, whether it kept the query, and how sure its held-out gain is."""
    if metrics.get("kept_zero_shot") == 1.0:
        return (f"prompt version {version} ready: no tuned prompt beat the query alone on the held-out users, so it "
                "keeps the query (an empty prompt) and serves the zero-shot embedding")
    msg = f"prompt version {version} ready; promote it or route traffic to it"
    if "val_gain_low" in metrics:  # on the verdict users, who made none of the tuning's choices (docs/tuning.md)
        n = int(metrics.get("n_verdict", metrics.get("n_val", 0)))
        msg += (f" (held-out AUC gain over the query {metrics['val_gain']:+.3f}, 95% {metrics['val_gain_low']:+.3f} to "
                f"{metrics['val_gain_high']:+.3f} on {n} users")
        msg += ")" if metrics["val_gain_low"] > 0 else ": not resolved at this size; an A/B split tells more)"
    return msg
