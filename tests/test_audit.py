"""The audit log on the real Redis: newest first, filters, pagination, bounded retention, and the API."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from consumer.appkeys import AUDIT
from consumer.audit import SCAN_BOUND, AuditLog
from consumer.rediskeys import RedisKeys
from consumer.settings import AuditSettings


def _log(redis_client: Redis, **settings: Any) -> AuditLog:
    return AuditLog(redis_client, RedisKeys("t"), AuditSettings(**settings))


async def test_records_come_back_newest_first_with_every_field(redis_client: Redis) -> None:
    audit = _log(redis_client)
    await audit.record("latest_fix", "team/app", tag="latest", digest="sha256:" + "a" * 64, detail="moved")
    await audit.record(
        "unexpected_deletion",
        "team/app",
        tag="1.0",
        actor="ci-bot",
        addr="10.0.0.7:5123",
        user_agent="curl/8",
        protected=True,
    )
    records, cursor = await audit.page()
    assert cursor is None
    assert [r.kind for r in records] == ["unexpected_deletion", "latest_fix"]
    first = records[0]
    assert (first.repository, first.tag, first.actor, first.addr, first.user_agent, first.protected) == (
        "team/app",
        "1.0",
        "ci-bot",
        "10.0.0.7:5123",
        "curl/8",
        True,
    )
    assert first.digest is None and first.detail is None
    assert first.time.endswith("Z") and first.time[:2] == "20"
    assert records[1].protected is False and records[1].detail == "moved"


async def test_filters_by_repository_and_kind(redis_client: Redis) -> None:
    audit = _log(redis_client)
    for i in range(3):
        await audit.record("latest_stale", "a", detail=str(i))
        await audit.record("unexpected_deletion", "b", tag=str(i))
        await audit.record("unexpected_deletion", "a", tag=str(i))
    by_repo, _ = await audit.page(repository="a")
    assert [r.kind for r in by_repo] == ["unexpected_deletion", "latest_stale"] * 3
    by_kind, _ = await audit.page(kind="unexpected_deletion")
    assert [(r.repository, r.tag) for r in by_kind] == [
        ("a", "2"),
        ("b", "2"),
        ("a", "1"),
        ("b", "1"),
        ("a", "0"),
        ("b", "0"),
    ]
    both, _ = await audit.page(repository="a", kind="latest_stale")
    assert [r.detail for r in both] == ["2", "1", "0"]
    assert (await audit.page(repository="nobody"))[0] == []


async def _all_pages(audit: AuditLog, **query: Any) -> tuple[list[str], int]:
    seen: list[str] = []
    pages = 0
    cursor = None
    while True:
        records, cursor = await audit.page(last=cursor, **query)
        pages += 1
        seen += [r.detail or "" for r in records]
        if cursor is None:
            return seen, pages


async def test_pagination_visits_every_record_once(redis_client: Redis) -> None:
    audit = _log(redis_client)
    for i in range(7):
        await audit.record("reconcile_repair", "r", detail=str(i))
        await audit.record("latest_fix", "r", detail=f"x{i}")
    seen, pages = await _all_pages(audit, repository="r", kind="reconcile_repair", n=3)
    assert seen == [str(i) for i in reversed(range(7))]
    assert pages == 3
    seen, _ = await _all_pages(audit, n=5)
    assert len(seen) == 14 and len(set(seen)) == 14


async def test_filtered_scan_is_bounded_and_resumable(redis_client: Redis) -> None:
    audit = _log(redis_client)
    await audit.record("actor_revoked", "r", detail="old")
    async with redis_client.pipeline(transaction=False) as pipe:
        for _ in range(SCAN_BOUND + 10):
            pipe.xadd(RedisKeys("t").repo("r").audit, {"kind": "latest_fix", "repository": "r", "protected": "0"})
        await pipe.execute()
    records, cursor = await audit.page(repository="r", kind="actor_revoked", n=10)
    assert records == [] and cursor is not None  # bound reached: an empty page that says where to go on
    records, cursor = await audit.page(repository="r", kind="actor_revoked", n=10, last=cursor)
    assert [r.detail for r in records] == ["old"] and cursor is None


async def test_streams_are_capped_and_repository_streams_expire(redis_client: Redis) -> None:
    audit = _log(redis_client, max_entries=100, repository_max_entries=10, max_age_seconds=3600)
    for i in range(400):
        await audit.record("latest_fix", "r", detail=str(i))
    keys = RedisKeys("t")
    # MAXLEN ~ trims whole macro-nodes: about the cap, never unbounded.
    assert await redis_client.xlen(keys.audit) < 250
    assert await redis_client.xlen(keys.repo("r").audit) < 150
    assert 0 < await redis_client.ttl(keys.repo("r").audit) <= 3600


async def test_old_records_are_trimmed_by_age(redis_client: Redis) -> None:
    keys = RedisKeys("t")
    for stream in (keys.audit, keys.audit_kind("latest_fix")):
        async with redis_client.pipeline(transaction=False) as pipe:
            for i in range(300):
                pipe.xadd(stream, {"kind": "latest_fix", "repository": "r"}, id=f"1000-{i}")  # 1970
            await pipe.execute()
    await _log(redis_client).record("latest_fix", "r", detail="new")
    assert await redis_client.xlen(keys.audit) < 150
    records, _ = await _log(redis_client).page(kind="latest_fix", n=1)
    assert records[0].detail == "new"


async def test_audit_api(client: TestClient[Any, Any], auth_headers: dict[str, str], make_token: Any) -> None:
    audit = client.app[AUDIT]
    for i in range(3):
        await audit.record("unexpected_deletion", "team/app", tag=f"t{i}", actor="mallory", protected=i == 0)
    await audit.record("latest_fix", "other", tag="latest")
    resp = await client.get("/v1/audit?repository=team/app&kind=unexpected_deletion&n=2", headers=auth_headers)
    assert resp.status == 200
    body = await resp.json()
    assert [r["tag"] for r in body["records"]] == ["t2", "t1"]
    assert set(body["records"][0]) == {
        "time",
        "kind",
        "repository",
        "tag",
        "digest",
        "actor",
        "addr",
        "user_agent",
        "protected",
        "detail",
    }
    resp = await client.get(f"/v1/audit?repository=team/app&n=2&last={body['next']}", headers=auth_headers)
    body = await resp.json()
    assert [(r["tag"], r["protected"]) for r in body["records"]] == [("t0", True)] and body["next"] is None
    assert [r["kind"] for r in (await (await client.get("/v1/audit", headers=auth_headers)).json())["records"]] == [
        "latest_fix",
        "unexpected_deletion",
        "unexpected_deletion",
        "unexpected_deletion",
    ]
    for query in ("kind=nope", "last=abc", "n=0"):
        resp = await client.get(f"/v1/audit?{query}", headers=auth_headers)
        assert resp.status == 400, query
    assert (await client.get("/v1/audit")).status == 401
    resp = await client.get("/v1/audit", headers={"Authorization": f"Bearer {make_token(scope='events:write')}"})
    assert resp.status == 403
