"""Deletion intents: the consumer says what it is about to delete, so its own delete events are expected.

Write ``expect(...)`` *before* every DELETE the consumer sends (retention, and anything else that deletes);
call ``forget(...)`` when the DELETE did not happen (an error, or 404: no event will come). Each intent is a
Redis string with a TTL (``intent_ttl_seconds``), so one that is never matched disappears on its own.

Matching a delete event (``consume``), in any delivery order:

- a tag delete matches its tag intent (which is used up), or
- the intent of the digest the tag pointed at (the tag record keeps its last digest after the delete),
  because a digest delete makes the registry send one tag delete per tag it removed, or
- a request already judged ``expected``: the registry gives those per-tag events the digest delete's
  ``request.id``, and the consumer cannot know that id before sending, so it is learned from the digest's
  own event;
- a digest delete matches its digest intent. The intent is not used up at once (the per-tag events of
  the same request still need it) but shortened to ``trailing_seconds``.

A foreign digest delete is recorded as ``reported`` under its request id (see ``consumer.deletions``),
so its per-tag events are folded into the one report instead of counting again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Literal

from redis.asyncio import Redis

from consumer.envelope import Change, ChangeKind
from consumer.index import text
from consumer.rediskeys import RedisKeys

RequestState = Literal["expected", "reported"]
EXPECTED: RequestState = "expected"
REPORTED: RequestState = "reported"
DEFAULT_TRAILING_SECONDS = 300


class DeletionIntents:
    """Intent records of one Redis, per repository (keys share the repository's hash tag)."""

    def __init__(
        self, redis: Redis, keys: RedisKeys, *, ttl_seconds: int, trailing_seconds: int = DEFAULT_TRAILING_SECONDS
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl = ttl_seconds
        self._trailing = min(trailing_seconds, ttl_seconds)

    async def expect(
        self,
        repository: str,
        *,
        tag: str | None = None,
        digest: str | None = None,
        tags: Iterable[str] = (),
        ttl_seconds: int | None = None,
    ) -> None:
        """Record that the consumer is about to DELETE ``tag`` or ``digest`` in ``repository``.

        For a digest, pass in ``tags`` the tags the index says point at it: their delete events are then
        expected even if the index changes before they arrive.
        """
        if (tag is None) == (digest is None):
            raise ValueError("expect exactly one of tag= or digest=")
        repo = self._keys.repo(repository)
        ttl = ttl_seconds or self._ttl
        async with self._redis.pipeline(transaction=False) as pipe:
            if tag is not None:
                pipe.set(repo.intent_tag(tag), "1", ex=ttl)
            if digest is not None:
                pipe.set(repo.intent_digest(digest), json.dumps(sorted(set(tags))), ex=ttl)
                for t in set(tags):
                    pipe.set(repo.intent_tag(t), "1", ex=ttl)
            await pipe.execute()

    async def forget(
        self, repository: str, *, tag: str | None = None, digest: str | None = None, tags: Iterable[str] = ()
    ) -> None:
        """Withdraw intents whose DELETE was not sent or did not delete anything."""
        repo = self._keys.repo(repository)
        names = [repo.intent_tag(t) for t in {*tags, *([tag] if tag else [])}]
        if digest is not None:
            names.append(repo.intent_digest(digest))
        if names:
            await self._redis.delete(*names)

    async def is_expected(self, repository: str, *, tag: str | None = None, digest: str | None = None) -> bool:
        """Whether an intent for ``tag`` or ``digest`` is outstanding (without using it up)."""
        repo = self._keys.repo(repository)
        name = repo.intent_tag(tag) if tag is not None else repo.intent_digest(digest or "")
        return bool(await self._redis.exists(name))

    async def consume(self, change: Change, tag_digest: str | None = None) -> bool:
        """True when the delete event ``change`` was expected (see the module docstring).

        ``tag_digest``: for a tag delete, the digest the tag pointed at (``TagIndex.last_digest``), so that
        the per-tag events of an expected digest delete match even when they are handled first.
        """
        repo = self._keys.repo(change.repository)
        if change.kind is ChangeKind.DIGEST_DELETE and change.digest:
            key = repo.intent_digest(change.digest)
            if not await self._redis.exists(key):
                return False
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.expire(key, self._trailing, lt=True)
                if change.request_id:
                    pipe.set(repo.intent_request(change.request_id), EXPECTED, ex=self._trailing)
                await pipe.execute()
            return True
        if change.kind is not ChangeKind.TAG_DELETE or not change.tag:
            return False
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.getdel(repo.intent_tag(change.tag))
            pipe.get(repo.intent_request(change.request_id or ""))
            pipe.exists(repo.intent_digest(tag_digest or ""))
            tag_intent, request_state, digest_intent = await pipe.execute()
        if tag_intent is not None or (request_state is not None and text(request_state) == EXPECTED):
            return True
        return tag_digest is not None and bool(digest_intent)

    async def request_state(self, repository: str, request_id: str | None) -> RequestState | None:
        """How the events of registry request ``request_id`` were judged so far, if at all."""
        if not request_id:
            return None
        raw = await self._redis.get(self._keys.repo(repository).intent_request(request_id))
        if raw is None:
            return None
        return EXPECTED if text(raw) == EXPECTED else REPORTED

    async def mark_reported(self, repository: str, request_id: str | None) -> None:
        """Remember that a foreign request was reported, so its trailing per-tag events are not counted again."""
        if request_id:
            key = self._keys.repo(repository).intent_request(request_id)
            await self._redis.set(key, REPORTED, ex=self._trailing, nx=True)
