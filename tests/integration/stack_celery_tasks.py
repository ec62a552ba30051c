"""Celery app for tests/integration/test_stack_celery.py; the test starts a real worker on it.

Broker and backend are the session stack's Redis, passed in STACK_TEST_REDIS_URL; each test run uses its own
queue (STACK_TEST_QUEUE) so a stray worker of another run never steals its tasks.
"""
from __future__ import annotations

import os
import time

from celery import Celery


def make_app(redis_url: str, queue: str) -> Celery:
    app = Celery("stack_test", broker=redis_url, backend=redis_url)
    app.conf.update(
        task_default_queue=queue,
        task_acks_late=True,  # job tasks: acknowledged only after they finish, so a crash re-delivers them
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        result_expires=600,
    )
    return app


app = make_app(os.environ.get("STACK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
               os.environ.get("STACK_TEST_QUEUE", "stack-test"))


@app.task(name="stack_test.weighted_sum", acks_late=True)
def weighted_sum(values: list[float], weights: list[float]) -> float:
    return sum(v * w for v, w in zip(values, weights, strict=True))


@app.task(name="stack_test.count_up", bind=True, acks_late=True)
def count_up(self, steps: int, delay_s: float) -> dict:
    for done in range(1, steps + 1):
        time.sleep(delay_s)
        self.update_state(state="PROGRESS", meta={"done": done, "total": steps})
    return {"done": steps, "total": steps}
