"""``GET /v1/auth``: registry bearer tokens checked against the token server's keys, revocation, and the
``access`` claim against the original request; 200, 401 with a registry challenge, or 403."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient

from consumer.app import create_app
from consumer.errors import ForbiddenError
from consumer.forward_auth import Need, required_access
from consumer.metrics import Metrics
from consumer.settings import Settings
from tests.support.redis_server import RedisServer
from tests.support.registry import CATALOG_ACCESS, TokenIssuer, repository_access

REALM = "https://auth.example.test/token"
DIGEST = "sha256:" + "ab" * 32
Client = TestClient[Any, Any]


@pytest.fixture
def issuer(tmp_path: Path) -> TokenIssuer:
    return TokenIssuer(tmp_path / "issuer")


@pytest.fixture
def registry_settings(make_settings: Callable[..., Settings], issuer: TokenIssuer) -> Callable[..., Settings]:
    def factory(**overrides: Any) -> Settings:
        section = {"realm": REALM, "service": issuer.service, "issuer": issuer.issuer,
                   "rootcertbundle": str(issuer.cert_path)}
        return make_settings(registry_auth=section, **overrides)

    return factory


@pytest.fixture
async def gate(aiohttp_client: Callable[..., Any], registry_settings: Callable[..., Settings],
               metrics: Metrics) -> Client:
    return await aiohttp_client(create_app(registry_settings(), metrics=metrics))  # type: ignore[no-any-return]


async def check(gate: Client, method: str, uri: str, token: str | None = None,
                headers: dict[str, str] | None = None) -> Any:
    sent = {"X-Original-Method": method, "X-Original-URI": uri, **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return await gate.get("/v1/auth", headers=sent)


def failures(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("registry_consumer_auth_failures_total", {"reason": reason}) or 0.0


# --- what each request needs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "uri", "needs"),
    [
        ("GET", "/v2/", []),
        ("GET", "/v2", []),
        ("GET", "/v2/_catalog?n=100&last=a", [("registry", "catalog", "*")]),
        ("GET", "/v2/app/manifests/latest", [("repository", "app", "pull")]),
        ("HEAD", f"/v2/team/app/manifests/{DIGEST}", [("repository", "team/app", "pull")]),
        ("GET", "/v2/team/sub/app/tags/list?n=10", [("repository", "team/sub/app", "pull")]),
        ("GET", f"/v2/app/blobs/{DIGEST}", [("repository", "app", "pull")]),
        ("POST", "/v2/app/blobs/uploads/", [("repository", "app", "push")]),
        ("PATCH", "/v2/app/blobs/uploads/0b8e-11ef=?_state=xyz", [("repository", "app", "push")]),
        ("PUT", f"/v2/app/blobs/uploads/0b8e?_state=x&digest={DIGEST}", [("repository", "app", "push")]),
        ("PUT", "/v2/my-app_1.x/manifests/1.0", [("repository", "my-app_1.x", "push")]),
        ("DELETE", f"/v2/app/manifests/{DIGEST}", [("repository", "app", "delete")]),
        ("DELETE", f"/v2/app/blobs/{DIGEST}", [("repository", "app", "delete")]),
        ("POST", f"/v2/app/blobs/uploads/?mount={DIGEST}&from=base/lib",
         [("repository", "app", "push"), ("repository", "base/lib", "pull")]),
        # The registry's router order: this is the tag list of "a/manifests".
        ("GET", "/v2/a/manifests/tags/list", [("repository", "a/manifests", "pull")]),
        ("GET", f"/v2/app/referrers/{DIGEST}", [("repository", "app", "pull")]),
    ],
)
def test_required_access(method: str, uri: str, needs: list[tuple[str, str, str]]) -> None:
    assert required_access(method, uri) == [Need(*n) for n in needs]


@pytest.mark.parametrize(
    ("method", "uri"),
    [
        ("GET", "/v2/../metrics"),
        ("GET", "/v2/app/%2e%2e/manifests/x"),
        ("GET", "/v2/app%2Fother/manifests/x"),
        ("GET", "/v2//app/manifests/x"),
        ("GET", "/v2/./app/manifests/x"),
        ("GET", "/v2/App/manifests/x"),
        ("GET", "/v2/app/manifests/"),
        ("GET", "/v2/app/secrets"),
        ("GET", "/metrics"),
        ("OPTIONS", "/v2/app/manifests/x"),
        ("TRACE", "/v2/app/tags/list"),
        ("POST", f"/v2/app/blobs/uploads/?mount={DIGEST}&from=../x"),
    ],
)
def test_paths_the_gate_cannot_read_are_refused(method: str, uri: str) -> None:
    with pytest.raises(ForbiddenError):
        required_access(method, uri)


# --- answers -----------------------------------------------------------------------------------------


async def test_no_token_gets_the_registry_challenge(gate: Client, issuer: TokenIssuer, metrics: Metrics) -> None:
    resp = await check(gate, "GET", "/v2/app/manifests/1.0")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == (
        f'Bearer realm="{REALM}",service="{issuer.service}",scope="repository:app:pull"'
    )
    resp = await check(gate, "PUT", "/v2/team/app/manifests/1.0")
    assert resp.headers["WWW-Authenticate"].endswith('scope="repository:team/app:pull,push"')
    resp = await check(gate, "GET", "/v2/")
    assert resp.headers["WWW-Authenticate"] == f'Bearer realm="{REALM}",service="{issuer.service}"'
    assert failures(metrics, "missing") == 3


async def test_pull_token(gate: Client, issuer: TokenIssuer, metrics: Metrics) -> None:
    token = issuer.mint([repository_access("app", ["pull"])])
    assert (await check(gate, "GET", "/v2/app/manifests/1.0", token)).status == 200
    assert (await check(gate, "HEAD", f"/v2/app/blobs/{DIGEST}", token)).status == 200
    assert (await check(gate, "GET", "/v2/", token)).status == 200
    resp = await check(gate, "PUT", "/v2/app/manifests/1.0", token)
    assert resp.status == 403
    assert resp.headers["WWW-Authenticate"] == (
        f'Bearer realm="{REALM}",service="{issuer.service}",scope="repository:app:pull,push",'
        'error="insufficient_scope"'
    )
    assert (await check(gate, "GET", "/v2/other/manifests/1.0", token)).status == 403
    assert (await check(gate, "DELETE", f"/v2/app/manifests/{DIGEST}", token)).status == 403
    assert (await check(gate, "GET", "/v2/_catalog", token)).status == 403
    assert failures(metrics, "insufficient_scope") == 4


async def test_push_delete_wildcard_and_catalog(gate: Client, issuer: TokenIssuer) -> None:
    push = issuer.mint([repository_access("app", ["pull", "push"])])
    assert (await check(gate, "PATCH", "/v2/app/blobs/uploads/u-1?_state=s", push)).status == 200
    assert (await check(gate, "PUT", "/v2/app/manifests/1.0", push)).status == 200
    mount = f"/v2/app/blobs/uploads/?mount={DIGEST}&from=base"
    assert (await check(gate, "POST", mount, push)).status == 403
    both = issuer.mint([repository_access("app", ["pull", "push"]), repository_access("base", ["pull"])])
    assert (await check(gate, "POST", mount, both)).status == 200
    delete = issuer.mint([repository_access("app", ["delete"])])
    assert (await check(gate, "DELETE", f"/v2/app/manifests/{DIGEST}", delete)).status == 200
    wildcard = issuer.mint([repository_access("app", ["*"])])
    for method in ("GET", "PUT", "DELETE"):
        assert (await check(gate, method, "/v2/app/manifests/1.0", wildcard)).status == 200
    catalog = issuer.mint([CATALOG_ACCESS])
    assert (await check(gate, "GET", "/v2/_catalog?n=5", catalog)).status == 200
    assert (await check(gate, "GET", "/v2/app/tags/list", catalog)).status == 403


async def test_traefik_headers(gate: Client, issuer: TokenIssuer) -> None:
    token = issuer.mint([repository_access("app", ["pull"])])
    resp = await gate.get("/v1/auth", headers={"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/v2/app/tags/list",
                                               "Authorization": f"Bearer {token}"})
    assert resp.status == 200


async def test_missing_original_request_headers_is_400(gate: Client, issuer: TokenIssuer) -> None:
    token = issuer.mint([repository_access("app", ["pull"])])
    resp = await gate.get("/v1/auth", headers={"Authorization": f"Bearer {token}", "X-Original-Method": "GET"})
    assert resp.status == 400 and "X-Original-URI" in (await resp.json())["detail"]


async def test_untrusted_signer_and_consumer_tokens_are_refused(
    gate: Client, issuer: TokenIssuer, make_token: Callable[..., str], tmp_path: Path, metrics: Metrics
) -> None:
    stranger = TokenIssuer(tmp_path / "stranger", issuer=issuer.issuer, service=issuer.service)
    access = [repository_access("app", ["pull"])]
    for token in (stranger.mint(access), make_token()):
        resp = await check(gate, "GET", "/v2/app/manifests/1.0", token)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].endswith('scope="repository:app:pull",error="invalid_token"')
    assert failures(metrics, "unknown_kid") == 2
    wrong_service = TokenIssuer(tmp_path / "same-key", issuer=issuer.issuer, service="another-registry")
    wrong_service._key, wrong_service.kid = issuer._key, issuer.kid
    assert (await check(gate, "GET", "/v2/app/manifests/1.0", wrong_service.mint(access))).status == 401
    assert failures(metrics, "bad_audience") == 1


async def test_expired_registry_token(gate: Client, issuer: TokenIssuer, metrics: Metrics) -> None:
    now = int(time.time())
    claims = {"iss": issuer.issuer, "sub": "ci", "aud": issuer.service, "iat": now - 900, "exp": now - 120,
              "jti": "j-1", "access": [repository_access("app", ["pull"])]}
    token = jwt.encode(claims, issuer._key, algorithm=issuer.algorithm, headers={"kid": issuer.kid})
    assert (await check(gate, "GET", "/v2/app/manifests/1.0", token)).status == 401
    assert failures(metrics, "expired") == 1


async def test_malformed_access_claim(gate: Client, issuer: TokenIssuer, metrics: Metrics) -> None:
    token = issuer.mint([{"type": "repository", "actions": "pull"}])
    assert (await check(gate, "GET", "/v2/app/manifests/1.0", token)).status == 401
    assert failures(metrics, "malformed") == 1


async def test_unreadable_path_is_403(gate: Client, issuer: TokenIssuer) -> None:
    token = issuer.mint([repository_access("app", ["*"])])
    assert (await check(gate, "GET", "/v2/app/%2e%2e/x/manifests/1", token)).status == 403


async def test_revoked_token_subject_and_all(gate: Client, issuer: TokenIssuer, make_token: Callable[..., str],
                                             metrics: Metrics) -> None:
    admin = {"Authorization": f"Bearer {make_token(scope='tokens:admin')}"}
    access = [repository_access("app", ["pull", "push"])]
    token, other = issuer.mint(access, subject="ci-bot"), issuer.mint(access, subject="dev")
    assert (await check(gate, "PUT", "/v2/app/manifests/1.0", token)).status == 200
    resp = await gate.post("/v1/tokens/revoke", data={"token": token}, headers=admin)
    assert resp.status == 200
    resp = await check(gate, "PUT", "/v2/app/manifests/1.0", token)
    assert resp.status == 401 and 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert (await check(gate, "PUT", "/v2/app/manifests/1.0", other)).status == 200

    await gate.post("/v1/tokens/revoke", json={"sub": "dev"}, headers=admin)
    assert (await check(gate, "GET", "/v2/app/manifests/1.0", other)).status == 401
    fresh = issuer.mint(access, subject="ops")
    assert (await check(gate, "GET", "/v2/app/manifests/1.0", fresh)).status == 200
    await gate.post("/v1/tokens/revoke", json={"all": True}, headers=admin)
    assert (await check(gate, "GET", "/v2/app/manifests/1.0", fresh)).status == 401
    assert failures(metrics, "revoked") == 3


async def test_redis_down_is_503(aiohttp_client: Callable[..., Any], registry_settings: Callable[..., Settings],
                                 issuer: TokenIssuer, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "own-redis")
    server.start()
    try:
        gate = await aiohttp_client(create_app(registry_settings(redis_url=server.url), metrics=Metrics(process=False)))
        token = issuer.mint([repository_access("app", ["pull"])])
        assert (await check(gate, "GET", "/v2/app/manifests/1.0", token)).status == 200
        server.stop()
        assert (await check(gate, "GET", "/v2/app/manifests/1.0", token)).status == 503
    finally:
        server.stop()


async def test_no_forward_auth_without_registry_auth(client: Client) -> None:
    resp = await client.get("/v1/auth", headers={"X-Original-Method": "GET", "X-Original-URI": "/v2/"})
    assert resp.status == 404
