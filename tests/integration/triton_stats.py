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


def quiet(read: Callable[[], T], still_s: float = 0.3, wait_s: float = 5.0) -> T:
    """`read()` until it has not changed for `still_s` (or `wait_s` passes): the baseline of a test that counts its
    own requests, once the counts of the calls before it (an earlier test's last request) have landed."""
    deadline = time.monotonic() + wait_s
    value, since = read(), time.monotonic()
    while time.monotonic() - since < still_s and time.monotonic() < deadline:
        time.sleep(0.05)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
    return value
