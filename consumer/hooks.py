"""Fan-out of applied events to the policies (latest, retention, the deletion watch) without delaying the webhook.

The registry gives up on a delivery after its timeout (1 s by default) and then sends a duplicate, so
listeners run in the background: each listener has one queue per repository, worked through in the order
the events were applied by one task (a repository's events are judged one at a time, in order; different
repositories in parallel). Shutdown waits for them for a bounded time.

The queues are bounded. A burst (a CI job pushing thousands of tags) must not grow memory without limit, so
once ``max_pending`` events wait, a listener that can re-evaluate a whole repository (``resync``) gets that
instead of each further event: one resync per repository, however many events it stands for. A listener
without ``resync`` (the unexpected-deletion watch, which needs each delete as it happened) keeps every event;
it only wants deletes, which no burst of pushes or pulls produces.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final

from consumer.envelope import Change

Listener = Callable[[Change], Coroutine[Any, Any, None]]
Interest = Callable[[Change], bool]
Resync = Callable[[str], Coroutine[Any, Any, None]]
log = logging.getLogger(__name__)


class _Resync:
    """Queue marker: re-evaluate the whole repository (it stands for every event dropped in its place)."""


RESYNC: Final = _Resync()
Item = Change | _Resync


def _any_change(change: Change) -> bool:
    return True


class _Subscription:
    def __init__(self, listener: Listener, wants: Interest, resync: Resync | None) -> None:
        self.listener, self.wants, self.resync = listener, wants, resync
        # Each item with the context it was published in: a listener's log lines carry the request and
        # event ids of its event (consumer.logs), not those of the event that started the queue's worker.
        self.queues: dict[str, collections.deque[tuple[Item, contextvars.Context]]] = {}


class EventHooks:
    """Listeners called once for every event the index applied (never for duplicates).

    ``max_pending``: events waiting across all listeners before listeners with ``resync`` get one resync per
    repository instead of each event; ``on_overflow`` is called for every event so replaced.
    """

    def __init__(self, *, max_pending: int = 10_000, on_overflow: Callable[[], None] | None = None) -> None:
        self._subscriptions: list[_Subscription] = []
        self._workers: set[asyncio.Task[None]] = set()
        self._pending = 0
        self._max_pending = max_pending
        self._on_overflow = on_overflow
        self._given_up: set[asyncio.Task[None]] = set()  # workers a drain cancelled: they stop after this run

    @property
    def pending(self) -> int:
        """Listener runs queued or running (events, and resyncs standing for dropped ones)."""
        return self._pending

    def subscribe(self, listener: Listener, *, wants: Interest = _any_change, resync: Resync | None = None) -> None:
        """Call ``listener`` for every applied change that ``wants`` accepts (all of them by default).

        ``wants`` runs synchronously in the webhook and must not block: most events concern no policy,
        and answering "no" there saves queueing them (measured in bench/). ``resync(repository)`` must bring
        the listener up to date with the repository as the index has it now, whatever events it missed.
        """
        self._subscriptions.append(_Subscription(listener, wants, resync))

    def publish(self, change: Change) -> None:
        """Queue ``change`` for every interested listener and return at once."""
        overflowed = False
        for sub in self._subscriptions:
            if sub.wants(change):
                overflowed |= self._enqueue(sub, change)
        if overflowed and self._on_overflow is not None:
            self._on_overflow()  # once per event, however many listeners resync for it

    def _enqueue(self, sub: _Subscription, change: Change) -> bool:
        """Queue ``change`` (or a resync standing for it) for ``sub``; True when a resync stands for it."""
        repository = change.repository
        queue = sub.queues.get(repository)
        item: Item = change
        overflowed = self._pending >= self._max_pending and sub.resync is not None
        if overflowed:
            if queue and queue[-1][0] is RESYNC:
                return True  # the resync already queued covers this event too
            item = RESYNC
        if queue is None:
            queue = sub.queues[repository] = collections.deque()
            worker = asyncio.create_task(self._work(sub, repository, queue))
            self._workers.add(worker)
            worker.add_done_callback(functools.partial(self._worker_done, sub, repository, queue))
        queue.append((item, contextvars.copy_context()))
        self._pending += 1
        return overflowed

    def _worker_done(self, sub: _Subscription, repository: str, queue: collections.deque[tuple[Item, Any]],
                     task: asyncio.Task[None]) -> None:
        self._workers.discard(task)
        self._given_up.discard(task)
        self._release(sub, repository, queue)  # a worker cancelled before it ran never reached its own

    def _release(self, sub: _Subscription, repository: str, queue: collections.deque[tuple[Item, Any]]) -> None:
        """Forget a repository's queue once its worker ends; what is left in it is given up."""
        if sub.queues.get(repository) is queue:
            self._pending -= len(queue)
            del sub.queues[repository]

    async def _work(self, sub: _Subscription, repository: str,
                    queue: collections.deque[tuple[Item, contextvars.Context]]) -> None:
        try:
            while queue and asyncio.current_task() not in self._given_up:
                # Off the queue before it runs: a resync that has started reading the index must not absorb
                # events applied after (they queue a resync of their own).
                item, context = queue.popleft()
                try:
                    if isinstance(item, Change):
                        await asyncio.create_task(sub.listener(item), context=context)
                    else:
                        assert sub.resync is not None
                        await asyncio.create_task(sub.resync(repository), context=context)
                except Exception:
                    log.exception("event listener failed", extra={
                        "repository": repository, "event_id": item.event_id if isinstance(item, Change) else None})
                finally:
                    self._pending -= 1
        finally:
            # Here, not only in the done callback: a publish between the loop's end and the callback would
            # append to a queue that no worker serves any more.
            self._release(sub, repository, queue)

    async def drain(self, timeout_seconds: float) -> None:
        """Wait for queued listener runs, cancelling what is left after ``timeout_seconds``."""
        deadline = asyncio.get_running_loop().time() + timeout_seconds
        while self._workers:  # a listener may publish (a resync's own changes): wait for those too
            remaining = deadline - asyncio.get_running_loop().time()
            _, pending = await asyncio.wait(set(self._workers), timeout=max(remaining, 0))
            if pending:
                # redis-py may turn a cancellation into a connection error, which a worker catches like any
                # listener failure: without this it would go on through the rest of its queue.
                self._given_up |= pending
                for task in pending:
                    task.cancel()
                # Bounded: a listener inside a redis-py call may swallow its cancellation (consumer.background).
                await asyncio.wait(pending, timeout=1.0)
                return
