"""The shutdown's cleanup budget is shared by every cleanup context, not granted to each."""

from __future__ import annotations

import time

from consumer.state import ServiceState


def test_the_cleanup_budget_is_one_for_all_callers() -> None:
    state = ServiceState()
    first = state.cleanup_seconds(10.0)
    assert 9.9 < first <= 10.0
    state.cleanup_deadline = time.monotonic() + 2.0  # as if 8 of the 10 seconds had gone on earlier cleanups
    assert 1.9 < state.cleanup_seconds(10.0) <= 2.0  # a later caller gets what is left, not 10 more
    state.cleanup_deadline = time.monotonic() - 1.0
    assert state.cleanup_seconds(10.0) == 0.0


def test_restartable_work_gets_at_most_its_share() -> None:
    state = ServiceState()
    assert state.cleanup_seconds(10.0, at_most=2.0) == 2.0  # a loop's round: little of the budget
    assert 9.9 < state.cleanup_seconds(10.0) <= 10.0  # the listeners: all that is left
