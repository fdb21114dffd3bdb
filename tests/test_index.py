"""Index semantics, and the convergence property: any delivery order with any duplicates gives the
state that timestamp order gives."""

from __future__ import annotations

import asyncio
import itertools
import random
from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from consumer.envelope import Change, ChangeKind, parse_event
from consumer.index import TagIndex
from consumer.pipelining import SharedPipeline
from consumer.rediskeys import RedisKeys
from tests.conftest import all_scenarios, load_envelopes

REPO = "team/app"
DIGESTS = [f"sha256:{c * 64}" for c in "abcd"]
TAGS = ["1.0", "2.0", "latest", "stable"]
_ids = itertools.count()


def _template(action: str, *, tag: bool, method: str = "PUT") -> dict[str, Any]:
    """A real recorded event of the wanted shape, to vary."""
    for scenario in all_scenarios():
        if "3.x" in scenario:
            continue
        for envelope in load_envelopes(scenario):
            event = envelope["body"]["events"][0]
            target = event["target"]
            is_blob = target.get("mediaType") == "application/octet-stream"
            if (event["action"] == action and bool(target.get("tag")) == tag and not is_blob
                    and event["request"]["method"] == method):
                return event
    raise LookupError((action, tag, method))


TEMPLATES = {
    ChangeKind.TAG_PUSH: _template("push", tag=True),
    ChangeKind.MANIFEST_PUSH: _template("push", tag=False),
    ChangeKind.TAG_DELETE: _template("delete", tag=True, method="DELETE"),
    ChangeKind.DIGEST_DELETE: _template("delete", tag=False, method="DELETE"),
    ChangeKind.PULL: _template("pull", tag=True, method="GET"),
}


def make_change(kind: ChangeKind, tag: str | None, digest: str | None, second: int, micro: int = 0) -> Change:
    """Build a change the way the webhook does: from a real envelope shape, validated and classified."""
    event = {**TEMPLATES[kind], "id": f"ev-{next(_ids)}", "timestamp": f"2026-12-04T10:00:{second:02d}.{micro:06d}Z"}
    target = {**event["target"], "repository": REPO}
    target.pop("tag", None)
    target.pop("digest", None)
    if tag is not None:
        target["tag"] = tag
    if digest is not None:
        target["digest"] = digest
    event["target"] = target
    change = parse_event(event)
    assert change.kind is kind
    return change


async def snapshot(index: TagIndex) -> dict[str, Any]:
    tags = {t.tag: (t.digest, t.pushed_at, t.last_pulled_at) for t in await index.list_tags(REPO)}
    manifests = {}
    for digest in DIGESTS:
        info = await index.get_manifest(REPO, digest)
        if info is not None:
            manifests[digest] = (info.tags, info.pushed_at, info.last_pulled_at)
    return {"tags": tags, "manifests": manifests}


def new_index(redis: Redis, prefix: str) -> TagIndex:
    return TagIndex(redis, RedisKeys(prefix), dedup_ttl_seconds=3600, tombstone_ttl_seconds=3600)


async def apply_all(index: TagIndex, changes: list[Change]) -> None:
    for change in changes:
        await index.apply(change)


async def test_tag_push_then_move_updates_both_digests(redis_client) -> None:
    index = new_index(redis_client, "t1")
    await apply_all(index, [make_change(ChangeKind.TAG_PUSH, "latest", DIGESTS[0], 1),
                            make_change(ChangeKind.TAG_PUSH, "latest", DIGESTS[1], 2)])
    assert (await index.get_manifest(REPO, DIGESTS[0])).tags == []  # type: ignore[union-attr]
    assert (await index.get_manifest(REPO, DIGESTS[1])).tags == ["latest"]  # type: ignore[union-attr]


async def test_bulk_and_by_name_reads_agree_with_the_single_reads(redis_client) -> None:
    index = new_index(redis_client, "t7")
    await apply_all(index, [make_change(ChangeKind.TAG_PUSH, "1.0", DIGESTS[0], 1),
                            make_change(ChangeKind.TAG_PUSH, "2.0", DIGESTS[0], 2),
                            make_change(ChangeKind.MANIFEST_PUSH, None, DIGESTS[1], 3),
                            make_change(ChangeKind.PULL, "1.0", DIGESTS[0], 4)])
    by_name = await index.get_tags(REPO, ["2.0", "gone", "1.0"])
    assert set(by_name) == {"1.0", "2.0"}
    assert list(by_name.values()) == [t for t in await index.list_tags(REPO) if t.tag in by_name][::-1]
    assert by_name["1.0"].last_pulled_at_us is not None and by_name["2.0"].last_pulled_at_us is None
    manifests = await index.list_manifests(REPO)
    assert manifests == [await index.get_manifest(REPO, d) for d in DIGESTS[:2]]
    assert [m.tags for m in manifests] == [["1.0", "2.0"], []]
    assert manifests[1].pushed_at_us is not None


async def test_stale_delete_does_not_remove_a_newer_push(redis_client) -> None:
    index = new_index(redis_client, "t2")
    # Delivered out of order: the push (t=5) came after the delete (t=3) in time, but arrives first.
    await apply_all(index, [make_change(ChangeKind.TAG_PUSH, "1.0", DIGESTS[0], 5),
                            make_change(ChangeKind.TAG_DELETE, "1.0", None, 3),
                            make_change(ChangeKind.DIGEST_DELETE, None, DIGESTS[0], 4)])
    assert [t.tag for t in await index.list_tags(REPO)] == ["1.0"]


async def test_delete_arriving_before_its_push_wins(redis_client) -> None:
    index = new_index(redis_client, "t3")
    await apply_all(index, [make_change(ChangeKind.DIGEST_DELETE, None, DIGESTS[0], 9),
                            make_change(ChangeKind.TAG_PUSH, "1.0", DIGESTS[0], 5),
                            make_change(ChangeKind.TAG_PUSH, "2.0", DIGESTS[0], 10)])
    assert [t.tag for t in await index.list_tags(REPO)] == ["2.0"]  # pushed after the delete: back alive
    assert (await index.get_manifest(REPO, DIGESTS[0])).tags == ["2.0"]  # type: ignore[union-attr]


async def test_dedup_marker_and_change_are_one(redis_client) -> None:
    index = new_index(redis_client, "t4")
    change = make_change(ChangeKind.TAG_PUSH, "1.0", DIGESTS[0], 1)
    assert await index.apply(change) is True
    assert await index.apply(change) is False
    marker = RedisKeys("t4").repo(REPO).event(change.event_id)
    assert 3590 < await redis_client.ttl(marker) <= 3600


async def test_one_round_trip_per_event_and_a_flushed_script_cache_is_reloaded(redis_client) -> None:
    index = new_index(redis_client, "t6")
    await redis_client.config_resetstat()
    await index.apply(make_change(ChangeKind.TAG_PUSH, "1.0", DIGESTS[0], 1))
    await redis_client.script_flush()  # what a Redis restart does to the script cache
    second = make_change(ChangeKind.TAG_PUSH, "2.0", DIGESTS[1], 2)
    assert await index.apply(second) is True
    assert await index.apply(second) is False
    assert [t.tag for t in await index.list_tags(REPO)] == ["1.0", "2.0"]
    stats = await redis_client.info("commandstats")
    assert "cmdstat_script|exists" not in stats  # no SCRIPT EXISTS round trip before each event


async def test_concurrent_events_share_one_round_trip_and_dedup_still_holds(redis_client) -> None:
    pipeline = SharedPipeline.over(redis_client)  # what the app gives the index: its own lean connection
    try:
        index = TagIndex(redis_client, RedisKeys("t7"), dedup_ttl_seconds=3600, tombstone_ttl_seconds=3600,
                         pipeline=pipeline)
        before = await redis_client.info("stats")
        changes = [make_change(ChangeKind.TAG_PUSH, f"v{i}", DIGESTS[i % 4], 1, i) for i in range(40)]
        # Every event twice in the same loop turn: exactly one of each pair may apply.
        results = await asyncio.gather(*(index.apply(c) for c in changes + changes))
        assert sum(results) == 40
        assert all(results[i] != results[i + 40] for i in range(40))
        assert len(await index.list_tags(REPO)) == 40
        after = await redis_client.info("stats")
        # 80 concurrent applies went through one new connection, in one round trip's worth of commands.
        assert after["total_connections_received"] - before["total_connections_received"] == 1
    finally:
        await pipeline.aclose()


async def test_tombstones_are_forgotten_after_their_ttl(redis_client) -> None:
    index = TagIndex(redis_client, RedisKeys("t5"), dedup_ttl_seconds=60, tombstone_ttl_seconds=-10)
    await apply_all(index, [make_change(ChangeKind.TAG_PUSH, "1.0", DIGESTS[0], 1),
                            make_change(ChangeKind.TAG_DELETE, "1.0", None, 2)])
    keys = RedisKeys("t5").repo(REPO)
    await index.apply(make_change(ChangeKind.MANIFEST_PUSH, None, DIGESTS[1], 3))  # any script sweeps
    assert await redis_client.hexists(keys.tag_records, "1.0") == 0


EVENT = st.one_of(
    st.tuples(st.just(ChangeKind.TAG_PUSH), st.sampled_from(TAGS), st.sampled_from(DIGESTS)),
    st.tuples(st.just(ChangeKind.MANIFEST_PUSH), st.none(), st.sampled_from(DIGESTS)),
    st.tuples(st.just(ChangeKind.TAG_DELETE), st.sampled_from(TAGS), st.none()),
    st.tuples(st.just(ChangeKind.DIGEST_DELETE), st.none(), st.sampled_from(DIGESTS)),
    st.tuples(st.just(ChangeKind.PULL), st.sampled_from(TAGS), st.sampled_from(DIGESTS)),
)
_run = itertools.count()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    specs=st.lists(st.tuples(EVENT, st.integers(0, 20)), min_size=1, max_size=24),
    seed=st.integers(0, 2**32),
    duplicates=st.integers(0, 6),
)
def test_any_order_with_duplicates_converges_to_timestamp_order(redis_url: str, specs, seed, duplicates) -> None:
    # Small clock domain on purpose: equal timestamps exercise the tie-breaks.
    changes = [make_change(kind, tag, digest, second) for (kind, tag, digest), second in specs]
    rng = random.Random(seed)
    shuffled = changes + [rng.choice(changes) for _ in range(duplicates)]
    rng.shuffle(shuffled)
    in_time_order = sorted(changes, key=lambda c: c.timestamp_us)
    run = next(_run)

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        async with Redis.from_url(redis_url) as redis:
            reference = new_index(redis, f"ref{run}")
            candidate = new_index(redis, f"cand{run}")
            await apply_all(reference, in_time_order)
            await apply_all(candidate, shuffled)
            return await snapshot(reference), await snapshot(candidate)

    expected, actual = asyncio.run(go())
    assert actual == expected


def test_timestamps_keep_microseconds_exactly() -> None:
    change = make_change(ChangeKind.TAG_PUSH, "1.0", DIGESTS[0], 7, 123456)
    assert change.timestamp_us % 1_000_000 == 123456
    later = replace(change, timestamp_us=change.timestamp_us + 1)
    assert later.timestamp_us > change.timestamp_us


async def test_references_round_trip_whatever_their_characters(redis_client) -> None:
    """References are stored as a JSON list; digests skip the encoder, anything else must still round-trip."""
    index = new_index(redis_client, "t8")
    odd = ('sha256:plain', 'with"quote', "back\\slash", "new\nline", "caf\u00e9")
    for n, refs in enumerate([odd[:1], odd]):
        change = replace(make_change(ChangeKind.MANIFEST_PUSH, None, DIGESTS[n], 1), references=refs)
        assert await index.apply(change) is True
        info = await index.get_manifest(REPO, DIGESTS[n])
        assert info is not None and info.references == list(refs)


async def test_a_quiet_repositorys_expired_tombstones_are_swept(redis_client) -> None:
    """Events forget expired tombstones only in their own repository: a quiet one needs the periodic sweep."""
    import time

    keys = RedisKeys("t9")
    index = TagIndex(redis_client, keys, dedup_ttl_seconds=3600, tombstone_ttl_seconds=60)
    for i in range(40):  # more than one round's worth (16)
        await index.apply(make_change(ChangeKind.TAG_PUSH, f"t{i}", DIGESTS[0], 1, i))
        await index.apply(make_change(ChangeKind.TAG_DELETE, f"t{i}", None, 2, i))
    await index.apply(make_change(ChangeKind.TAG_PUSH, "live", DIGESTS[1], 3))
    repo = keys.repo(REPO)
    assert await redis_client.zcard(repo.tombstones) == 40
    assert await index.sweep_all_tombstones(now=time.time() + 30) == 0  # not expired yet: nothing goes
    assert await redis_client.hlen(repo.tag_records) == 41
    assert await index.sweep_all_tombstones(now=time.time() + 61) == 1
    assert await redis_client.zcard(repo.tombstones) == 0
    assert await redis_client.hkeys(repo.tag_records) == [b"live"]
    assert [t.tag for t in await index.list_tags(REPO)] == ["live"]


async def test_a_tags_last_pull_is_of_the_image_it_names_now(redis_client) -> None:
    index = new_index(redis_client, "t10")

    async def last_pulled() -> int | None:
        (tag,) = [t for t in await index.list_tags(REPO) if t.tag == "1.0"]
        return tag.last_pulled_at_us

    x, y = DIGESTS[0], DIGESTS[1]
    await index.apply(make_change(ChangeKind.TAG_PUSH, "1.0", x, 1))
    await index.apply(make_change(ChangeKind.PULL, "1.0", x, 2))
    await index.apply(make_change(ChangeKind.TAG_DELETE, "1.0", None, 3))
    await index.apply(make_change(ChangeKind.TAG_PUSH, "1.0", x, 4))  # re-created: the old life's pull is not its
    assert await last_pulled() is None
    await index.apply(make_change(ChangeKind.TAG_PUSH, "1.0", y, 5))  # moved to another image
    await index.apply(make_change(ChangeKind.PULL, "1.0", y, 7))  # delivered before ...
    await index.apply(make_change(ChangeKind.PULL, "1.0", x, 6, 500))  # ... a late pull of the old image
    pulled = await last_pulled()
    assert pulled is not None and pulled == make_change(ChangeKind.PULL, "1.0", y, 7).timestamp_us


async def test_an_ignored_events_marker_lives_an_hour_an_applied_ones_the_dedup_ttl(redis_client) -> None:
    keys = RedisKeys("t11")
    index = TagIndex(redis_client, keys, dedup_ttl_seconds=7 * 86400, tombstone_ttl_seconds=3600)
    blob = replace(make_change(ChangeKind.TAG_PUSH, "1.0", DIGESTS[0], 1), kind=ChangeKind.IGNORED, event_id="blob")
    push = replace(make_change(ChangeKind.TAG_PUSH, "1.0", DIGESTS[0], 2), event_id="push")
    assert await index.apply(blob) and await index.apply(push)
    assert not await index.apply(blob)  # still a duplicate while its marker lives
    assert 3500 < await redis_client.ttl(keys.repo(REPO).event("blob")) <= 3600
    assert await redis_client.ttl(keys.repo(REPO).event("push")) > 6 * 86400


async def test_a_record_from_before_per_digest_pulls_keeps_its_last_pull(redis_client) -> None:
    """Tag records written by the earlier scripts have `pulled` and no `pulls`: nothing may rewind it."""
    import json

    index = new_index(redis_client, "t12")
    x, y = DIGESTS[0], DIGESTS[1]
    await index.apply(make_change(ChangeKind.TAG_PUSH, "1.0", x, 1))
    late = make_change(ChangeKind.PULL, "1.0", x, 30)
    repo = RedisKeys("t12").repo(REPO)
    record = json.loads(await redis_client.hget(repo.tag_records, "1.0"))
    record.pop("pulls", None)
    record["pulled"] = str(late.timestamp_us)  # as the earlier pull.lua left it
    await redis_client.hset(repo.tag_records, "1.0", json.dumps(record))
    await index.apply(make_change(ChangeKind.PULL, "1.0", x, 10))  # an older pull, delivered late
    await index.apply(make_change(ChangeKind.PULL, "1.0", y, 20))  # a stray pull naming another digest
    (tag,) = await index.list_tags(REPO)
    assert tag.last_pulled_at_us == late.timestamp_us
