"""The token administration API: RFC 7009 revocation (+ JSON forms), RFC 7662 introspection, the list."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from consumer.app import create_app
from consumer.metrics import Metrics
from consumer.settings import Settings
from consumer.tokens import mint
from tests.conftest import JWT_SECRET
from tests.support.registry import TokenIssuer, repository_access

Client = TestClient[Any, Any]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def admin(make_token: Callable[..., str]) -> dict[str, str]:
    return bearer(make_token(sub="admin", scope="tokens:admin"))


@pytest.fixture
def introspector(make_token: Callable[..., str]) -> dict[str, str]:
    return bearer(make_token(sub="gateway", scope="tokens:introspect"))


async def introspect(client: Client, headers: dict[str, str], token: str) -> dict[str, Any]:
    resp = await client.post("/v1/tokens/introspect", data={"token": token}, headers=headers)
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = await resp.json()
    return body


# --- scopes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("POST", "/v1/tokens/revoke", "tokens:admin"),
        ("GET", "/v1/tokens/revocations", "tokens:admin"),
        ("POST", "/v1/tokens/introspect", "tokens:introspect"),
    ],
)
async def test_each_route_needs_its_scope(client: Client, make_token: Callable[..., str], metrics: Metrics,
                                          method: str, path: str, scope: str) -> None:
    assert (await client.request(method, path)).status == 401
    others = " ".join(s for s in ("events:write", "index:read", "tokens:admin", "tokens:introspect") if s != scope)
    resp = await client.request(method, path, headers=bearer(make_token(scope=others)), data={"token": "x"})
    assert resp.status == 403 and (await resp.json())["error"] == "insufficient_scope"
    resp = await client.request(method, path, headers=bearer(make_token(scope=scope)), data={"token": "x"})
    assert resp.status == 200
    assert sample(metrics, "registry_consumer_auth_failures_total", reason="insufficient_scope") == 1
    assert sample(metrics, "registry_consumer_auth_failures_total", reason="missing") == 1


# --- revoke: RFC 7009 form ---------------------------------------------------------------------------


async def test_form_revocation_revokes_and_counts(client: Client, admin: dict[str, str],
                                                  introspector: dict[str, str], make_token: Callable[..., str],
                                                  metrics: Metrics) -> None:
    token = make_token(sub="ci")
    assert (await introspect(client, introspector, token))["active"] is True
    for _ in range(2):
        resp = await client.post("/v1/tokens/revoke", data={"token": token, "token_type_hint": "access_token"},
                                 headers=admin)
        assert resp.status == 200 and await resp.json() == {}
        assert resp.headers["Cache-Control"] == "no-store"
    assert await introspect(client, introspector, token) == {"active": False}
    assert sample(metrics, "registry_consumer_token_revocations_total", kind="token") == 1
    assert sample(metrics, "registry_consumer_revoked_tokens") == 1


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "x" * 100_000],
    ids=["garbage", "three-parts", "alg-none", "100kb"],
)
async def test_form_revocation_of_an_invalid_token_is_200_and_stores_nothing(
    client: Client, admin: dict[str, str], redis_client: Any, metrics: Metrics, token: str
) -> None:
    resp = await client.post("/v1/tokens/revoke", data={"token": token, "token_type_hint": "refresh_token"},
                             headers=admin)
    assert resp.status == 200 and await resp.json() == {}
    assert await redis_client.keys("*{_revocations}*") == []
    assert sample(metrics, "registry_consumer_token_revocations_total", kind="token") == 0


async def test_form_revocation_of_an_expired_token_stores_nothing(client: Client, admin: dict[str, str],
                                                                  settings: Settings, redis_client: Any) -> None:
    old = mint(settings.auth, JWT_SECRET.encode(), sub="ci", scope="", ttl_seconds=60, now=int(time.time()) - 3600)
    resp = await client.post("/v1/tokens/revoke", data={"token": old}, headers=admin)
    assert resp.status == 200
    assert await redis_client.keys("*{_revocations}*") == []


async def test_form_revocation_needs_the_token_parameter(client: Client, admin: dict[str, str]) -> None:
    resp = await client.post("/v1/tokens/revoke", data={"token_type_hint": "access_token"}, headers=admin)
    assert resp.status == 400 and "token" in (await resp.json())["detail"]


# --- revoke: JSON ------------------------------------------------------------------------------------


async def test_json_revocations_of_each_kind(client: Client, admin: dict[str, str], metrics: Metrics) -> None:
    exp = int(time.time()) + 600
    resp = await client.post("/v1/tokens/revoke", json={"jti": "j-9", "iss": "docker_auth", "exp": exp},
                             headers=admin)
    assert resp.status == 200
    body = await resp.json()
    assert body["revoked"] is True and body["entry"]["kind"] == "token"
    assert body["entry"]["jti"] == "j-9" and body["entry"]["iss"] == "docker_auth"
    assert body["entry"]["expires_at"] == exp + 30

    resp = await client.post("/v1/tokens/revoke", json={"sub": "alice"}, headers=admin)
    entry = (await resp.json())["entry"]
    assert entry["kind"] == "subject" and entry["sub"] == "alice" and abs(entry["cutoff"] - time.time()) < 60

    resp = await client.post("/v1/tokens/revoke", json={"all": True, "cutoff": int(time.time()) - 60},
                             headers=admin)
    assert (await resp.json())["entry"]["kind"] == "all"
    for kind in ("token", "subject", "all"):
        assert sample(metrics, "registry_consumer_token_revocations_total", kind=kind) == 1
    assert sample(metrics, "registry_consumer_revoked_tokens") == 3


async def test_json_token_revocation_after_its_exp_stores_nothing(client: Client, admin: dict[str, str]) -> None:
    resp = await client.post("/v1/tokens/revoke", json={"jti": "j", "iss": "i", "exp": 1_000_000}, headers=admin)
    assert resp.status == 200 and await resp.json() == {"revoked": False, "entry": None}


@pytest.mark.parametrize(
    "body",
    [
        {"all": False},
        {"jti": "x", "iss": "y"},
        {"jti": "x", "iss": "y", "exp": "tomorrow"},
        {"sub": "a", "all": True},
        {"sub": "a", "cutoff": 4_000_000_000},
        {"sub": "a", "extra": 1},
        [],
        "revoke",
    ],
    ids=["all-false", "no-exp", "bad-exp", "two-kinds", "future-cutoff", "extra-field", "list", "string"],
)
async def test_bad_json_bodies_are_400(client: Client, admin: dict[str, str], body: Any) -> None:
    resp = await client.post("/v1/tokens/revoke", json=body, headers=admin)
    assert resp.status == 400, await resp.text()


# --- introspect --------------------------------------------------------------------------------------


async def test_introspection_of_an_active_token(client: Client, introspector: dict[str, str],
                                                make_token: Callable[..., str]) -> None:
    body = await introspect(client, introspector, make_token(sub="ci", scope="index:read events:write"))
    assert body["active"] is True and body["token_type"] == "Bearer"
    assert body["sub"] == "ci" and body["scope"] == "events:write index:read"
    assert body["iss"] == body["aud"] == "registry-consumer"
    assert body["exp"] - body["iat"] == 3600 and body["jti"]


async def test_anything_not_currently_valid_is_exactly_inactive(
    client: Client, introspector: dict[str, str], admin: dict[str, str], settings: Settings,
    make_token: Callable[..., str]
) -> None:
    now = int(time.time())
    expired = mint(settings.auth, JWT_SECRET.encode(), sub="a", scope="x", ttl_seconds=60, now=now - 3600)
    not_yet = mint(settings.auth, JWT_SECRET.encode(), sub="a", scope="x", ttl_seconds=600, now=now + 300)
    revoked = make_token(sub="gone")
    await client.post("/v1/tokens/revoke", data={"token": revoked}, headers=admin)
    forged = make_token()[:-6] + "AAAAAA"
    for token in (expired, not_yet, revoked, forged, "garbage", "x" * 100_000):
        assert await introspect(client, introspector, token) == {"active": False}


async def test_introspection_needs_the_token_parameter(client: Client, introspector: dict[str, str]) -> None:
    resp = await client.post("/v1/tokens/introspect", data={}, headers=introspector)
    assert resp.status == 400


# --- the list ----------------------------------------------------------------------------------------


async def test_list_of_revocations_is_paginated(client: Client, admin: dict[str, str]) -> None:
    exp = int(time.time()) + 600
    for n in range(5):
        await client.post("/v1/tokens/revoke", json={"jti": f"j-{n}", "iss": "i", "exp": exp}, headers=admin)
    await client.post("/v1/tokens/revoke", json={"sub": "alice"}, headers=admin)
    seen: list[dict[str, Any]] = []
    last = None
    for _ in range(10):
        params = {"n": "4", **({"last": last} if last else {})}
        resp = await client.get("/v1/tokens/revocations", params=params, headers=admin)
        assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
        body = await resp.json()
        seen += body["revocations"]
        last = body["next"]
        if last is None:
            break
    assert sorted(e.get("jti") or e["sub"] for e in seen) == ["alice", "j-0", "j-1", "j-2", "j-3", "j-4"]
    subject = next(e for e in seen if e["kind"] == "subject")
    assert subject["cutoff"] and subject["expires_at"] > subject["cutoff"]
    resp = await client.get("/v1/tokens/revocations", params={"n": "0"}, headers=admin)
    assert resp.status == 400


# --- registry tokens ---------------------------------------------------------------------------------


async def test_registry_tokens_can_be_revoked_and_introspected(
    aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings], make_token: Callable[..., str],
    tmp_path: Path
) -> None:
    issuer = TokenIssuer(tmp_path)
    settings = make_settings(registry_auth={"realm": "http://auth/token", "service": issuer.service,
                                            "issuer": issuer.issuer, "rootcertbundle": str(issuer.cert_path)})
    client = await aiohttp_client(create_app(settings, metrics=Metrics(process=False)))
    admin = bearer(make_token(scope="tokens:admin tokens:introspect"))
    token = issuer.mint([repository_access("app")], subject="ci-bot")
    body = await introspect(client, admin, token)
    assert body["active"] is True and body["sub"] == "ci-bot" and body["iss"] == issuer.issuer
    assert "scope" not in body
    resp = await client.post("/v1/tokens/revoke", data={"token": token}, headers=admin)
    assert resp.status == 200
    assert await introspect(client, admin, token) == {"active": False}


async def test_metrics_are_preinitialised(client: Client) -> None:
    text = await (await client.get("/metrics")).text()
    for kind in ("token", "subject", "all"):
        assert f'registry_consumer_token_revocations_total{{kind="{kind}"}} 0.0' in text
    assert "registry_consumer_revoked_tokens 0.0" in text
    assert 'registry_consumer_auth_failures_total{reason="lifetime_too_long"} 0.0' in text
