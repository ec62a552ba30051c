"""Servicer + client over a real in-process gRPC server on a free port, SQLite file database."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.errors import (AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied,
                                    Unauthenticated, Unavailable)
from services.common.grpc_server import create_server
from services.common.proto.qanchor.v1 import registry_pb2 as pb
from services.registry.client import RegistryClient
from services.registry.domain import JobState
from services.registry.enqueue import DisabledJobQueue
from services.registry.server import build_app
from services.registry.serving_view import ZERO_SHOT
from services.registry.servicer import AUTH_POLICY
from services.registry.settings import RegistrySettings

SHA = "cd" * 32


class _RecordingQueue:
    """Tiny stand-in for the Celery publisher (the real broker path is covered by the integration test)."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[str] = []
        self.fail = fail

    def enqueue(self, job_id: str) -> None:
        if self.fail:
            raise Unavailable("broker down")
        self.sent.append(job_id)


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[tuple[object, int]]:
    settings = RegistrySettings(grpc_port=0, token="tok", admin_token="adm",
                                database_url=f"sqlite:///{tmp_path / 'r.db'}")
    app = build_app(settings)
    server, port = create_server(settings, app.grpc_servicer(), service="registry", auth_policy=AUTH_POLICY)
    server.start()
    yield app, port
    server.stop(0).wait()
    app.db.dispose()


def test_register_get_list_promote(stack: tuple[object, int]) -> None:
    app, port = stack
    with RegistryClient(f"127.0.0.1:{port}", token="adm") as admin, \
            RegistryClient(f"127.0.0.1:{port}", token="tok") as reader:
        s = admin.register_scenario("promo", "Is this user sensitive to big-sale promotions?", "d")
        assert (s.name, s.active_version, s.versions[0].kind, s.versions[0].status) == (
            "promo", 1, pb.PROMPT_KIND_ZERO_SHOT, pb.PROMPT_STATUS_ACTIVE)
        assert s.created_at.seconds > 0
        assert reader.get_scenario("promo") == s
        admin.register_scenario("churn", "Will this user stop buying within 90 days?")
        assert [x.name for x in reader.list_scenarios(page_size=1)] == ["churn", "promo"]  # follows page tokens
        app.repo.add_prompt_version("promo", artifact_uri="file:///p.safetensors", sha256=SHA,
                                    metrics={"auc": 0.75}, model_version="m1")
        versions = reader.list_prompt_versions("promo")
        assert [(v.version, v.status) for v in versions] == [(1, pb.PROMPT_STATUS_ACTIVE), (2, pb.PROMPT_STATUS_READY)]
        assert versions[1].metrics["auc"] == pytest.approx(0.75)
        assert admin.promote("promo", 2).status == pb.PROMPT_STATUS_ACTIVE
        assert reader.get_scenario("promo").active_version == 2

        with pytest.raises(PermissionDenied):
            reader.promote("promo", 1)
        with pytest.raises(AlreadyExists):
            admin.register_scenario("promo", "again")
        with pytest.raises(InvalidArgument, match="scenario name"):
            admin.register_scenario("Bad Name!", "q")
        with pytest.raises(InvalidArgument):
            admin.promote("promo", 0)
        with pytest.raises(NotFound):
            reader.get_scenario("ghost")
    with RegistryClient(f"127.0.0.1:{port}") as anonymous, pytest.raises(Unauthenticated):
        anonymous.get_scenario("promo")


def test_start_tuning_job(stack: tuple[object, int]) -> None:
    app, port = stack
    with RegistryClient(f"127.0.0.1:{port}", token="adm") as admin:
        admin.register_scenario("promo", "q")
        with pytest.raises(FailedPrecondition, match="REGISTRY_CELERY_BROKER"):
            admin.start_tuning_job("promo", "file:///labels.csv")
        assert isinstance(app.servicer.jobs, DisabledJobQueue)

        app.servicer.jobs = queue = _RecordingQueue()
        job = admin.start_tuning_job("promo", "file:///labels.csv", "m1", {"steps": "10"})
        assert job.state == pb.JOB_STATE_QUEUED and queue.sent == [job.job_id]
        app.repo.update_tuning_job(job.job_id, state=JobState.RUNNING, progress=0.4)
        got = admin.get_tuning_job(job.job_id)
        assert (got.state, got.progress) == (pb.JOB_STATE_RUNNING, pytest.approx(0.4))
        with pytest.raises(NotFound):
            admin.start_tuning_job("ghost", "file:///labels.csv")

        app.servicer.jobs = _RecordingQueue(fail=True)
        with pytest.raises(Unavailable):
            admin.start_tuning_job("promo", "file:///labels.csv")
        failed = [j for j in _jobs(app) if j.state is JobState.FAILED]
        assert len(failed) == 1 and "not queued" in failed[0].message  # no orphan QUEUED row


def _jobs(app: object) -> list:
    from sqlalchemy import select

    from services.registry.models import TuningJobRow
    with app.db.read() as session:  # type: ignore[attr-defined]
        ids = list(session.scalars(select(TuningJobRow.id)))
    return [app.repo.get_tuning_job(i) for i in ids]  # type: ignore[attr-defined]


def test_serving_info_cache(stack: tuple[object, int]) -> None:
    app, port = stack
    now = [1000.0]
    with RegistryClient(f"127.0.0.1:{port}", token="adm", cache_ttl_s=5, max_stale_s=60,
                        clock=lambda: now[0]) as client:
        client.register_scenario("promo", "Is this user sensitive to promotions?")
        info = client.serving_info("promo")
        assert (info.query_text, info.active_version, sorted(info.versions)) == (
            "Is this user sensitive to promotions?", 1, [1])
        assert info.active.kind == ZERO_SHOT
        app.repo.add_prompt_version("promo", artifact_uri="file:///p", sha256=SHA)
        assert sorted(client.serving_info("promo").versions) == [1]  # cached
        now[0] += 6
        assert sorted(client.serving_info("promo").versions) == [1, 2]  # refreshed after the TTL
        with pytest.raises(NotFound):
            client.serving_info("ghost")


def test_serving_info_serves_stale_while_registry_is_down(tmp_path: Path) -> None:
    settings = RegistrySettings(grpc_port=0, admin_token="adm", database_url=f"sqlite:///{tmp_path / 'r.db'}")
    app = build_app(settings)
    server, port = create_server(settings, app.grpc_servicer(), service="registry", auth_policy=AUTH_POLICY)
    server.start()
    now = [0.0]
    client = RegistryClient(f"127.0.0.1:{port}", token="adm", timeout_s=1, cache_ttl_s=5, max_stale_s=60,
                            clock=lambda: now[0])
    try:
        client.register_scenario("promo", "q")
        first = client.serving_info("promo")
        server.stop(0).wait()
        now[0] += 30
        assert client.serving_info("promo") is first  # stale but within max_stale_s
        now[0] += 60
        with pytest.raises(Unavailable):
            client.serving_info("promo")
    finally:
        client.close()
        server.stop(0)
        app.db.dispose()


def test_readiness_pings_the_database(tmp_path: Path) -> None:
    settings = RegistrySettings(grpc_port=0, admin_token="adm", database_url=f"sqlite:///{tmp_path / 'r.db'}")
    app = build_app(settings)
    assert app.db.ping()
    (tmp_path / "r.db").unlink()
    (tmp_path / "r.db").mkdir()  # the file is gone and cannot be re-created: the database does not answer
    app.db.dispose()
    assert not app.db.ping()


def test_not_found_is_cached_and_a_registration_clears_it(stack: tuple[object, int]) -> None:
    _, port = stack
    now = [0.0]
    client = RegistryClient(f"127.0.0.1:{port}", token="adm", negative_ttl_s=5, clock=lambda: now[0])
    calls: list[str] = []
    real = client.get_scenario
    client.get_scenario = lambda name, timeout_s=None: (calls.append(name), real(name, timeout_s))[1]  # type: ignore
    with client:
        for _ in range(256):
            with pytest.raises(NotFound):
                client.serving_info("promo")
        assert calls == ["promo"]  # one registry call for 256 lookups of an unknown name
        now[0] += 6
        with pytest.raises(NotFound):
            client.serving_info("promo")
        assert calls == ["promo", "promo"]  # asked again after the negative TTL
        client.register_scenario("promo", "Is this user sensitive to promotions?")
        assert client.serving_info("promo").query_text.startswith("Is this user")  # at once, not after the TTL


def test_list_and_cancel_tuning_jobs(stack: tuple[object, int]) -> None:
    app, port = stack
    app.servicer.jobs = _RecordingQueue()
    with RegistryClient(f"127.0.0.1:{port}", token="adm") as admin, \
            RegistryClient(f"127.0.0.1:{port}", token="tok") as reader:
        admin.register_scenario("promo", "q")
        first = admin.start_tuning_job("promo", "file:///a.csv", params={"steps": "3"})
        second = admin.start_tuning_job("promo", "file:///b.csv", model_version="m1")
        listed = reader.list_tuning_jobs("promo")
        assert [j.job_id for j in listed] == [second.job_id, first.job_id]
        assert (listed[0].labels_uri, listed[0].model_version) == ("file:///b.csv", "m1")
        with pytest.raises(PermissionDenied):
            reader.cancel_tuning_job(first.job_id)  # cancelling is an admin RPC
        cancelled = admin.cancel_tuning_job(first.job_id, reason="oops")
        assert cancelled.state == pb.JOB_STATE_CANCELLED and "oops" in cancelled.message
        assert [j.job_id for j in reader.list_tuning_jobs(states=[pb.JOB_STATE_CANCELLED])] == [first.job_id]
        assert [j.job_id for j in reader.list_tuning_jobs(limit=1)] == [second.job_id]
        with pytest.raises(InvalidArgument):
            reader.list_tuning_jobs(states=[42])
        with pytest.raises(InvalidArgument):
            admin.cancel_tuning_job("")
        with pytest.raises(NotFound):
            admin.cancel_tuning_job("no-such-job")
