"""Fan-out of applied events to the policies (latest, retention, audit) without delaying the webhook.

The registry gives up on a delivery after its timeout (1 s by default) and then sends a duplicate,
so listeners run as background tasks; shutdown waits for them for a bounded time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from consumer.envelope import Change

Listener = Callable[[Change], Awaitable[None]]
Interest = Callable[[Change], bool]
log = logging.getLogger(__name__)


def _any_change(change: Change) -> bool:
    return True


class EventHooks:
    """Listeners called once for every event the index applied (never for duplicates)."""

    def __init__(self) -> None:
        self._listeners: list[tuple[Listener, Interest]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        """Listener runs started and not finished (they queue on per-repository locks in a burst)."""
        return len(self._tasks)

    def subscribe(self, listener: Listener, *, wants: Interest = _any_change) -> None:
        """Call ``listener`` for every applied change that ``wants`` accepts (all of them by default).

        ``wants`` runs synchronously in the webhook and must not block: most events concern no policy,
        and answering "no" there saves starting a task per listener per event (measured in bench/).
        """
        self._listeners.append((listener, wants))

    def publish(self, change: Change) -> None:
        """Schedule every interested listener for ``change`` and return at once."""
        for listener, wants in self._listeners:
            if not wants(change):
                continue
            task = asyncio.create_task(self._run(listener, change))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _run(listener: Listener, change: Change) -> None:
        try:
            await listener(change)
        except Exception:
            log.exception("event listener failed", extra={"event_id": change.event_id})

    async def drain(self, timeout_seconds: float) -> None:
        """Wait for in-flight listeners, cancelling what is left after ``timeout_seconds``."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_seconds)
        for task in pending:
            task.cancel()
        if pending:
            # Bounded: a listener inside a redis-py call may swallow its cancellation (consumer.background).
            await asyncio.wait(pending, timeout=1.0)
