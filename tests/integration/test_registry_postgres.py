"""The registry's migrations and repository on a real PostgreSQL server (Debian's postgresql binaries).

Skipped when the PostgreSQL binaries or the `psycopg` driver are missing. The server is started in a temp
folder on a free port and stopped at the end.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete

from services.registry.db import Database
from services.registry.domain import JobState, ModelState, PromptStatus
from services.registry.model_versions import ModelVersions
from services.registry.models import ModelVersionRow
from services.registry.repository import Repository
from tests.concurrency import race_register, registration_outcome, run_together

pytestmark = pytest.mark.integration


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent  # /usr/local/bin may link only some of the tools
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("psycopg is not installed in this environment (needed for PostgreSQL: psycopg[binary])")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found; install Debian's postgresql")
    # Not pytest's tmp dir: that is private to the test user and the server may run as another user.
    base = Path(tempfile.mkdtemp(prefix="qanchor-pg-"))
    base.chmod(0o755)
    data = base / "data"
    # initdb refuses to run as root: run the server as the postgres system user then.
    prefix: list[str] = []
    data.mkdir()
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        os.chown(data, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def run(*cmd: str) -> None:
        proc = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120, cwd=base)
        if proc.returncode != 0:
            pytest.fail(f"{Path(cmd[0]).name} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")

    run(str(bindir / "initdb"), "-D", str(data), "-U", "qanchor", "--auth=trust", "-E", "UTF8")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l", str(data / "server.log"),
        "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start")
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "qanchor", "registry")
        yield f"postgresql+psycopg://qanchor@127.0.0.1:{port}/registry"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def repo(pg_url: str) -> Iterator[Repository]:
    db = Database(pg_url)
    db.migrate()
    db.migrate()  # idempotent
    yield Repository(db)
    db.dispose()


def test_concurrent_registration_on_postgres(repo: Repository) -> None:
    assert race_register(repo.register_scenario, "race", n=12) == ["created"] + ["exists"] * 11


def test_versions_promotion_and_jobs_on_postgres(repo: Repository) -> None:
    repo.register_scenario("promo", "Is this user sensitive to promotions?")
    job = repo.create_tuning_job("promo", "file:///labels.csv", "m1", {"steps": "5"})
    repo.update_tuning_job(job.job_id, state=JobState.RUNNING, progress=0.5)
    v = repo.complete_tuning_job(job.job_id, artifact_uri="file:///p.safetensors", sha256="ef" * 32,
                                 metrics={"auc": 0.7})
    assert v.version == 2 and repo.complete_tuning_job(
        job.job_id, artifact_uri="file:///p.safetensors", sha256="ef" * 32, metrics={"auc": 0.7}).version == 2
    repo.promote("promo", 2)
    s = repo.get_scenario("promo")
    assert s.active_version == 2
    assert {x.version: x.status for x in s.versions} == {1: PromptStatus.READY, 2: PromptStatus.ACTIVE}
    assert s.created_at.utcoffset() is not None and repo.get_tuning_job(job.job_id).metrics == {"auc": 0.7}


def test_concurrent_model_promotions_leave_one_promoted_on_postgres(repo: Repository) -> None:
    """Eight promotions at once, for 60 rounds: exactly one PROMOTED each round and none fails. Arrivals are staggered
    by up to 10 ms and each round starts from an empty table, the pattern under which promotions that locked the
    rows in heap order deadlocked each other (about one round in 20 on PostgreSQL 15)."""
    models = ModelVersions(repo.db)
    n, rounds = 8, 60
    stagger = random.Random(7)
    for r in range(rounds):
        with repo.db.write() as session, session.begin():
            session.execute(delete(ModelVersionRow))
        names = [f"r{r}-m{i}" for i in range(n)]
        for i, name in enumerate(names):
            models.register(name, artifact_uri=f"/exports/{name}", sha256=f"{i:02d}" * 32)
            models.publish(name, "/srv/model_repository")
        delays = [stagger.random() * 0.01 for _ in range(n)]

        def attempt(i: int, go: Callable[[], object]) -> None:
            go()
            time.sleep(delays[i])
            models.promote(names[i])

        run_together(n, attempt)
        states = [m.state for m in models.list()]
        assert states.count(ModelState.PROMOTED) == 1 and states.count(ModelState.PUBLISHED) == n - 1, (r, states)


def test_migrations_match_models_on_postgres(repo: Repository) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from services.registry.models import Base

    with repo.db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_fifty_concurrent_registrations_over_grpc_create_exactly_one(pg_url: str) -> None:
    """The reliability goal's size: 50 clients register one name at once through the real registry server."""
    from services.registry.client import RegistryClient
    from services.registry.server import create_registry_server
    from services.registry.settings import RegistrySettings

    settings = RegistrySettings(grpc_port=0, token="tok", admin_token="adm", database_url=pg_url, max_workers=64)
    server, port, app = create_registry_server(settings)
    server.start()
    n = 50

    def attempt(i: int, go: Callable[[], object]) -> str:
        with RegistryClient(f"127.0.0.1:{port}", token="adm", timeout_s=60) as client:  # connected before the start
            go()
            return registration_outcome(lambda: client.register_scenario("stampede", f"query {i}"))

    try:
        outcomes = sorted(run_together(n, attempt, join_s=120), key=str)
        assert outcomes == ["created"] + ["exists"] * (n - 1)
        with RegistryClient(f"127.0.0.1:{port}", token="adm") as client:
            assert [s.name for s in client.list_scenarios()].count("stampede") == 1
        print(f"registrations attempted={n} created={outcomes.count('created')}")
    finally:
        server.stop(0)
        app.db.dispose()
