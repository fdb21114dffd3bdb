"""Every connection the consumer opens to Redis carries a name an operator can find in ``CLIENT LIST``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions
from redis.asyncio import Redis

from consumer.app import create_app
from consumer.appkeys import REVOCATIONS
from consumer.connections import handshake, open_redis
from consumer.metrics import Metrics
from consumer.rediskeys import RedisKeys
from consumer.settings import Settings
from tests.conftest import load_envelopes
from tests.support.redis_server import RedisServer
from tests.support.tls import make_tls_files


async def _clients(redis: Redis) -> dict[int, str]:
    return {int(c["id"]): c["name"] for c in await redis.client_list()}


async def _use_every_connection(aiohttp_client: Callable[..., Any], settings: Settings,
                                headers: dict[str, str]) -> Any:
    client = await aiohttp_client(create_app(settings, metrics=Metrics(process=False)))  # subscribes at start
    envelope = load_envelopes("distribution-2.8.2/01-push-oci-single-arch-tag")[-1]
    resp = await client.post("/v1/events", data=json.dumps(envelope["body"]),  # the webhook's own connection
                             headers={**headers, "Content-Type": envelope["headers"]["Content-Type"]})
    assert resp.status == 200
    assert (await resp.json())["applied"] == 1
    assert (await client.get("/readyz")).status == 200  # the pool
    return client


async def test_the_service_names_its_three_kinds_of_connection(
    aiohttp_client: Callable[..., Any], settings: Settings, auth_headers: dict[str, str], redis_client: Redis
) -> None:
    before = await _clients(redis_client)
    await _use_every_connection(aiohttp_client, settings, auth_headers)
    opened = {name for id_, name in (await _clients(redis_client)).items() if id_ not in before}
    assert opened == {"registry-consumer", "registry-consumer:webhook", "registry-consumer:revocations"}


async def test_a_tls_redis_serves_every_connection(
    aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings], auth_headers: dict[str, str],
    tmp_path: Path,
) -> None:
    """rediss://: the webhook's pipelined connection and the revocation channel speak TLS too (no fallback)."""
    with RedisServer(tmp_path / "redis", tls=make_tls_files(tmp_path / "tls")) as server:
        settings = make_settings(redis_url=server.url, redis_timeout_seconds=2.0)
        client = await _use_every_connection(aiohttp_client, settings, auth_headers)
        assert client.app[REVOCATIONS]._subscribed  # revocation checks are cached again
        async with Redis.from_url(server.url) as redis:
            names = set((await _clients(redis)).values())
            assert {"registry-consumer", "registry-consumer:webhook", "registry-consumer:revocations"} <= names
            assert await redis.zcard(RedisKeys(settings.key_prefix).repo("myapp1").tags) == 1
        await client.close()


async def test_one_off_commands_name_their_role(settings: Settings, redis_client: Redis) -> None:
    cli = open_redis(settings, role="cli")
    try:
        assert await cli.client_getname() == "registry-consumer:cli"
    finally:
        await cli.aclose()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, []),
        ({"client_name": "n"}, [("CLIENT", "SETNAME", "n")]),
        ({"password": "p", "db": 3}, [("AUTH", "p"), ("SELECT", 3)]),
        ({"username": "u", "password": "p", "client_name": "n"}, [("AUTH", "u", "p"), ("CLIENT", "SETNAME", "n")]),
    ],
)
def test_handshake_sends_auth_then_select_then_the_name(kwargs: dict[str, Any], expected: list[tuple[Any, ...]]) -> None:
    assert handshake(**kwargs) == expected


async def test_an_acl_user_without_client_setname_works_with_the_name_turned_off(
    aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings], auth_headers: dict[str, str],
    tmp_path: Path,
) -> None:
    acl = ["--user", "default", "off", "--user", "rc", "on", ">rc-pass", "~*", "&*", "+@all", "-client"]
    with RedisServer(tmp_path / "redis", extra_args=acl) as server:
        url = server.url.replace("redis://", "redis://rc:rc-pass@")
        named = open_redis(make_settings(redis_url=url), role="check")
        try:
            with pytest.raises(redis.exceptions.RedisError):  # CLIENT SETNAME is refused: so is the connection
                await named.ping()
        finally:
            await named.aclose()
        settings = make_settings(redis_url=url, redis_client_name="")
        await _use_every_connection(aiohttp_client, settings, auth_headers)
        for role in (None, "cli", "reconcile", "check"):  # the one-off commands too
            unnamed = open_redis(settings, role=role)
            try:
                assert await unnamed.ping()
            finally:
                await unnamed.aclose()
