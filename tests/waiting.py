"""Waiting in tests: for a condition, with a deadline, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    condition: Callable[[], T],
    what: str | Callable[[], str],
    *,
    timeout: float = 5.0,
    interval: float = 0.01,
) -> T:
    """Call ``condition`` every ``interval`` seconds until it returns something truthy, and
    return that.

    When ``timeout`` seconds pass first, fails with an AssertionError that says what was
    waited for: ``what``, or what ``what()`` says then (the state that is still wrong).
    It fails only after a try made past the deadline. An exception from ``condition``
    propagates at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"not within {timeout:g} s: {described}")
        time.sleep(interval)
