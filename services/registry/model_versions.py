"""Registry of serving model versions: register -> publish -> promote (docs/models.md).

    models = ModelVersions(db)
    models.register("tiny-v2", artifact_uri="/exports/qanchor/1/models/tiny-v2", sha256=..., metrics={...})
    models.publish("tiny-v2", published_uri="/srv/model_repository")   # after the artifact was copied there
    models.promote("tiny-v2")                                            # the gateway's default model version

Transport-free like services.registry.repository: raises services.common.errors exceptions, returns frozen
records. The copy into the model repository is not done here (the registry does not mount it): `qanchor model
publish` copies and verifies (training.export.publish), then records it with `publish`.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.registry.db import Database
from services.registry.domain import ModelState, ModelVersionRecord
from services.registry.models import ModelVersionRow, utcnow
from training.export.versions import VersionError, valid_version

log = logging.getLogger(__name__)

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
SERVABLE = (ModelState.PUBLISHED, ModelState.PROMOTED)


def _aware(ts: datetime | None) -> datetime | None:
    return ts if ts is None or ts.tzinfo else ts.replace(tzinfo=UTC)  # SQLite drops the zone


def _record(row: ModelVersionRow) -> ModelVersionRecord:
    return ModelVersionRecord(
        model_version=row.model_version, state=ModelState(row.state), artifact_uri=row.artifact_uri,
        sha256=row.sha256, metrics={k: float(v) for k, v in (row.metrics or {}).items()}, source_id=row.source_id,
        published_uri=row.published_uri, created_by=row.created_by, created_at=_aware(row.created_at),
        published_at=_aware(row.published_at), promoted_at=_aware(row.promoted_at))


def check_version(model_version: str) -> str:
    try:
        return valid_version(model_version)
    except VersionError as exc:
        raise InvalidArgument(str(exc)) from None


class ModelVersions:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _row(self, session: Session, model_version: str) -> ModelVersionRow:
        row = session.scalars(select(ModelVersionRow).where(ModelVersionRow.model_version == model_version)
                              ).one_or_none()
        if row is None:
            raise NotFound(f"model version {model_version!r} is not registered; register it with qanchor model "
                           "register ARTIFACT_DIR (or list them with qanchor model list)")
        return row

    def register(self, model_version: str, *, artifact_uri: str, sha256: str,
                 metrics: Mapping[str, float] | None = None, source_id: str = "",
                 created_by: str = "") -> ModelVersionRecord:
        """REGISTERED; idempotent for the same artifact (sha256), ALREADY_EXISTS for another one."""
        check_version(model_version)
        if not artifact_uri:
            raise InvalidArgument("artifact_uri is empty; pass the exported model version folder")
        if not _SHA256_RE.fullmatch(sha256 or ""):
            raise InvalidArgument("sha256 must be the 64-character lowercase hex digest of the artifact's "
                                  "manifest.json")
        row = ModelVersionRow(model_version=model_version, state=ModelState.REGISTERED.value,
                              artifact_uri=artifact_uri, sha256=sha256,
                              metrics={k: float(v) for k, v in (metrics or {}).items()}, source_id=source_id,
                              published_uri="", created_by=created_by, created_at=utcnow())
        try:
            with self.db.write() as session, session.begin():
                session.add(row)
        except IntegrityError:
            # The unique constraint decides races; the same artifact registered twice is not an error.
            existing = self.get(model_version)
            if existing.sha256 == sha256:
                return existing
            raise AlreadyExists(f"model version {model_version!r} is registered with another artifact (sha256 "
                                f"{existing.sha256[:12]}...); versions are immutable: register this one under a "
                                "new version") from None
        log.info("model version registered", extra={"model_version": model_version, "sha256": sha256[:12]})
        return _record(row)

    def get(self, model_version: str) -> ModelVersionRecord:
        check_version(model_version)
        with self.db.read() as session:
            return _record(self._row(session, model_version))

    def list(self, states: Sequence[ModelState] = ()) -> list[ModelVersionRecord]:
        """Newest first; `states` empty = every state."""
        stmt = select(ModelVersionRow).order_by(ModelVersionRow.created_at.desc(), ModelVersionRow.id.desc())
        if states:
            stmt = stmt.where(ModelVersionRow.state.in_([s.value for s in states]))
        with self.db.read() as session:
            return [_record(r) for r in session.scalars(stmt)]

    def publish(self, model_version: str, published_uri: str) -> ModelVersionRecord:
        """REGISTERED (or RETIRED: published again) -> PUBLISHED; idempotent for a published or promoted version."""
        check_version(model_version)
        if not published_uri:
            raise InvalidArgument("published_uri is empty; pass the model repository the artifact was copied to")
        with self.db.write() as session, session.begin():
            row = self._row(session, model_version)
            if row.state in (ModelState.REGISTERED.value, ModelState.RETIRED.value):
                row.state, row.published_uri, row.published_at = ModelState.PUBLISHED.value, published_uri, utcnow()
            record = _record(row)
        log.info("model version published", extra={"model_version": model_version, "published_uri": published_uri})
        return record

    def promote(self, model_version: str) -> ModelVersionRecord:
        """PUBLISHED -> PROMOTED; the previously promoted version goes back to PUBLISHED."""
        check_version(model_version)
        with self.db.write() as session, session.begin():
            # Promotions take turns: every row locked (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises), so
            # two concurrent promotions cannot both see "nothing promoted" and leave two PROMOTED versions. In id
            # order: a plain scan locks in heap order, which a committed promotion changes (its updated rows move),
            # so two waiting promotions could lock in different orders and deadlock each other.
            session.execute(select(ModelVersionRow.id).order_by(ModelVersionRow.id).with_for_update()).all()
            row = self._row(session, model_version)
            if row.state == ModelState.PROMOTED.value:
                return _record(row)
            if row.state != ModelState.PUBLISHED.value:
                raise FailedPrecondition(f"model version {model_version!r} is {row.state}: publish it first "
                                         f"(qanchor model publish {model_version}), then promote it")
            session.execute(update(ModelVersionRow).where(ModelVersionRow.state == ModelState.PROMOTED.value)
                            .values(state=ModelState.PUBLISHED.value))
            row.state, row.promoted_at = ModelState.PROMOTED.value, utcnow()
            session.flush()
            record = _record(row)
        log.info("model version promoted", extra={"model_version": model_version})
        return record

    def retire(self, model_version: str) -> ModelVersionRecord:
        """REGISTERED / PUBLISHED -> RETIRED (idempotent); the promoted version cannot retire: promote another."""
        check_version(model_version)
        with self.db.write() as session, session.begin():
            row = self._row(session, model_version)
            if row.state == ModelState.PROMOTED.value:
                raise FailedPrecondition(f"model version {model_version!r} is the promoted (default) version: promote "
                                         "another one first (qanchor model promote OTHER), then retire it")
            row.state = ModelState.RETIRED.value
            record = _record(row)
        log.info("model version retired", extra={"model_version": model_version})
        return record

    def promoted(self) -> ModelVersionRecord | None:
        found = self.list([ModelState.PROMOTED])
        return found[0] if found else None
