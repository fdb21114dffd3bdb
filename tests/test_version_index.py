"""The version index orders live version tags by SemVer precedence and follows the tag index."""

from __future__ import annotations

import itertools
import random

from redis.asyncio import Redis

from consumer.envelope import Change, ChangeKind
from consumer.index import TagIndex
from consumer.rediskeys import RedisKeys
from consumer.semver import parse
from consumer.version_index import VersionIndex, version_member

REPO = "team/app"
DIGEST = "sha256:" + "a" * 64
_ids = itertools.count()


def change(kind: ChangeKind, tag: str, clock: int) -> Change:
    return Change(kind=kind, action="push" if kind is ChangeKind.TAG_PUSH else "delete", event_id=f"v{next(_ids)}",
                  repository=REPO, timestamp_us=clock, tag=tag, digest=DIGEST)


def indexes(redis: Redis) -> tuple[TagIndex, VersionIndex]:
    keys = RedisKeys("vt")
    return TagIndex(redis, keys, dedup_ttl_seconds=60, tombstone_ttl_seconds=60), VersionIndex(redis, keys)


async def test_highest_and_rank_follow_semver_precedence(redis_client: Redis) -> None:
    tags, versions = indexes(redis_client)
    ordered = ["2.0.0", "v1.10.0", "1.10.0-rc.2", "1.10.0-rc.1", "1.10.0-beta", "1.10.0-alpha.10", "1.10.0-alpha.9",
               "1.10.0-alpha", "1.9.0", "1.2.3", "v0.0.1"]
    shuffled = [*ordered, "latest", "main", "1.2"]  # the last three are not versions
    random.Random(4).shuffle(shuffled)
    for clock, tag in enumerate(shuffled, 1):
        await tags.apply(change(ChangeKind.TAG_PUSH, tag, clock))
    await versions.sync(REPO, shuffled)
    assert await versions.highest(REPO, 100) == ordered
    assert await versions.highest(REPO, 2, offset=1) == ["v1.10.0", "1.10.0-rc.2"]
    assert await versions.rank(REPO, "1.9.0") == ordered.index("1.9.0")
    assert await versions.rank(REPO, "main") is None
    # The members' byte order is Version's order (equal versions tie-broken by tag name).
    by_member = sorted(ordered, key=lambda t: str(version_member(t)).encode(), reverse=True)
    assert [parse(t) for t in by_member] == sorted((parse(t) for t in ordered), reverse=True)  # type: ignore[type-var]


async def test_sync_follows_the_tag_index_and_rebuild_repairs(redis_client: Redis) -> None:
    tags, versions = indexes(redis_client)
    for clock, tag in enumerate(["1.0.0", "1.1.0", "2.0.0"], 1):
        await tags.apply(change(ChangeKind.TAG_PUSH, tag, clock))
    await versions.sync(REPO, ["1.0.0", "1.1.0", "2.0.0"])
    await tags.apply(change(ChangeKind.TAG_DELETE, "2.0.0", 10))
    await versions.sync(REPO, ["2.0.0"])
    assert await versions.highest(REPO, 10) == ["1.1.0", "1.0.0"]

    # Events the listeners never saw: a push and a delete. rebuild finds both.
    await tags.apply(change(ChangeKind.TAG_PUSH, "3.0.0", 11))
    await tags.apply(change(ChangeKind.TAG_DELETE, "1.0.0", 12))
    assert await versions.highest(REPO, 10) == ["1.1.0", "1.0.0"]
    assert await versions.rebuild(REPO) == 2
    assert await versions.highest(REPO, 10) == ["3.0.0", "1.1.0"]
    assert await versions.rebuild(REPO) == 0
