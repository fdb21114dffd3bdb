"""The deletion queue and worker against a real Redis and a real docker-registry 2.8.2 (deletes by digest)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from consumer.audit import AuditLog
from consumer.deleter import GROUP, Action, Deletion, DeletionWorker, Outcome, RateLimiter
from consumer.intents import DeletionIntents
from consumer.metrics import Metrics
from consumer.registry_client import RegistryClient
from consumer.settings import AuditSettings, RegistrySettings, RetentionSettings
from tests.support import oci, skopeo
from tests.support.registry import RegistryFleet, RegistryServer
from tests.support.retention import REPO, Rig, make_rig, policy_set

ENFORCED = {"dry_run": False, "keep": [{"last_pushed": 1}], "max_deletions_per_run": 10}
FAST = RetentionSettings(max_deletions_per_second=1000, retry_base_seconds=0.05, claim_idle_seconds=0.2,
                         max_attempts=3)


@dataclass
class Bench:
    registry: RegistryServer
    client: RegistryClient
    rig: Rig
    metrics: Metrics
    intents: DeletionIntents
    audit: AuditLog
    layout: Path

    def worker(self, name: str = "w1", settings: RetentionSettings = FAST) -> DeletionWorker:
        return DeletionWorker(self.rig.redis, self.rig.keys, self.rig.queue, self.rig.planner, self.client,
                              self.intents, self.audit, self.metrics, settings, consumer_name=name)

    async def push(self, tag: str, at_s: float) -> str:
        """Push a fresh image to the registry and tell retention (the index learns it as from an event)."""
        digest = await skopeo.push(oci.write_image(self.layout, tag), self.registry, REPO, tag)
        await self.rig.push(tag, digest, at_s)
        return digest


@pytest.fixture
async def bench(registries: RegistryFleet, redis_client: Redis, tmp_path: Path) -> AsyncIterator[Bench]:
    registry = registries.start()
    metrics = Metrics(process=False)
    async with RegistryClient.open(RegistrySettings(url=registry.url, retries=0, timeout_seconds=5)) as client:
        rig = make_rig(redis_client, policy_set(ENFORCED), metrics=metrics, tag_deletes_fn=client.supports_tag_delete)
        await rig.queue.ensure_group()
        yield Bench(registry, client, rig, metrics, DeletionIntents(redis_client, rig.keys, ttl_seconds=600),
                    AuditLog(redis_client, rig.keys, AuditSettings()), tmp_path / "layout")


async def until_outcome(worker: DeletionWorker, rounds: int = 400) -> list[Outcome]:
    """Step the worker until it handles something (a retry comes back only after its backoff)."""
    for _ in range(rounds):
        outcomes = await worker.step()
        if outcomes:
            return outcomes
        await asyncio.sleep(0.02)
    raise AssertionError("the worker never got the entry back")


async def test_an_expired_image_is_deleted_with_intents_audit_and_metrics(bench: Bench, redis_client: Redis) -> None:
    old = await bench.push("old", 1)
    await bench.push("new", 2)
    assert await bench.rig.queue.depth() == 1
    [outcome] = await bench.worker().drain()
    assert outcome.status == "deleted", outcome
    assert outcome.executed == Deletion(REPO, Action.DIGEST, old, tags=("old",), rule="no_keep_rule",
                                        reason="no keep rule keeps it")
    assert await bench.registry.tags(REPO) == ["new"]
    # The intents were written before the DELETE (nothing consumed them here: no events flow in this test).
    assert await bench.intents.is_expected(REPO, digest=old)
    assert await bench.intents.is_expected(REPO, tag="old")
    records, _ = await bench.audit.page(kind="retention_delete")
    assert [(r.repository, r.tag, r.digest, r.detail) for r in records] == [
        (REPO, None, old, "no_keep_rule: no keep rule keeps it")]
    assert bench.metrics.retention_deletions.labels("enforced")._value.get() == 1
    assert await bench.rig.queue.depth() == 0
    assert await redis_client.zcard(bench.rig.keys.repo(REPO).retention_claims) == 0


async def test_a_deletion_no_longer_planned_is_dropped(bench: Bench) -> None:
    await bench.push("old", 1)
    digest = await bench.push("new", 2)
    await bench.rig.push("old", digest, 3)  # old moved onto new's digest, newest: kept now
    [outcome] = await bench.worker().drain()
    assert (outcome.status, outcome.detail) == ("dropped", "no longer planned")
    assert await bench.registry.tags(REPO) == ["new", "old"]
    assert bench.metrics.retention_deletions.labels("enforced")._value.get() == 0


async def test_a_tag_the_registry_moved_is_not_deleted(bench: Bench) -> None:
    await bench.push("old", 1)
    await bench.push("new", 2)
    # The registry moved "old" to another image; the index has not heard yet.
    await skopeo.push(oci.write_image(bench.layout, "other"), bench.registry, REPO, "old")
    [outcome] = await bench.worker().drain()
    assert outcome.status == "dropped"
    assert await bench.registry.tags(REPO) == ["new", "old"]


async def test_failures_are_retried_with_backoff_then_given_up(bench: Bench, redis_client: Redis) -> None:
    await bench.push("old", 1)
    await bench.push("new", 2)
    bench.registry.stop()
    worker = bench.worker()
    statuses = []
    for _ in range(FAST.max_attempts):
        [outcome] = await until_outcome(worker)
        statuses.append(outcome.status)
        if outcome.status == "retry":
            [pending] = await redis_client.xpending_range(bench.rig.keys.retention_queue, GROUP, "-", "+", 10)
            assert pending["times_delivered"] == len(statuses)
    assert statuses == ["retry", "retry", "failed"]
    assert bench.metrics.retention_deletions.labels("failed")._value.get() == 1
    assert await bench.rig.queue.depth() == 0
    # Given up: the claim is released, so the next evaluation may plan it again.
    assert await redis_client.zcard(bench.rig.keys.repo(REPO).retention_claims) == 0


async def test_the_entry_of_a_worker_that_died_is_taken_over(bench: Bench) -> None:
    old = await bench.push("old", 1)
    await bench.push("new", 2)
    dead = bench.worker("dead")
    await dead._read_new(None)  # delivered to "dead", which never finishes it
    assert await bench.worker("dead").step() == []  # not redelivered to anyone before claim_idle_seconds
    [outcome] = await until_outcome(bench.worker("alive"))
    assert (outcome.status, outcome.deletion.digest) == ("deleted", old)
    assert await bench.registry.tags(REPO) == ["new"]


async def test_the_rate_limit_is_shared_and_spaces_permits(redis_client: Redis) -> None:
    first = RateLimiter(redis_client, "rl", per_second=0.5)
    second = RateLimiter(redis_client, "rl", per_second=0.5)  # another process: same key
    await first.acquire()
    wait_ms = int(await second._script(keys=["rl"], args=[2000]))
    assert 0 < wait_ms <= 2000


async def test_queue_gauges(bench: Bench) -> None:
    from consumer.deleter import refresh_queue_gauges

    await bench.push("old", 1)
    await bench.push("new", 2)
    await refresh_queue_gauges(bench.rig.queue, bench.metrics)
    assert bench.metrics.retention_queue_depth._value.get() == 1
    assert bench.metrics.retention_oldest_pending_age._value.get() >= 0
    await bench.worker().drain()
    await refresh_queue_gauges(bench.rig.queue, bench.metrics)
    assert bench.metrics.retention_queue_depth._value.get() == 0
    assert bench.metrics.retention_oldest_pending_age._value.get() == 0


async def test_a_digest_delete_is_dropped_when_a_tag_the_index_never_heard_of_names_it(bench: Bench) -> None:
    """2.x deletes every tag on a digest: a retag whose push event is still in the registry's queue counts."""
    old = await bench.push("old", 1)
    await bench.push("new", 2)
    await skopeo.retag(bench.registry, REPO, "old", "stable")  # the index has not heard of it (yet)
    [outcome] = await bench.worker().drain()
    assert (outcome.status, outcome.detail) == ("dropped", "the registry no longer has it as planned")
    assert await bench.registry.tags(REPO) == ["new", "old", "stable"]
    assert await bench.registry.head_digest(REPO, "stable") == old


async def test_the_checks_are_made_again_once_the_rate_limit_permit_is_ours(bench: Bench) -> None:
    await bench.push("old", 1)
    await bench.push("new", 2)
    worker = bench.worker()
    order: list[str] = []
    limiter_acquire, confirm = worker._limiter.acquire, bench.rig.planner.confirm

    async def acquire() -> None:
        order.append("permit")
        await limiter_acquire()

    async def confirmed(deletion: Any) -> Any:
        order.append("confirm")
        return await confirm(deletion)

    worker._limiter.acquire = acquire  # type: ignore[method-assign]
    bench.rig.planner.confirm = confirmed  # type: ignore[method-assign]
    [outcome] = await worker.drain()
    assert outcome.status == "deleted" and order == ["confirm", "permit", "confirm"]


async def test_a_delete_that_finds_nothing_at_once_leaves_the_deletion_to_whoever_did_it(bench: Bench) -> None:
    """Gone at the first attempt: somebody else deleted it between the checks and the DELETE; their delete
    event is theirs to explain, so the intents are withdrawn."""
    old = await bench.push("old", 1)
    await bench.push("new", 2)
    delete = bench.client.delete_manifest

    async def beaten_to_it(repository: str, digest: str) -> bool:
        await bench.registry.delete_manifest(repository, digest)  # someone else, just before
        return await delete(repository, digest)  # a plain 404

    bench.client.delete_manifest = beaten_to_it  # type: ignore[method-assign]
    [outcome] = await bench.worker().drain()
    assert outcome.status == "gone"
    assert not await bench.intents.is_expected(REPO, digest=old)


async def test_a_digest_delete_is_dropped_when_a_known_tag_was_moved_onto_the_digest(bench: Bench) -> None:
    old = await bench.push("old", 1)
    await bench.push("new", 2)
    await skopeo.retag(bench.registry, REPO, "old", "new")  # a rollback; the index has not heard of it yet
    [outcome] = await bench.worker().drain()
    assert (outcome.status, outcome.detail) == ("dropped", "the registry no longer has it as planned")
    assert await bench.registry.tags(REPO) == ["new", "old"]
    assert await bench.registry.head_digest(REPO, "new") == old


async def test_a_dropped_deletion_spends_no_rate_limit_permit(bench: Bench) -> None:
    await bench.push("old", 1)
    digest = await bench.push("new", 2)
    await bench.rig.push("old", digest, 3)  # old moved onto new's digest: no longer planned
    worker = bench.worker()
    permits: list[None] = []
    acquire = worker._limiter.acquire

    async def counted() -> None:
        permits.append(None)
        await acquire()

    worker._limiter.acquire = counted  # type: ignore[method-assign]
    [outcome] = await worker.drain()
    assert outcome.status == "dropped" and permits == []
