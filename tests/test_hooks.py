"""Fan-out of applied events to the listeners that want them."""

from __future__ import annotations

import asyncio

from consumer.envelope import Change, ChangeKind
from consumer.hooks import EventHooks
from consumer.logs import EVENT_ID, REQUEST_ID


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


async def test_a_repository_is_judged_one_event_at_a_time_in_order_and_repositories_in_parallel() -> None:
    hooks = EventHooks()
    running: dict[str, int] = {}
    most_at_once: dict[str, int] = {}
    seen: list[str] = []
    both_started = asyncio.Event()

    async def listener(c: Change) -> None:
        running[c.repository] = running.get(c.repository, 0) + 1
        most_at_once[c.repository] = max(most_at_once.get(c.repository, 0), running[c.repository])
        if len(running) == 2:
            both_started.set()
        await asyncio.wait_for(both_started.wait(), 5)  # would time out if repositories ran one after the other
        seen.append(c.event_id)
        running[c.repository] -= 1

    hooks.subscribe(listener)
    for n in range(3):
        for repo in ("team/a", "team/b"):
            hooks.publish(Change(kind=ChangeKind.TAG_PUSH, action="push", event_id=f"{repo}-{n}", repository=repo,
                                 timestamp_us=n))
    await hooks.drain(10)
    assert most_at_once == {"team/a": 1, "team/b": 1}
    assert [e for e in seen if e.startswith("team/a")] == ["team/a-0", "team/a-1", "team/a-2"]
    assert [e for e in seen if e.startswith("team/b")] == ["team/b-0", "team/b-1", "team/b-2"]


async def test_a_full_backlog_gives_listeners_with_resync_one_resync_per_repository() -> None:
    overflowed: list[None] = []
    hooks = EventHooks(max_pending=2, on_overflow=lambda: overflowed.append(None))
    release = asyncio.Event()
    judged: list[str] = []
    resynced: list[str] = []
    kept: list[str] = []

    async def judge(c: Change) -> None:
        await release.wait()
        judged.append(c.event_id)

    async def resync(repository: str) -> None:
        resynced.append(repository)

    async def watch(c: Change) -> None:
        kept.append(c.event_id)

    hooks.subscribe(judge, resync=resync)
    hooks.subscribe(watch)  # no resync: keeps every event whatever the backlog
    for n in range(5):
        hooks.publish(Change(kind=ChangeKind.TAG_PUSH, action="push", event_id=f"e{n}", repository="team/a",
                             timestamp_us=n))
    hooks.publish(Change(kind=ChangeKind.TAG_PUSH, action="push", event_id="x", repository="team/x", timestamp_us=9))
    # e0 for both listeners fills the backlog; judge gets one resync for team/a (e1-e4) and one for team/x.
    assert hooks.pending == 2 + 1 + 4 + 1 + 1
    assert len(overflowed) == 5
    release.set()
    await hooks.drain(5)
    assert judged == ["e0"]
    assert sorted(resynced) == ["team/a", "team/x"]
    assert [e for e in kept if e != "x"] == ["e0", "e1", "e2", "e3", "e4"] and "x" in kept  # in order per repository
    assert hooks.pending == 0


async def test_drain_gives_up_on_what_is_left_after_its_timeout() -> None:
    hooks = EventHooks()

    async def forever(c: Change) -> None:
        await asyncio.Event().wait()

    hooks.subscribe(forever)
    for n in range(3):
        hooks.publish(change(ChangeKind.TAG_PUSH, repository=f"team/{n % 2}"))
    assert hooks.pending == 3
    await hooks.drain(0.05)
    assert hooks.pending == 0


async def test_a_listener_runs_in_the_context_its_event_was_published_in() -> None:
    """One worker serves a repository's queue; each event still sees the context vars of its own publish
    (the log lines of a listener carry its event's request and event ids)."""
    hooks = EventHooks()
    release = asyncio.Event()
    seen: list[tuple[str, str | None, str | None]] = []

    async def listener(c: Change) -> None:
        await release.wait()
        seen.append((c.event_id, REQUEST_ID.get(), EVENT_ID.get()))

    hooks.subscribe(listener)
    for n in range(3):
        request_token, event_token = REQUEST_ID.set(f"req-{n}"), EVENT_ID.set(f"ev-{n}")
        try:
            hooks.publish(Change(kind=ChangeKind.TAG_PUSH, action="push", event_id=f"ev-{n}", repository="team/a",
                                 timestamp_us=n))
        finally:
            EVENT_ID.reset(event_token)
            REQUEST_ID.reset(request_token)
    release.set()
    await hooks.drain(5)
    assert seen == [(f"ev-{n}", f"req-{n}", f"ev-{n}") for n in range(3)]


async def test_events_after_a_resync_started_get_a_resync_of_their_own() -> None:
    hooks = EventHooks(max_pending=1)
    resyncing, finish = asyncio.Event(), asyncio.Event()
    resynced: list[str] = []

    async def judge(c: Change) -> None:
        pass

    async def resync(repository: str) -> None:
        resyncing.set()
        await finish.wait()  # reading the index, as it was when it started
        resynced.append(repository)

    hooks.subscribe(judge, resync=resync)

    def push(n: int) -> None:
        hooks.publish(Change(kind=ChangeKind.TAG_PUSH, action="push", event_id=f"e{n}", repository="team/a",
                             timestamp_us=n))

    push(0)
    push(1)  # over the bound: a resync stands for it
    await asyncio.wait_for(resyncing.wait(), 5)
    push(2)  # applied after the running resync read the index: it must not be folded into that one
    push(3)  # but it may share the next one
    finish.set()
    await hooks.drain(5)
    assert resynced == ["team/a", "team/a"]
    assert hooks.pending == 0


async def test_a_listener_that_turns_cancellation_into_an_error_does_not_keep_its_worker_going() -> None:
    """redis-py may raise a connection error where a cancellation was; the worker must still stop."""
    hooks = EventHooks()
    started: list[str] = []

    async def stubborn(c: Change) -> None:
        started.append(c.event_id)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise ConnectionError("Connection closed by server") from None

    hooks.subscribe(stubborn)
    for n in range(5):
        hooks.publish(Change(kind=ChangeKind.TAG_PUSH, action="push", event_id=f"e{n}", repository="team/a",
                             timestamp_us=n))
    await hooks.drain(0.05)
    await asyncio.sleep(0.05)  # what a worker still going would use to start the next run
    assert started == ["e0"]
    assert hooks.pending == 0


async def test_a_worker_cancelled_before_it_ran_leaves_no_queue_behind() -> None:
    hooks = EventHooks()
    seen: list[str] = []

    async def listener(c: Change) -> None:
        seen.append(c.event_id)

    hooks.subscribe(listener)
    hooks.publish(change(ChangeKind.TAG_PUSH))
    (worker,) = hooks._workers  # as drain would cancel one that a listener had just started
    worker.cancel()  # before its first step: its own cleanup never runs
    await asyncio.gather(worker, return_exceptions=True)
    await asyncio.sleep(0)  # its done callbacks
    assert seen == [] and hooks.pending == 0
    hooks.publish(change(ChangeKind.TAG_DELETE))  # the repository gets a new queue and worker
    await hooks.drain(5)
    assert seen == ["tag_delete-team/app"] and hooks.pending == 0


async def test_overflow_is_counted_once_per_event_whatever_the_number_of_listeners() -> None:
    overflowed: list[None] = []
    hooks = EventHooks(max_pending=1, on_overflow=lambda: overflowed.append(None))
    gate = asyncio.Event()

    async def slow(c: Change) -> None:
        await gate.wait()

    async def resync(repository: str) -> None:
        pass

    hooks.subscribe(slow, resync=resync)
    hooks.subscribe(slow, resync=resync)
    for n in range(3):
        hooks.publish(Change(kind=ChangeKind.TAG_PUSH, action="push", event_id=f"e{n}", repository="team/a",
                             timestamp_us=n))
    assert len(overflowed) == 3  # e0 overflows for the second listener, e1 and e2 for both: one count each
    gate.set()
    await hooks.drain(5)


async def test_after_a_drain_gave_up_new_events_are_still_handled() -> None:
    hooks = EventHooks()
    seen: list[str] = []

    async def listener(c: Change) -> None:
        if c.event_id == "stuck":
            await asyncio.Event().wait()
        seen.append(c.event_id)

    hooks.subscribe(listener)
    hooks.publish(Change(kind=ChangeKind.TAG_PUSH, action="push", event_id="stuck", repository="team/a",
                         timestamp_us=1))
    await hooks.drain(0.05)  # gives up on the stuck one
    hooks.publish(Change(kind=ChangeKind.TAG_PUSH, action="push", event_id="later", repository="team/a",
                         timestamp_us=2))
    await hooks.drain(5)
    assert seen == ["later"] and hooks.pending == 0
