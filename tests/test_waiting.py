"""tests.waiting.eventually: the one way tests wait for something."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.waiting import eventually


def test_returns_the_first_truthy_value() -> None:
    counter = itertools.count()
    assert eventually(lambda: [n] if (n := next(counter)) >= 3 else [], "three tries") == [3]


def test_fails_after_the_timeout_saying_what_it_waited_for() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"not within 0\.1 s: the queue empty"):
        eventually(lambda: False, "the queue empty", timeout=0.1)
    assert time.monotonic() - started >= 0.1


def test_describes_the_state_at_the_deadline() -> None:
    left = ["a.dcm"]
    with pytest.raises(AssertionError, match=r"left: \['a\.dcm'\]"):
        eventually(lambda: not left, lambda: f"no files left: {left}", timeout=0.05)


def test_an_error_in_the_condition_propagates_at_once() -> None:
    def broken() -> bool:
        raise ValueError("broken")

    started = time.monotonic()
    with pytest.raises(ValueError, match="broken"):
        eventually(broken, "never", timeout=5)
    assert time.monotonic() - started < 1
