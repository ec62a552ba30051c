"""Reading Triton's request counters in tests.

Triton records a request's statistics after its response has gone out, so the count of the call a test has just
made can land a moment after the client holds the answer. A test that compares counters right after its calls
polls through `settled` instead of reading once."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def settled(read: Callable[[], T], reached: Callable[[T], bool], wait_s: float = 10.0) -> T:
    """`read()` again until `reached(value)` or `wait_s` passes; returns the last value, for the caller's assertion
    to show what was counted."""
    deadline = time.monotonic() + wait_s
    while True:
        value = read()
        if reached(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)
