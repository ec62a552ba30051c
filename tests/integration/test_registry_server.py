"""The real registry process (`python -m services.registry`) on a SQLite file, over gRPC, with a real Celery broker.

The broker is Kombu's server-less SQLAlchemy transport (`sqla+sqlite://`), so the tuning message that the
registry publishes is read back from the broker exactly as a Celery worker would receive it.
"""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kombu import Connection

from services.common.proto.qanchor.v1 import registry_pb2 as pb
from services.common.proto.qanchor.v1 import registry_pb2_grpc as pb_grpc
from services.common.settings import port_for, repo_root

pytestmark = [
    pytest.mark.integration,
    # Kombu's SQLAlchemy transport (the test broker) uses a loader SQLAlchemy 2.1 deprecates; not our code.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
]

ADMIN = [("authorization", "Bearer adm-secret")]
READER = [("authorization", "Bearer read-secret")]
START_TIMEOUT_S = 120  # cold imports on a loaded 2-core machine take tens of seconds


@dataclass
class Registry:
    proc: subprocess.Popen[str]
    port: int
    state_dir: Path
    broker: str
    log_path: Path

    def stub(self) -> pb_grpc.ScenarioRegistryStub:
        return pb_grpc.ScenarioRegistryStub(grpc.insecure_channel(f"127.0.0.1:{self.port}"))


def _port_base() -> int:
    base = int(os.environ.get("QANCHOR_PORT_BASE", "22000"))
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port_for("registry_grpc", base))) == 0:
            pytest.fail(f"port {port_for('registry_grpc', base)} is busy; set QANCHOR_PORT_BASE to a free base")
    return base


def _wait_serving(port: int, proc: subprocess.Popen[str], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"registry exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                req = health_pb2.HealthCheckRequest(service="qanchor.v1.ScenarioRegistry")
                if stub.Check(req, timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    pytest.fail(f"registry not SERVING after {START_TIMEOUT_S}s:\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    state = tmp_path_factory.mktemp("registry-state")
    base = _port_base()
    broker = f"sqla+sqlite:///{state / 'broker.db'}"
    env = {**os.environ, "QANCHOR_STATE_DIR": str(state), "QANCHOR_PORT_BASE": str(base),
           "REGISTRY_ADMIN_TOKEN": "adm-secret", "REGISTRY_TOKEN": "read-secret", "REGISTRY_CELERY_BROKER": broker,
           "REGISTRY_GRACE_SECONDS": "2"}
    log_path = state / "registry.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "services.registry"], cwd=repo_root(), env=env,
                                stdout=log, stderr=subprocess.STDOUT, text=True)
    reg = Registry(proc, port_for("registry_grpc", base), state, broker, log_path)
    try:
        _wait_serving(reg.port, proc, log_path)
        yield reg
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _err(fn) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value  # type: ignore[return-value]


def test_migrations_applied_at_start(registry: Registry) -> None:
    db = registry.state_dir / "registry" / "registry.db"
    with sqlite3.connect(db) as conn:
        (head,) = conn.execute("select version_num from alembic_version").fetchone()
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    assert head == "0002_model_versions" and {"scenarios", "prompt_versions", "tuning_jobs", "model_versions"} <= tables


def test_register_by_query_text_get_and_list(registry: Registry) -> None:
    stub = registry.stub()
    query = "Is this user sensitive to big-sale promotions?"
    created = stub.RegisterScenario(pb.RegisterScenarioRequest(name="promo", query_text=query), metadata=ADMIN,
                                    timeout=10)
    assert (created.active_version, len(created.versions)) == (1, 1)
    assert (created.versions[0].kind, created.versions[0].status) == (pb.PROMPT_KIND_ZERO_SHOT,
                                                                      pb.PROMPT_STATUS_ACTIVE)
    got = stub.GetScenario(pb.GetScenarioRequest(name="promo"), metadata=READER, timeout=10)
    assert got == created and got.query_text == query
    stub.RegisterScenario(pb.RegisterScenarioRequest(name="churn", query_text="Will this user churn?"),
                          metadata=ADMIN, timeout=10)
    names, token = [], ""
    while True:
        page = stub.ListScenarios(pb.ListScenariosRequest(page_size=1, page_token=token), metadata=READER,
                                  timeout=10)
        names += [s.name for s in page.scenarios]
        token = page.next_page_token
        if not token:
            break
    assert names == sorted(names) and {"promo", "churn"} <= set(names)


def test_concurrent_registration_of_one_name(registry: Registry) -> None:
    n = 16
    barrier = threading.Barrier(n)
    codes: list[grpc.StatusCode] = []
    lock = threading.Lock()

    def attempt(i: int) -> None:
        stub = registry.stub()
        barrier.wait()
        try:
            stub.RegisterScenario(pb.RegisterScenarioRequest(name="race", query_text=f"query {i}"), metadata=ADMIN,
                                  timeout=60)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert codes.count(grpc.StatusCode.OK) == 1
    assert codes.count(grpc.StatusCode.ALREADY_EXISTS) == n - 1
    race = registry.stub().GetScenario(pb.GetScenarioRequest(name="race"), metadata=READER, timeout=10)
    assert len(race.versions) == 1


def test_error_codes(registry: Registry) -> None:
    stub = registry.stub()
    bad = _err(lambda: stub.RegisterScenario(pb.RegisterScenarioRequest(name="Bad Name", query_text="q"),
                                             metadata=ADMIN, timeout=10))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "scenario name" in bad.details()
    empty = _err(lambda: stub.RegisterScenario(pb.RegisterScenarioRequest(name="okname", query_text=" "),
                                               metadata=ADMIN, timeout=10))
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _err(lambda: stub.GetScenario(pb.GetScenarioRequest(name="promo"), timeout=10)).code() == \
        grpc.StatusCode.UNAUTHENTICATED
    assert _err(lambda: stub.RegisterScenario(pb.RegisterScenarioRequest(name="x2", query_text="q"), timeout=10)
                ).code() == grpc.StatusCode.UNAUTHENTICATED
    assert _err(lambda: stub.RegisterScenario(pb.RegisterScenarioRequest(name="x2", query_text="q"),
                                              metadata=READER, timeout=10)).code() == grpc.StatusCode.PERMISSION_DENIED
    missing = _err(lambda: stub.GetScenario(pb.GetScenarioRequest(name="no-such"), metadata=READER, timeout=10))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    rid = dict(missing.trailing_metadata()).get("x-request-id")
    assert rid and len(rid) == 32


def test_start_tuning_job_publishes_to_broker(registry: Registry) -> None:
    stub = registry.stub()
    stub.RegisterScenario(pb.RegisterScenarioRequest(name="spend", query_text="Will this user spend more?"),
                          metadata=ADMIN, timeout=10)
    job = stub.StartTuningJob(pb.StartTuningJobRequest(scenario="spend", labels_uri="file:///labels.csv",
                                                       params={"steps": "50"}), metadata=ADMIN, timeout=30)
    assert job.state == pb.JOB_STATE_QUEUED and job.job_id
    with Connection(registry.broker) as conn:
        queue = conn.SimpleQueue("celery")
        msg = queue.get(timeout=30)
        try:
            assert msg.headers["task"] == "qanchor.tuning.tune_scenario"
            assert msg.payload[0] == [job.job_id]
        finally:
            msg.ack()
            queue.close()
    got = stub.GetTuningJob(pb.GetTuningJobRequest(job_id=job.job_id), metadata=READER, timeout=10)
    assert got.state == pb.JOB_STATE_QUEUED and got.scenario == "spend"


def test_sigterm_stops_gracefully_and_data_persists(registry: Registry) -> None:
    registry.proc.send_signal(signal.SIGTERM)
    assert registry.proc.wait(60) == 0
    log = registry.log_path.read_text()
    assert "signal=SIGTERM" in log and "msg=stopped" in log
    with sqlite3.connect(registry.state_dir / "registry" / "registry.db") as conn:
        names = {r[0] for r in conn.execute("select name from scenarios")}
    assert {"promo", "churn", "race", "spend"} <= names
