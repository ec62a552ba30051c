"""Repository logic against a real SQLite file database migrated by Alembic."""
from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.registry.db import Database
from services.registry.domain import JobState, PromptKind, PromptStatus
from services.registry.models import Base
from services.registry.repository import Repository
from tests.concurrency import race_register

SHA = "ab" * 32


@pytest.fixture()
def repo(tmp_path: Path) -> Repository:
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    db.migrate()
    yield Repository(db)
    db.dispose()


def test_migrations_match_models(repo: Repository) -> None:
    with repo.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations differ; add a migration: {diff}"


def test_register_serves_zero_shot_at_once(repo: Repository) -> None:
    s = repo.register_scenario("promo", "  Is this user sensitive to big-sale promotions?  ", "desc")
    assert s.name == "promo" and s.query_text == "Is this user sensitive to big-sale promotions?"
    assert s.active_version == 1 and len(s.versions) == 1
    v = s.versions[0]
    assert (v.version, v.kind, v.status, v.model_version) == (1, PromptKind.ZERO_SHOT, PromptStatus.ACTIVE, "")
    assert s.created_at.tzinfo is not None
    assert repo.get_scenario("promo") == s


@pytest.mark.parametrize(("name", "query"), [("Bad Name", "q"), ("ok", "   "), ("ok", "x" * 5000)])
def test_register_rejects_bad_input(repo: Repository, name: str, query: str) -> None:
    with pytest.raises(InvalidArgument):
        repo.register_scenario(name, query)


def test_duplicate_and_unknown(repo: Repository) -> None:
    repo.register_scenario("promo", "q")
    with pytest.raises(AlreadyExists, match="already exists"):
        repo.register_scenario("promo", "other")
    with pytest.raises(NotFound, match="not registered"):
        repo.get_scenario("nope")


def test_concurrent_registration_creates_exactly_one(repo: Repository) -> None:
    assert race_register(repo.register_scenario, "race", n=12, join_s=30) == ["created"] + ["exists"] * 11
    page, _ = repo.list_scenarios()
    assert [s.name for s in page] == ["race"] and len(page[0].versions) == 1


def test_pagination(repo: Repository) -> None:
    names = [f"s{i:02d}" for i in range(7)]
    for name in reversed(names):
        repo.register_scenario(name, "q")
    seen, token = [], ""
    while True:
        page, token = repo.list_scenarios(page_size=3, page_token=token)
        seen.extend(s.name for s in page)
        if not token:
            break
    assert seen == names
    with pytest.raises(InvalidArgument, match="page_token"):
        repo.list_scenarios(page_token="%%%")


def test_add_version_and_promote(repo: Repository) -> None:
    repo.register_scenario("promo", "q")
    v2 = repo.add_prompt_version("promo", artifact_uri="file:///a.safetensors", sha256=SHA,
                                 metrics={"auc": 0.71, "ks": 0.3}, model_version="m1")
    assert (v2.version, v2.kind, v2.status) == (2, PromptKind.TUNED, PromptStatus.READY)
    assert v2.metrics == {"auc": 0.71, "ks": 0.3}
    promoted = repo.promote("promo", 2)
    assert promoted.status is PromptStatus.ACTIVE
    s = repo.get_scenario("promo")
    assert s.active_version == 2
    assert {v.version: v.status for v in s.versions} == {1: PromptStatus.READY, 2: PromptStatus.ACTIVE}
    assert repo.promote("promo", 2).status is PromptStatus.ACTIVE  # idempotent
    repo.promote("promo", 1)  # back to zero-shot
    assert repo.get_scenario("promo").active_version == 1
    retired = repo.add_prompt_version("promo", artifact_uri="file:///b", sha256=SHA, status=PromptStatus.RETIRED)
    with pytest.raises(FailedPrecondition, match="RETIRED"):
        repo.promote("promo", retired.version)
    with pytest.raises(NotFound, match="versions: 1, 2, 3"):
        repo.promote("promo", 9)


def test_add_version_validates_artifact(repo: Repository) -> None:
    repo.register_scenario("promo", "q")
    with pytest.raises(InvalidArgument, match="artifact_uri"):
        repo.add_prompt_version("promo", sha256=SHA)
    with pytest.raises(InvalidArgument, match="sha256"):
        repo.add_prompt_version("promo", artifact_uri="file:///a", sha256="xyz")
    with pytest.raises(InvalidArgument, match="promote"):
        repo.add_prompt_version("promo", artifact_uri="file:///a", sha256=SHA, status=PromptStatus.ACTIVE)
    with pytest.raises(NotFound):
        repo.add_prompt_version("ghost", artifact_uri="file:///a", sha256=SHA)


def test_tuning_job_lifecycle(repo: Repository) -> None:
    repo.register_scenario("promo", "q")
    job = repo.create_tuning_job("promo", "file:///labels.csv", "m1", {"steps": "100"})
    assert job.state is JobState.QUEUED and job.params == {"steps": "100"} and job.prompt_version is None
    running = repo.update_tuning_job(job.job_id, state=JobState.RUNNING, progress=0.5, message="step 50/100")
    assert (running.state, running.progress, running.message) == (JobState.RUNNING, 0.5, "step 50/100")
    assert running.updated_at >= job.updated_at
    with pytest.raises(InvalidArgument):
        repo.update_tuning_job(job.job_id, progress=1.5)
    v = repo.complete_tuning_job(job.job_id, artifact_uri="file:///p.safetensors", sha256=SHA, metrics={"auc": 0.8})
    assert (v.version, v.status, v.model_version) == (2, PromptStatus.READY, "m1")
    again = repo.complete_tuning_job(job.job_id, artifact_uri="file:///p.safetensors", sha256=SHA,
                                     metrics={"auc": 0.8})
    assert again.version == 2 and len(repo.list_prompt_versions("promo")) == 2  # retried task: no duplicate
    done = repo.get_tuning_job(job.job_id)
    assert (done.state, done.progress, done.prompt_version, done.metrics) == (JobState.SUCCEEDED, 1.0, 2,
                                                                               {"auc": 0.8})
    with pytest.raises(FailedPrecondition, match="already SUCCEEDED"):
        repo.update_tuning_job(job.job_id, state=JobState.FAILED)
    with pytest.raises(NotFound):
        repo.get_tuning_job("no-such-job")
    with pytest.raises(InvalidArgument, match="labels_uri"):
        repo.create_tuning_job("promo", " ")


def test_retire(repo: Repository) -> None:
    repo.register_scenario("promo", "q")
    repo.add_prompt_version("promo", artifact_uri="file:///a", sha256=SHA)
    with pytest.raises(FailedPrecondition, match="promote another"):
        repo.retire("promo", 1)
    assert repo.retire("promo", 2).status is PromptStatus.RETIRED
    with pytest.raises(FailedPrecondition, match="RETIRED"):
        repo.promote("promo", 2)
    with pytest.raises(NotFound):
        repo.retire("promo", 7)


def test_cancel_list_and_count_tuning_jobs(repo: Repository) -> None:
    repo.register_scenario("promo", "q")
    repo.register_scenario("churn", "q2")
    queued = repo.create_tuning_job("promo", "file:///a.csv")
    running = repo.create_tuning_job("promo", "file:///b.csv")
    repo.update_tuning_job(running.job_id, state=JobState.RUNNING, progress=0.4)
    other = repo.create_tuning_job("churn", "file:///c.csv")
    done = repo.create_tuning_job("promo", "file:///d.csv")
    repo.complete_tuning_job(done.job_id, artifact_uri="file:///p", sha256=SHA, metrics={"auc": 0.7})

    c1 = repo.cancel_tuning_job(queued.job_id)
    c2 = repo.cancel_tuning_job(running.job_id, reason="wrong labels")
    assert c1.state is JobState.CANCELLED and c1.message == "cancelled (was QUEUED)"
    assert c2.message == "cancelled: wrong labels (was RUNNING)" and c2.state.terminal
    assert repo.cancel_tuning_job(running.job_id).message == c2.message  # idempotent
    with pytest.raises(FailedPrecondition, match="already SUCCEEDED; nothing to cancel"):
        repo.cancel_tuning_job(done.job_id)
    # A cancelled job cannot be completed or restarted by a late worker.
    with pytest.raises(FailedPrecondition, match="already CANCELLED"):
        repo.complete_tuning_job(running.job_id, artifact_uri="file:///p", sha256=SHA, metrics={})
    with pytest.raises(FailedPrecondition):
        repo.update_tuning_job(running.job_id, state=JobState.RUNNING)

    everything, token = repo.list_tuning_jobs()
    assert [j.job_id for j in everything] == [done.job_id, other.job_id, running.job_id, queued.job_id]
    assert token == ""
    page, token = repo.list_tuning_jobs("promo", page_size=2)
    assert [j.job_id for j in page] == [done.job_id, running.job_id] and token
    rest, token = repo.list_tuning_jobs("promo", page_size=2, page_token=token)
    assert [j.job_id for j in rest] == [queued.job_id] and token == ""
    cancelled, _ = repo.list_tuning_jobs(states=[JobState.CANCELLED])
    assert {j.job_id for j in cancelled} == {queued.job_id, running.job_id}
    with pytest.raises(InvalidArgument):
        repo.list_tuning_jobs(page_token="%%%")
    assert repo.count_tuning_jobs() == {JobState.QUEUED: 1, JobState.RUNNING: 0, JobState.SUCCEEDED: 1,
                                        JobState.FAILED: 0, JobState.CANCELLED: 2}
