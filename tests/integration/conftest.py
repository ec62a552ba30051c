"""The real local stack, started once per test session for every integration test.

    def test_something(stack):          # session-scoped, marked tests only
        KafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
        redis.Redis.from_url(stack.redis_url)
        tritonclient.grpc.InferenceServerClient(stack.triton_grpc)   # triton_http: host:port for tritonclient.http
        stack.model_repository / "my_model"                          # Triton serves this folder (explicit mode)
        stack.feast_config                                           # feature_store.yaml, or None if not applied

Everything runs from a private state dir under pytest's tmp folder, on QANCHOR_TEST_PORT_BASE (default 29000)
so a developer's own stack on the default base keeps running. `stack_manager` is the `Stack` object itself,
for tests that need to restart or inspect components. The stack is stopped at the end of the session, and the
teardown fails loudly if a port stayed open.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.stack import Endpoints, Stack, StackError, StackSettings

DEFAULT_TEST_PORT_BASE = 29000


def integration_settings(state_dir: Path, port_base: int | None = None, **overrides) -> StackSettings:
    """Stack settings for tests: own state dir, own port base; Kafka JARs from the shared cache."""
    base = port_base if port_base is not None else int(os.environ.get("QANCHOR_TEST_PORT_BASE",
                                                                      DEFAULT_TEST_PORT_BASE))
    return StackSettings(state_dir=state_dir, port_base=base, **overrides)


@pytest.fixture(scope="session")
def stack_manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = integration_settings(tmp_path_factory.mktemp("stack") / "state")
    manager = Stack(settings)
    try:
        manager.up()
    except Exception:
        try:
            manager.down()  # a half-started stack must not outlive the session
        except StackError as exc:  # e.g. the ports belong to someone else: the up error says it all
            logging.getLogger(__name__).warning("cleanup after failed up: %s", exc)
        raise
    yield manager
    manager.down()


@pytest.fixture(scope="session")
def stack(stack_manager: Stack) -> Endpoints:
    """Endpoints of the running session stack: kafka_bootstrap, redis_url, triton_grpc, triton_http, ..."""
    return stack_manager.endpoints()


def export_tiny_qanchor(model_python: Path, repo: Path, version: str, *extra: str) -> Path:
    """`python -m training.export --preset tiny` in the model env (the interpreter Triton runs) -> the version
    folder."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    out = subprocess.run([str(model_python), "-m", "training.export", "--preset", "tiny", "--out", str(repo),
                          "--model-version", version, "--only", "--torch-threads", "1", *extra],
                         capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-3000:]
    return Path(out.stdout.strip().splitlines()[-1])


def load_model_and_wait(client, name: str, timeout_s: float = 120.0) -> None:
    """Explicit model control: load `name` into Triton and wait until it is ready."""
    import time

    client.load_model(name)
    deadline = time.monotonic() + timeout_s
    while not client.is_model_ready(name):
        assert time.monotonic() < deadline, f"{name} did not become ready; see the triton log"
        time.sleep(0.5)


@pytest.fixture(scope="session")
def grpcurl() -> str:
    """Path of a grpcurl binary: QANCHOR_GRPCURL, else built once from the Go module proxy (ensure_grpcurl.sh)."""
    import shutil
    import subprocess

    explicit = os.environ.get("QANCHOR_GRPCURL")
    if explicit:
        return explicit
    if shutil.which("go") is None and not list((Path.home() / ".cache" / "qanchor" / "bin").glob("grpcurl-*")):
        pytest.skip("no grpcurl and no Go to build it: install Go or set QANCHOR_GRPCURL")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(["bash", str(root / "scripts" / "ensure_grpcurl.sh")], capture_output=True,
                         text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def grpcurl_call(grpcurl: str, target: str, method: str, body: dict, token: str) -> dict:
    """grpcurl with no -max-time: the call carries no deadline. -> the response as JSON (proto field names)."""
    import json
    import subprocess

    proc = subprocess.run([grpcurl, "-plaintext", "-H", f"authorization: Bearer {token}", "-d", json.dumps(body),
                           target, method], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{method}: {proc.stderr.strip()}"
    return json.loads(proc.stdout)
