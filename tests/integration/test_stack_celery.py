"""Celery on the stack's real Redis: real worker subprocesses, results, update_state progress, late acks, and
redelivery of the task of a worker that died mid-task."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.stack import Endpoints

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent


def start_worker(queue: str, redis_url: str, log_path: Path, **env_extra: str) -> subprocess.Popen:
    env = {**os.environ, "STACK_TEST_REDIS_URL": redis_url, "STACK_TEST_QUEUE": queue, **env_extra}
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "stack_celery_tasks", "worker", "--pool=solo", "--loglevel=INFO",
             "-n", f"{queue}-{uuid.uuid4().hex[:4]}@%h", "--without-gossip", "--without-mingle", "-Q", queue],
            cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_worker(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


@pytest.fixture(scope="module")
def tasks_module() -> Iterator[None]:
    sys.path.insert(0, str(HERE))
    yield
    sys.path.remove(str(HERE))


@pytest.fixture(scope="module")
def celery_setup(stack: Endpoints, tasks_module, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    from stack_celery_tasks import make_app

    redis_url = stack.redis_url.rsplit("/", 1)[0] + "/3"  # own db: other suites use db 0
    queue = f"stack-test-{uuid.uuid4().hex[:8]}"
    log_path = tmp_path_factory.mktemp("celery") / "worker.log"
    worker = start_worker(queue, redis_url, log_path)
    try:
        yield make_app(redis_url, queue), redis_url, worker, log_path
    finally:
        stop_worker(worker)


def _worker_log(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-3000:]


def test_task_result_round_trip(celery_setup) -> None:
    app, _, worker, log_path = celery_setup
    values, weights = [1.5, -2.0, 4.25], [2.0, 0.5, 4.0]
    result = app.send_task("stack_test.weighted_sum", args=[values, weights])
    try:
        got = result.get(timeout=90)
    except Exception:
        pytest.fail(f"no result from the worker (alive={worker.poll() is None}); its log:\n{_worker_log(log_path)}")
    assert got == pytest.approx(1.5 * 2.0 - 2.0 * 0.5 + 4.25 * 4.0)
    assert result.state == "SUCCESS"


def test_progress_reported_and_message_acked_late(celery_setup) -> None:
    app, redis_url, _, log_path = celery_setup
    broker = redis.Redis.from_url(redis_url)
    steps = 6
    result = app.send_task("stack_test.count_up", args=[steps, 0.3])
    seen_progress: list[int] = []
    unacked_while_running: list[int] = []
    deadline = time.monotonic() + 90
    while not result.ready() and time.monotonic() < deadline:
        if result.state == "PROGRESS":
            seen_progress.append(result.info["done"])
            # kombu keeps a delivered-but-unacknowledged message in the "unacked" hash: with acks_late the
            # running task's message sits there until the task returns.
            unacked_while_running.append(broker.hlen("unacked"))
        time.sleep(0.05)
    assert result.ready(), f"task did not finish; worker log:\n{_worker_log(log_path)}"
    assert result.get(timeout=5) == {"done": steps, "total": steps}
    assert seen_progress, "never observed the PROGRESS state"
    assert seen_progress == sorted(seen_progress) and set(seen_progress) <= set(range(1, steps + 1))
    assert len(set(seen_progress)) >= 2  # several distinct updates, not one lucky read
    assert unacked_while_running and min(unacked_while_running) == 1
    deadline = time.monotonic() + 10
    while broker.hlen("unacked") and time.monotonic() < deadline:  # ack follows the result by a few ms
        time.sleep(0.05)
    assert broker.hlen("unacked") == 0


def test_task_of_a_crashed_worker_is_redelivered(stack: Endpoints, tasks_module, tmp_path: Path) -> None:
    from stack_celery_tasks import make_app

    redis_url = stack.redis_url.rsplit("/", 1)[0] + "/4"  # short visibility timeout: keep it off db 3's tasks
    queue = f"stack-crash-{uuid.uuid4().hex[:8]}"
    marker = f"stack-test:crash:{queue}"
    app = make_app(redis_url, queue, visibility_timeout_s=3)
    log_path = tmp_path / "worker.log"
    first = start_worker(queue, redis_url, log_path, STACK_TEST_VISIBILITY_S="3")
    second = None
    try:
        result = app.send_task("stack_test.crash_once", args=[marker])
        assert first.wait(timeout=90) == 17, f"worker did not die in the task; log:\n{_worker_log(log_path)}"
        # Late ack: the dead worker never acknowledged, so the message is still owed to the queue.
        assert redis.Redis.from_url(redis_url).hlen("unacked") == 1
        second = start_worker(queue, redis_url, log_path, STACK_TEST_VISIBILITY_S="3")
        try:
            got = result.get(timeout=120)
        except Exception:
            pytest.fail(f"task not redelivered; worker log:\n{_worker_log(log_path)}")
        assert got == {"attempt": 2}
    finally:
        stop_worker(first)
        if second is not None:
            stop_worker(second)
        redis.Redis.from_url(redis_url).delete(marker)
