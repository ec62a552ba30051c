"""Races for tests: n threads released at one instant (unit and integration tests share it)."""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from services.common.errors import AlreadyExists

T = TypeVar("T")


def run_together(n: int, attempt: Callable[[int, Callable[[], object]], T], join_s: float = 60) -> list[T | None]:
    """Run `attempt(i, go)` for i in 0..n-1, each in its own thread; `go()` blocks until all n have called it, so
    whatever an attempt does after `go()` starts at one instant (set-up before it, e.g. opening a client, does not
    count). Returns the attempts' results by i (None for one still running after `join_s`). An exception raised
    inside an attempt is raised here, after the others have finished (the barrier is broken, so none waits for the
    failed one), instead of showing up as a None result."""
    barrier = threading.Barrier(n)
    results: list[T | None] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        passed = [False]

        def go() -> None:
            barrier.wait()
            passed[0] = True

        try:
            results[i] = attempt(i, go)
        except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread below)
            errors.append(e)
            if not passed[0]:  # the others would wait for this one at the barrier forever
                barrier.abort()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(join_s)
    failed = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if failed:
        raise AssertionError(f"{len(failed)} of {n} attempts raised; the first: {failed[0]!r}") from failed[0]
    return results


def registration_outcome(register: Callable[[], object]) -> str:
    """"created" when `register()` returns, "exists" when it raises AlreadyExists (anything else propagates)."""
    try:
        register()
        return "created"
    except AlreadyExists:
        return "exists"


def race_register(register: Callable[[str, str], object], name: str, n: int, join_s: float = 60) -> list[str | None]:
    """`n` registrations of one scenario `name` at once, each with its own query text, through `register(name,
    query)`: the sorted outcomes ("created" / "exists", None for one still running after `join_s`)."""

    def attempt(i: int, go: Callable[[], object]) -> str:
        go()
        return registration_outcome(lambda: register(name, f"query {i}"))

    return sorted(run_together(n, attempt, join_s), key=str)
