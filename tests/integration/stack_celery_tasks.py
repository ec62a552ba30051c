"""Celery app for tests/integration/test_stack_celery.py; the test starts a real worker on it.

Broker and backend are the session stack's Redis, passed in STACK_TEST_REDIS_URL; each test run uses its own
queue (STACK_TEST_QUEUE) so a stray worker of another run never steals its tasks.
"""
from __future__ import annotations

import os
import time

from celery import Celery


def make_app(redis_url: str, queue: str, visibility_timeout_s: int = 3600) -> Celery:
    app = Celery("stack_test", broker=redis_url, backend=redis_url)
    app.conf.update(
        # An unacknowledged message (its worker died) is handed out again after this long; the crash test
        # lowers it from the default hour and sweeps every second.
        broker_transport_options={"visibility_timeout": visibility_timeout_s, "unacked_restore_interval": 1,
                                  "unacked_restore_throttle": 1},
        task_default_queue=queue,
        task_acks_late=True,  # job tasks: acknowledged only after they finish, so a crash re-delivers them
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        result_expires=600,
    )
    return app


app = make_app(os.environ.get("STACK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
               os.environ.get("STACK_TEST_QUEUE", "stack-test"),
               int(os.environ.get("STACK_TEST_VISIBILITY_S", "3600")))


@app.task(name="stack_test.weighted_sum", acks_late=True)
def weighted_sum(values: list[float], weights: list[float]) -> float:
    return sum(v * w for v, w in zip(values, weights, strict=True))


@app.task(name="stack_test.count_up", bind=True, acks_late=True)
def count_up(self, steps: int, delay_s: float) -> dict:
    for done in range(1, steps + 1):
        time.sleep(delay_s)
        self.update_state(state="PROGRESS", meta={"done": done, "total": steps})
    return {"done": steps, "total": steps}


@app.task(name="stack_test.crash_once", acks_late=True)
def crash_once(marker_key: str) -> dict:
    """Dies (whole worker process, as a segfault or OOM kill would) on its first delivery only."""
    import redis

    client = redis.Redis.from_url(app.conf.broker_url)
    attempt = client.incr(marker_key)
    if attempt == 1:
        os._exit(17)
    return {"attempt": attempt}
