"""Every connection the consumer opens to Redis carries a name an operator can find in ``CLIENT LIST``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from consumer.app import create_app
from consumer.connections import handshake, open_redis
from consumer.metrics import Metrics
from consumer.settings import Settings
from tests.conftest import load_envelopes


async def _clients(redis: Redis) -> dict[int, str]:
    return {int(c["id"]): c["name"] for c in await redis.client_list()}


async def test_the_service_names_its_three_kinds_of_connection(
    aiohttp_client: Callable[..., Any], settings: Settings, auth_headers: dict[str, str], redis_client: Redis
) -> None:
    before = await _clients(redis_client)
    client = await aiohttp_client(create_app(settings, metrics=Metrics(process=False)))  # subscribes at start
    envelope = load_envelopes("distribution-2.8.2/01-push-oci-single-arch-tag")[-1]
    resp = await client.post("/v1/events", data=json.dumps(envelope["body"]),  # the webhook's own connection
                             headers={**auth_headers, "Content-Type": envelope["headers"]["Content-Type"]})
    assert resp.status == 200
    assert (await client.get("/readyz")).status == 200  # the pool
    opened = {name for id_, name in (await _clients(redis_client)).items() if id_ not in before}
    assert opened == {"registry-consumer", "registry-consumer:webhook", "registry-consumer:revocations"}


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
