"""Background loops of one component, stopped by an event rather than by cancellation alone.

redis-py can swallow a cancellation that lands while it connects or waits for a reply (it comes back
as a connection error, or not at all), so a loop stopped only with ``task.cancel()`` may never end
and hold up shutdown. Every loop here checks a stop event between rounds; cancellation is only the
last resort for a round that outlives the shutdown timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import redis.exceptions

log = logging.getLogger(__name__)
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError)
# At shutdown a loop's round (a sweep, a reconciliation, a deletion) gets this long to finish before it is
# cancelled: it starts again after the restart, while the listeners' work on acknowledged events does not.
LOOP_CLOSE_SECONDS = 2.0


class Loops:
    """The loops of one component; :meth:`close` stops them within a bound."""

    def __init__(self, on_redis_error: Callable[[], None] | None = None) -> None:
        self.stop = asyncio.Event()
        self._on_redis_error = on_redis_error
        self._tasks: set[asyncio.Task[Any]] = set()

    async def pause(self, seconds: float) -> bool:
        """Wait ``seconds`` or until stopping; True while the loop should go on."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), seconds)
        return not self.stop.is_set()

    def spawn(self, coroutine: Coroutine[Any, Any, Any], *, name: str) -> None:
        """Run a loop that watches :attr:`stop` itself."""
        self._tasks.add(asyncio.create_task(coroutine, name=name))

    def every(
        self,
        interval_seconds: float,
        work: Callable[[], Awaitable[object]],
        *,
        name: str,
        initial_delay_seconds: float = 0.0,
        expected: tuple[type[Exception], ...] = (),
    ) -> None:
        """Run ``work`` every ``interval_seconds``; failures are counted or logged, never fatal.

        ``expected`` errors (a registry that is down, a lock another replica holds) are logged
        without a traceback.
        """
        self.spawn(self._every(interval_seconds, work, name, initial_delay_seconds, expected), name=name)

    async def _every(
        self,
        interval_seconds: float,
        work: Callable[[], Awaitable[object]],
        name: str,
        initial_delay_seconds: float,
        expected: tuple[type[Exception], ...],
    ) -> None:
        if not await self.pause(initial_delay_seconds):
            return
        while True:
            try:
                await work()
            except REDIS_DOWN:
                if self._on_redis_error is not None:
                    self._on_redis_error()
            except expected as exc:
                log.warning("%s failed: %s", name, exc)
            except Exception:
                log.exception("%s failed", name)
            if not await self.pause(interval_seconds):
                return

    async def close(self, timeout_seconds: float) -> None:
        """Stop every loop: let the current rounds finish within ``timeout_seconds``, then cancel."""
        self.stop.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=timeout_seconds)
        for task in pending:
            task.cancel()
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=1.0)
            for task in stuck:
                log.error("background loop %s did not stop", task.get_name())
        self._tasks.clear()
