"""The tag index in Redis: applies registry events exactly once in effect, and answers queries.

Every change and its event's dedup marker are written by one Lua script, so the marker never
exists without the change. The scripts implement last-writer-wins per tag and per manifest by
event timestamp, with expiring tombstones for deletes, so any delivery order with any duplicates
converges to the state timestamp order gives.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from consumer.connections import Command
from consumer.envelope import Change, ChangeKind
from consumer.pipelining import RedisPyLink, SharedPipeline
from consumer.rediskeys import RedisKeys

_SCRIPTS = ("push_tag", "push_manifest", "delete_tag", "delete_digest", "pull", "mark")
_SCRIPT_FOR = {
    ChangeKind.TAG_PUSH: "push_tag",
    ChangeKind.MANIFEST_PUSH: "push_manifest",
    ChangeKind.TAG_DELETE: "delete_tag",
    ChangeKind.DIGEST_DELETE: "delete_digest",
    ChangeKind.PULL: "pull",
    ChangeKind.IGNORED: "mark",
}


def _load_lua(name: str) -> str:
    lua = resources.files("consumer") / "lua"
    return (lua / "prelude.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


def _iso(clock_us: str | None) -> str | None:
    if not clock_us:
        return None
    seconds, micros = divmod(int(clock_us), 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


def text(value: Any) -> str:
    """A Redis reply as text (replies are bytes; redis-py's types also allow str)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _json_strings(items: tuple[str, ...]) -> str:
    """A JSON list of strings; digests need no escaping, so the encoder is skipped for them (hot path)."""
    joined = '","'.join(items)
    if '"' in joined or "\\" in joined or not joined.isprintable():
        return json.dumps(list(items))
    return f'["{joined}"]'


def _int(value: Any) -> int | None:
    return int(value) if value not in (None, "") else None


@dataclass(frozen=True, slots=True)
class TagInfo:
    """A live tag as the index knows it."""

    tag: str
    digest: str
    media_type: str | None
    size: int | None
    pushed_at: str | None
    last_pulled_at: str | None
    actor: str | None
    pushed_at_us: int
    last_pulled_at_us: int | None = None


@dataclass(frozen=True, slots=True)
class ManifestInfo:
    """A live manifest, with the live tags that point at it."""

    digest: str
    media_type: str | None
    size: int | None
    pushed_at: str | None
    last_pulled_at: str | None
    tags: list[str]
    references: list[str]
    pushed_at_us: int | None = None


def _tag_info(name: str, raw: bytes | str) -> TagInfo:
    rec = json.loads(raw)
    return TagInfo(
        tag=name,
        digest=rec["d"],
        media_type=rec.get("mt") or None,
        size=_int(rec.get("sz")),
        pushed_at=_iso(rec.get("ts")),
        last_pulled_at=_iso(rec.get("pulled")),
        actor=rec.get("actor") or None,
        pushed_at_us=int(rec["ts"]),
        last_pulled_at_us=_int(rec.get("pulled")),
    )


def _manifest_info(digest: str, raw: bytes | str, tags: list[str]) -> ManifestInfo:
    rec = json.loads(raw)
    return ManifestInfo(
        digest=digest,
        media_type=rec.get("mt") or None,
        size=_int(rec.get("sz")),
        pushed_at=_iso(rec.get("ts")),
        last_pulled_at=_iso(rec.get("pulled")),
        tags=tags,
        references=json.loads(rec["refs"]) if rec.get("refs") else [],
        pushed_at_us=_int(rec.get("ts")),
    )


@dataclass(frozen=True, slots=True)
class IndexStats:
    repositories: int
    tags: int


class TagIndex:
    """Reads and writes one Redis's tag index; scripts are registered once, here."""

    def __init__(self, redis: Redis, keys: RedisKeys, *, dedup_ttl_seconds: int, tombstone_ttl_seconds: int,
                 pipeline: SharedPipeline | None = None):
        self._redis = redis
        self._keys = keys
        self._dedup_ttl = dedup_ttl_seconds
        self._tomb_ttl = tombstone_ttl_seconds
        self._scripts: dict[str, AsyncScript] = {n: redis.register_script(_load_lua(n)) for n in _SCRIPTS}
        # Events go through the app's shared pipeline (consumer.pipelining); reads use the client.
        self._pipeline = pipeline or SharedPipeline(RedisPyLink(redis))

    async def apply(self, change: Change) -> bool:
        """Apply one event; False when its id was already applied (a duplicate delivery)."""
        repo = self._keys.repo(change.repository)
        # An ignored event (blobs, mounts, HEADs: most of them) changes nothing, so its marker only tells a
        # duplicate from a first delivery in the counts; an hour covers the registry's redeliveries.
        marker_ttl = self._dedup_ttl if change.kind is not ChangeKind.IGNORED else min(self._dedup_ttl, 3600)
        args: list[str | int] = [marker_ttl, self._tomb_ttl, int(time.time())]
        ts = str(change.timestamp_us)
        size = "" if change.size is None else str(change.size)
        refs = _json_strings(change.references) if change.references else ""
        match change.kind:
            case ChangeKind.TAG_PUSH:
                args += [change.tag or "", change.digest or "", ts, change.media_type or "", size,
                         change.actor or "", refs]
            case ChangeKind.MANIFEST_PUSH:
                args += [change.digest or "", ts, change.media_type or "", size, refs]
            case ChangeKind.TAG_DELETE:
                args += [change.tag or "", ts]
            case ChangeKind.DIGEST_DELETE:
                args += [change.digest or "", ts]
            case ChangeKind.PULL:
                args += [change.tag or "", change.digest or "", ts]
        script = self._scripts[_SCRIPT_FOR[change.kind]]
        keys = repo.index_keys(change.event_id)
        commands: list[Command] = [("EVALSHA", script.sha, len(keys), *keys, *args)]
        if change.kind in (ChangeKind.TAG_PUSH, ChangeKind.MANIFEST_PUSH):
            # The catalogue is global (another slot), so it is kept outside the script; adding is
            # idempotent and the registry itself never forgets a repository either.
            commands.append(("ZADD", self._keys.repositories, 0, change.repository))
        replies = await self._pipeline.send(commands)
        if isinstance(replies[0], NoScriptError):
            # Redis restarted or its script cache was flushed: the script did not run, so load it and
            # send the same commands again (the catalogue add is idempotent).
            await self._redis.script_load(script.script)
            replies = await self._pipeline.send(commands)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return bool(replies[0])

    async def sweep_tombstones(self, repository: str, *, now: float | None = None, max_rounds: int = 256) -> int:
        """Forget the expired tombstones of ``repository``; returns how many sweeping rounds ran.

        Every index script forgets a few expired tombstones of its repository as it runs, so a busy
        repository needs nothing more; a quiet one (emptied by retention, say) would keep its dead records
        forever. This runs the same sweep (the ``mark`` script: the prelude's sweep, then a marker that lives
        a second) until none is left, 16 per round.
        """
        repo = self._keys.repo(repository)
        moment = int(now if now is not None else time.time())
        script = self._scripts["mark"]
        rounds = 0
        while rounds < max_rounds and await self._redis.zcount(repo.tombstones, "-inf", moment) > 0:
            keys = repo.index_keys(f"tombstone-sweep-{secrets.token_hex(8)}")
            await script(keys=keys, args=[1, self._tomb_ttl, moment])
            rounds += 1
        return rounds

    async def sweep_all_tombstones(self, *, now: float | None = None, batch: int = 200) -> int:
        """``sweep_tombstones`` for every repository of the catalogue; returns how many had something to forget."""
        swept, last = 0, None
        while names := await self.list_repositories(batch, last):
            for name in names:
                swept += await self.sweep_tombstones(name, now=now) > 0
            last = names[-1]
        return swept

    async def list_repositories(self, limit: int, last: str | None) -> list[str]:
        """Repository names after ``last`` in lexical order, like the registry's ``_catalog``."""
        start = f"({last}" if last else "-"
        names = await self._redis.zrangebylex(self._keys.repositories, start, "+", start=0, num=limit)
        return [text(n) for n in names]

    async def has_repository(self, repository: str) -> bool:
        return await self._redis.zscore(self._keys.repositories, repository) is not None

    async def list_tags(self, repository: str) -> list[TagInfo]:
        """Every live tag of ``repository``, sorted by name."""
        repo = self._keys.repo(repository)
        names = sorted(text(n) for n in await self._redis.zrange(repo.tags, 0, -1))
        if not names:
            return []
        tag_raw = await self._redis.hmget(repo.tag_records, names)
        return [_tag_info(name, raw) for name, raw in zip(names, tag_raw, strict=True) if raw is not None]

    async def get_tags(self, repository: str, names: list[str]) -> dict[str, TagInfo]:
        """The live tags among ``names`` (absent names are left out); O(len(names)) whatever the repository size."""
        if not names:
            return {}
        repo = self._keys.repo(repository)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zmscore(repo.tags, names)
            pipe.hmget(repo.tag_records, names)
            scores, tag_raw = await pipe.execute()
        return {
            name: _tag_info(name, raw)
            for name, score, raw in zip(names, scores, tag_raw, strict=True)
            if score is not None and raw is not None
        }

    async def get_manifest(self, repository: str, digest: str) -> ManifestInfo | None:
        """A live manifest and its tags, or None."""
        repo = self._keys.repo(repository)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zscore(repo.manifests, digest)
            pipe.hget(repo.manifest_records, digest)
            pipe.zrangebylex(repo.digest_tags, f"[{digest} ", f"({digest}!")
            live, raw, members = await pipe.execute()
        if live is None or raw is None:
            return None
        return _manifest_info(digest, raw, sorted(text(m).split(" ", 1)[1] for m in members))

    async def list_manifests(self, repository: str) -> list[ManifestInfo]:
        """Every live manifest of ``repository`` with its live tags, sorted by digest (O(manifests + tags))."""
        repo = self._keys.repo(repository)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrange(repo.manifests, 0, -1)
            pipe.zrange(repo.digest_tags, 0, -1)
            digests_raw, members = await pipe.execute()
        digests = sorted(text(d) for d in digests_raw)
        if not digests:
            return []
        tags: dict[str, list[str]] = {}
        for member in members:
            digest, tag = text(member).split(" ", 1)
            tags.setdefault(digest, []).append(tag)
        records = await self._redis.hmget(repo.manifest_records, digests)
        return [
            _manifest_info(digest, raw, sorted(tags.get(digest, [])))
            for digest, raw in zip(digests, records, strict=True)
            if raw is not None
        ]

    async def newest_tags(self, repository: str, count: int) -> list[str]:
        """The ``count`` most recently pushed live tags, newest first (O(log n + count))."""
        names = await self._redis.zrevrange(self._keys.repo(repository).tags, 0, count - 1)
        return [text(n) for n in names]

    async def last_digest(self, repository: str, tag: str) -> str | None:
        """The digest ``tag`` points at, or pointed at when it was deleted (until its tombstone is forgotten)."""
        raw = await self._redis.hget(self._keys.repo(repository).tag_records, tag)
        digest = json.loads(raw).get("d") if raw is not None else None
        return str(digest) if digest else None

    async def deleted_tags(self, repository: str, digest: str) -> list[str]:
        """The tags the newest delete of manifest ``digest`` took with it (its record keeps them as ``gone``).

        Listeners run after the delete, when the live set no longer says which tags the digest had.
        """
        raw = await self._redis.hget(self._keys.repo(repository).manifest_records, digest)
        gone = json.loads(raw).get("gone") if raw is not None else None
        return sorted(str(gone).split()) if gone else []

    async def stats(self, batch: int = 500) -> IndexStats:
        """Counts for the index gauges; O(repositories) ZCARDs, pipelined in batches."""
        repos = 0
        tags = 0
        last: str | None = None
        while True:
            names = await self.list_repositories(batch, last)
            if not names:
                break
            repos += len(names)
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.zcard(self._keys.repo(name).tags)
                tags += sum(await pipe.execute())
            last = names[-1]
        return IndexStats(repositories=repos, tags=tags)
