"""The per-repository version index: every live tag that is a semantic version, in precedence order.

One Redis sorted set per repository (``RepoKeys.versions``), all scores 0, members
``"<Version.sort_key> <tag>"``. Redis orders equal-score members by their bytes and ``sort_key``'s byte
order is SemVer precedence, so the N highest versions and the rank of any tag are O(log n) (ZRANGE and
ZREVRANK by rank). ``v1.2.0`` and ``1.2.0`` have equal keys; the tag name breaks the tie. The space
sorts below every byte that can continue a key, so a key that is a prefix of another (``1.0.0-a`` of
``1.0.0-a.1``) still sorts first.

The set is derived from the tag index, never a source of truth. ``sync`` makes it agree with the tag
index for some tags, atomically per call; every listener calls it for its event's tag before reading, so
listeners need no order among themselves. ``rebuild`` repairs the whole set (after lost events), and
readers must tolerate a member whose tag has just gone (check the tag index when it matters).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources

from redis.asyncio import Redis

from consumer.index import text
from consumer.rediskeys import RedisKeys
from consumer.semver import parse

_SYNC_BATCH = 500


def version_member(tag: str) -> str | None:
    """The version index member of ``tag``, or None when the tag is not a semantic version."""
    version = parse(tag)
    return None if version is None else f"{version.sort_key} {tag}"


def member_tag(member: bytes | str) -> str:
    """The tag of a version index member."""
    return text(member).rsplit(" ", 1)[1]


class VersionIndex:
    """Reads and repairs the version index of each repository."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        lua = (resources.files("consumer") / "lua" / "version_sync.lua").read_text()
        self._sync = redis.register_script(lua)

    async def sync(self, repository: str, tags: Iterable[str]) -> None:
        """Add each version tag that is live in the tag index, remove each that is not."""
        pairs: list[str] = []
        for tag in tags:
            member = version_member(tag)
            if member is not None:
                pairs += [tag, member]
        await self._sync_pairs(repository, pairs)

    async def _sync_pairs(self, repository: str, pairs: list[str]) -> None:
        repo = self._keys.repo(repository)
        for start in range(0, len(pairs), 2 * _SYNC_BATCH):
            await self._sync(keys=[repo.tags, repo.versions], args=pairs[start : start + 2 * _SYNC_BATCH])

    async def rebuild(self, repository: str) -> int:
        """Repair the whole set from the tag index (O(n)); returns how many members were wrong.

        Every fix goes through the atomic sync, so a push or delete racing the rebuild is not undone.
        """
        repo = self._keys.repo(repository)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrange(repo.tags, 0, -1)
            pipe.zrange(repo.versions, 0, -1)
            live_raw, members_raw = await pipe.execute()
        wanted = {m: tag for tag in map(text, live_raw) if (m := version_member(tag)) is not None}
        present = {text(m) for m in members_raw}
        pairs: list[str] = []
        for member in present.symmetric_difference(wanted):
            pairs += [member_tag(member), member]
        await self._sync_pairs(repository, pairs)
        return len(pairs) // 2

    async def highest(self, repository: str, count: int, offset: int = 0) -> list[str]:
        """Up to ``count`` version tags, highest first, skipping the ``offset`` highest."""
        if count <= 0:
            return []
        members: list[bytes] = await self._redis.zrevrange(  # type: ignore[assignment]
            self._keys.repo(repository).versions, offset, offset + count - 1
        )
        return [member_tag(m) for m in members]

    async def rank(self, repository: str, tag: str) -> int | None:
        """How many versions are above ``tag`` (0 for the highest), or None when it is not in the set."""
        member = version_member(tag)
        if member is None:
            return None
        rank: int | None = await self._redis.zrevrank(  # type: ignore[assignment]
            self._keys.repo(repository).versions, member
        )
        return rank
