"""Background loops stop within their bound even when a round swallows its cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
import redis.exceptions

from consumer.background import Loops


async def test_a_round_that_swallows_cancellation_still_stops() -> None:
    rounds = 0

    async def stubborn() -> None:
        nonlocal rounds
        rounds += 1
        with contextlib.suppress(asyncio.CancelledError):  # what redis-py sometimes does inside a command
            await asyncio.sleep(0.2)

    loops = Loops()
    loops.every(0.01, stubborn, name="stubborn")
    await asyncio.sleep(0.05)
    await asyncio.wait_for(loops.close(timeout_seconds=0.01), timeout=2.0)
    seen = rounds
    await asyncio.sleep(0.1)
    assert rounds == seen  # no round after close


async def test_redis_errors_are_counted_and_other_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    counted: list[int] = []
    calls = 0
    third = asyncio.Event()

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            third.set()
        if calls == 1:
            raise redis.exceptions.ConnectionError("down")
        if calls == 2:
            raise ValueError("bug")

    loops = Loops(on_redis_error=lambda: counted.append(1))
    with caplog.at_level(logging.ERROR):
        loops.every(0.001, flaky, name="flaky")
        await asyncio.wait_for(third.wait(), timeout=5)
        await loops.close(1.0)
    assert counted == [1]
    assert any("flaky failed" in r.getMessage() for r in caplog.records)


async def test_initial_delay_and_stop_before_first_round() -> None:
    ran: list[int] = []

    async def work() -> None:
        ran.append(1)

    loops = Loops()
    loops.every(1.0, work, name="late", initial_delay_seconds=60)
    await loops.close(1.0)
    assert ran == []
