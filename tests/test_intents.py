"""Deletion intents on the real Redis: the consumer's own deletes are expected in any delivery order."""

from __future__ import annotations

import itertools
from dataclasses import replace

from redis.asyncio import Redis

from consumer.envelope import Change, ChangeKind
from consumer.index import TagIndex
from consumer.intents import EXPECTED, REPORTED, DeletionIntents
from consumer.rediskeys import RedisKeys

REPO = "team/app"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
_ids = itertools.count()


def _change(
    kind: ChangeKind, *, tag: str | None = None, digest: str | None = None, request: str = "req-1", ts: int = 0
) -> Change:
    action = "delete" if kind in (ChangeKind.TAG_DELETE, ChangeKind.DIGEST_DELETE) else "push"
    return Change(
        kind=kind,
        action=action,
        event_id=f"e{next(_ids)}",
        repository=REPO,
        timestamp_us=ts or next(_ids),
        tag=tag,
        digest=digest,
        request_id=request,
        actor="ci-bot",
    )


def _intents(redis_client: Redis, ttl: int = 600) -> DeletionIntents:
    return DeletionIntents(redis_client, RedisKeys("t"), ttl_seconds=ttl)


async def test_tag_intent_matches_once(redis_client: Redis) -> None:
    intents = _intents(redis_client)
    await intents.expect(REPO, tag="1.0")
    delete = _change(ChangeKind.TAG_DELETE, tag="1.0")
    assert await intents.consume(delete)
    assert not await intents.consume(replace(delete, event_id="again", request_id="req-2"))


async def test_unknown_deletes_are_not_expected(redis_client: Redis) -> None:
    intents = _intents(redis_client)
    await intents.expect(REPO, tag="1.0")
    assert not await intents.consume(_change(ChangeKind.TAG_DELETE, tag="2.0"))
    assert not await intents.consume(_change(ChangeKind.DIGEST_DELETE, digest=D1))
    assert not await intents.consume(replace(_change(ChangeKind.TAG_DELETE, tag="1.0"), repository="other/app"))


async def test_digest_delete_then_trailing_tag_deletes_of_the_same_request(redis_client: Redis) -> None:
    """The registry's order (2.8): the digest, then one tag delete per tag, all with one request id."""
    intents = _intents(redis_client)
    await intents.expect(REPO, digest=D1)  # the index knew no tags: only the request id can match them
    assert await intents.consume(_change(ChangeKind.DIGEST_DELETE, digest=D1, request="r-9"))
    assert await intents.request_state(REPO, "r-9") == EXPECTED
    assert await intents.consume(_change(ChangeKind.TAG_DELETE, tag="2.0", request="r-9"))
    assert await intents.consume(_change(ChangeKind.TAG_DELETE, tag="stable", request="r-9"))
    # Another request deleting a tag is not covered by that digest's request.
    assert not await intents.consume(_change(ChangeKind.TAG_DELETE, tag="other", request="r-10"))
    # The digest intent was shortened to the trailing window, not kept for the full TTL.
    assert 0 < await redis_client.ttl(RedisKeys("t").repo(REPO).intent_digest(D1)) <= 300


async def test_tag_deletes_before_the_digest_delete_match_through_the_tag_record(redis_client: Redis) -> None:
    """Delivery reordered: the per-tag event is handled first; the index's record of the tag still names D1."""
    keys = RedisKeys("t")
    index = TagIndex(redis_client, keys, dedup_ttl_seconds=600, tombstone_ttl_seconds=600)
    await index.apply(_change(ChangeKind.TAG_PUSH, tag="2.0", digest=D1, ts=10))
    await index.apply(_change(ChangeKind.TAG_PUSH, tag="3.0", digest=D2, ts=11))
    intents = _intents(redis_client)
    await intents.expect(REPO, digest=D1)
    tag_delete = _change(ChangeKind.TAG_DELETE, tag="2.0", request="r-1", ts=20)
    await index.apply(tag_delete)  # the record stays as a tombstone with its digest
    assert await index.last_digest(REPO, "2.0") == D1
    assert await intents.consume(tag_delete, await index.last_digest(REPO, "2.0"))
    assert not await intents.consume(tag_delete)  # without the digest, nothing links it to D1
    # A foreign delete of a tag on another digest is still unexpected.
    other = _change(ChangeKind.TAG_DELETE, tag="3.0", request="r-2", ts=21)
    await index.apply(other)
    assert not await intents.consume(other, await index.last_digest(REPO, "3.0"))
    assert await intents.consume(_change(ChangeKind.DIGEST_DELETE, digest=D1, request="r-1"))


async def test_expecting_a_digest_expects_the_tags_the_index_names(redis_client: Redis) -> None:
    intents = _intents(redis_client)
    await intents.expect(REPO, digest=D1, tags=["2.0", "stable"])
    assert await intents.consume(_change(ChangeKind.TAG_DELETE, tag="stable", request="unrelated"))


async def test_forget_withdraws(redis_client: Redis) -> None:
    intents = _intents(redis_client)
    await intents.expect(REPO, digest=D1, tags=["2.0"])
    assert await intents.is_expected(REPO, digest=D1)
    await intents.forget(REPO, digest=D1, tags=["2.0"])
    assert not await intents.is_expected(REPO, digest=D1)
    assert not await intents.consume(_change(ChangeKind.DIGEST_DELETE, digest=D1))
    assert not await intents.consume(_change(ChangeKind.TAG_DELETE, tag="2.0"))


async def test_intents_expire(redis_client: Redis) -> None:
    await _intents(redis_client, ttl=30).expect(REPO, tag="1.0")
    assert 0 < await redis_client.ttl(RedisKeys("t").repo(REPO).intent_tag("1.0")) <= 30


async def test_reported_requests(redis_client: Redis) -> None:
    intents = _intents(redis_client)
    assert await intents.request_state(REPO, "r-5") is None
    await intents.mark_reported(REPO, "r-5")
    assert await intents.request_state(REPO, "r-5") == REPORTED
    # A reported request never makes its trailing tag events expected.
    assert not await intents.consume(_change(ChangeKind.TAG_DELETE, tag="x", request="r-5"))
