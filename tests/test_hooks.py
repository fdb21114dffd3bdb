"""Fan-out of applied events to the listeners that want them."""

from __future__ import annotations

import asyncio

from consumer.envelope import Change, ChangeKind
from consumer.hooks import EventHooks


def change(kind: ChangeKind, repository: str = "team/app") -> Change:
    return Change(kind=kind, action="push", event_id=f"{kind.value}-{repository}", repository=repository,
                  timestamp_us=1)


async def test_each_listener_gets_only_the_changes_it_wants() -> None:
    hooks = EventHooks()
    everything: list[str] = []
    deletes: list[str] = []

    async def all_of_them(c: Change) -> None:
        everything.append(c.event_id)

    async def only_deletes(c: Change) -> None:
        deletes.append(c.event_id)

    hooks.subscribe(all_of_them)
    hooks.subscribe(only_deletes, wants=lambda c: c.kind is ChangeKind.TAG_DELETE)
    for kind in (ChangeKind.TAG_PUSH, ChangeKind.TAG_DELETE, ChangeKind.PULL):
        hooks.publish(change(kind))
    await hooks.drain(5)
    assert everything == ["tag_push-team/app", "tag_delete-team/app", "pull-team/app"]
    assert deletes == ["tag_delete-team/app"]


async def test_a_failing_listener_does_not_stop_the_others() -> None:
    hooks = EventHooks()
    seen: list[str] = []

    async def broken(c: Change) -> None:
        raise RuntimeError("boom")

    async def fine(c: Change) -> None:
        await asyncio.sleep(0)
        seen.append(c.event_id)

    hooks.subscribe(broken)
    hooks.subscribe(fine)
    hooks.publish(change(ChangeKind.TAG_PUSH))
    await hooks.drain(5)
    assert seen == ["tag_push-team/app"]


async def test_pending_counts_listener_runs_until_they_finish() -> None:
    hooks = EventHooks()
    release = asyncio.Event()

    async def slow(c: Change) -> None:
        await release.wait()

    hooks.subscribe(slow, wants=lambda c: c.kind is not ChangeKind.PULL)
    for kind in (ChangeKind.TAG_PUSH, ChangeKind.TAG_DELETE, ChangeKind.PULL):
        hooks.publish(change(kind))
    assert hooks.pending == 2
    release.set()
    await hooks.drain(5)
    assert hooks.pending == 0
