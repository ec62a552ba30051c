"""tests/concurrency.run_together: results by attempt, and an attempt's exception reaches the test instead of
turning into a None result (before or after the shared start)."""
from __future__ import annotations

import pytest

from tests.concurrency import run_together


def test_results_come_back_by_attempt() -> None:
    assert run_together(3, lambda i, go: (go(), i)[1]) == [0, 1, 2]


def test_an_attempt_failing_before_the_start_releases_the_others_and_is_raised() -> None:
    def attempt(i: int, go) -> int:  # type: ignore[no-untyped-def]
        if i == 1:
            raise ValueError("boom")
        go()  # would wait for attempt 1 forever without the broken barrier
        return i

    with pytest.raises(AssertionError, match="1 of 3 attempts raised.*boom"):
        run_together(3, attempt, join_s=5)


def test_an_attempt_failing_after_the_start_is_raised() -> None:
    def attempt(i: int, go) -> int:  # type: ignore[no-untyped-def]
        go()
        if i == 2:
            raise KeyError("late")
        return i

    with pytest.raises(AssertionError, match="1 of 3 attempts raised.*late"):
        run_together(3, attempt, join_s=5)
