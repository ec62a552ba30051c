"""Celery on the stack's real Redis: a real worker subprocess, results, update_state progress, late acks."""
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


@pytest.fixture(scope="module")
def celery_setup(stack: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    sys.path.insert(0, str(HERE))
    from stack_celery_tasks import make_app

    redis_url = stack.redis_url.rsplit("/", 1)[0] + "/3"  # own db: other suites use db 0
    queue = f"stack-test-{uuid.uuid4().hex[:8]}"
    log_path = tmp_path_factory.mktemp("celery") / "worker.log"
    env = {**os.environ, "STACK_TEST_REDIS_URL": redis_url, "STACK_TEST_QUEUE": queue}
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "stack_celery_tasks", "worker", "--pool=solo", "--loglevel=INFO",
             "-n", f"{queue}@%h", "--without-gossip", "--without-mingle", "-Q", queue],
            cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    app = make_app(redis_url, queue)
    try:
        yield app, redis_url, worker, log_path
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        sys.path.remove(str(HERE))


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
