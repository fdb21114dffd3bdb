"""Unexpected deletions through the webhook: counted, audited, folded per request, protected detection,
the consumer's own deletes (intents) never counted, and ``revoke_actor``."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from consumer.app import create_app
from consumer.appkeys import AUDIT, HOOKS, INDEX, INTENTS
from consumer.metrics import Metrics
from consumer.settings import Settings
from tests.policy_events import digest, event, send
from tests.support import oci, skopeo
from tests.support.registry import NotificationEndpoint, RegistryFleet, TokenIssuer, bearer_headers, repository_access

REPO = "team/app"
D1, D2, D3 = digest("one"), digest("two"), digest("three")
POLICIES = [
    {
        "repositories": ["team/*"],
        "retention": {"protected": ["stable", "^release-"]},
        "on_unexpected_deletion": {"revoke_actor": True},
    },
    {"repositories": ["*"]},
]


def unexpected(metrics: Metrics, kind: str, protected: bool) -> float:
    value = metrics.registry.get_sample_value(
        "registry_consumer_unexpected_deletions_total", {"kind": kind, "protected": str(protected).lower()}
    )
    assert value is not None  # pre-initialised
    return value


def totals(metrics: Metrics) -> dict[tuple[str, bool], float]:
    return {(k, p): unexpected(metrics, k, p) for k in ("tag", "manifest") for p in (True, False)}


@pytest.fixture
async def app_client(
    aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings], metrics: Metrics
) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(make_settings(policies=POLICIES), metrics=metrics))  # type: ignore[no-any-return]


async def push_fixture(client: TestClient[Any, Any], headers: dict[str, str]) -> None:
    await send(
        client,
        headers,
        event("push", REPO, tag="1.0", digest=D1),
        event("push", REPO, tag="stable", digest=D1),
        event("push", REPO, tag="2.0", digest=D2),
        event("push", REPO, tag="3.0", digest=D3),
    )


async def test_foreign_digest_delete_is_one_protected_report_naming_the_actor(
    app_client: TestClient[Any, Any], auth_headers: dict[str, str], metrics: Metrics
) -> None:
    await push_fixture(app_client, auth_headers)
    before = totals(metrics)
    # What registry 2.8 sends for `curl -X DELETE .../manifests/<D1>`: the digest, then one event per tag.
    await send(
        app_client,
        auth_headers,
        event("delete", REPO, digest=D1, actor="mallory", request_id="r-1", useragent="curl/7.88.1"),
        event("delete", REPO, tag="1.0", actor="mallory", request_id="r-1", useragent="curl/7.88.1"),
        event("delete", REPO, tag="stable", actor="mallory", request_id="r-1", useragent="curl/7.88.1"),
    )
    after = totals(metrics)
    assert {k: after[k] - before[k] for k in after} == {
        ("tag", True): 0,
        ("tag", False): 0,
        ("manifest", True): 1,
        ("manifest", False): 0,
    }
    records, _ = await app_client.app[AUDIT].page(kind="unexpected_deletion")
    assert len(records) == 1
    record = records[0]
    assert (record.repository, record.digest, record.tag, record.actor, record.user_agent, record.protected) == (
        REPO,
        D1,
        None,
        "mallory",
        "curl/7.88.1",
        True,
    )
    assert record.addr == "10.1.2.3:40000"
    assert record.detail == "tags removed with it: 1.0, stable"


async def test_an_unprotected_digest_and_a_3x_tag_delete(
    app_client: TestClient[Any, Any], auth_headers: dict[str, str], metrics: Metrics
) -> None:
    await push_fixture(app_client, auth_headers)
    before = totals(metrics)
    await send(
        app_client,
        auth_headers,
        event("delete", REPO, digest=D2, request_id="r-2"),
        event("delete", REPO, tag="2.0", request_id="r-2"),
    )
    await send(app_client, auth_headers, event("delete", REPO, tag="3.0", request_id="r-3"))  # registry 3.x
    after = totals(metrics)
    assert after[("manifest", False)] - before[("manifest", False)] == 1
    assert after[("tag", False)] - before[("tag", False)] == 1
    assert after[("manifest", True)] == before[("manifest", True)] and after[("tag", True)] == before[("tag", True)]
    records, _ = await app_client.app[AUDIT].page(repository=REPO, kind="unexpected_deletion")
    assert [(r.tag, r.digest) for r in records] == [("3.0", D3), (None, D2)]


@pytest.mark.parametrize("protected_tag", ["latest", "release-7", "stable"])
async def test_protected_tag_delete(
    app_client: TestClient[Any, Any], auth_headers: dict[str, str], metrics: Metrics, protected_tag: str
) -> None:
    await send(app_client, auth_headers, event("push", REPO, tag=protected_tag, digest=D1))
    before = unexpected(metrics, "tag", True)
    await send(app_client, auth_headers, event("delete", "team/app", tag=protected_tag, actor="ops"))
    assert unexpected(metrics, "tag", True) == before + 1


async def test_latest_is_protected_even_without_a_policy(
    app_client: TestClient[Any, Any], auth_headers: dict[str, str], metrics: Metrics
) -> None:
    await send(
        app_client,
        auth_headers,
        event("push", "elsewhere", tag="latest", digest=D1),
        event("push", "elsewhere", tag="stable", digest=D2),
    )
    await send(
        app_client, auth_headers, event("delete", "elsewhere", tag="latest"), event("delete", "elsewhere", tag="stable")
    )
    assert unexpected(metrics, "tag", True) == 1 and unexpected(metrics, "tag", False) == 1


@pytest.mark.parametrize("reordered", [False, True])
async def test_the_consumers_own_deletes_are_never_counted(
    app_client: TestClient[Any, Any], auth_headers: dict[str, str], metrics: Metrics, reordered: bool
) -> None:
    await push_fixture(app_client, auth_headers)
    before = totals(metrics)
    intents = app_client.app[INTENTS]
    manifest = await app_client.app[INDEX].get_manifest(REPO, D1)
    assert manifest is not None
    await intents.expect(REPO, digest=D1)  # without the tags: the request id or the tag records must match them
    await intents.expect(REPO, tag="3.0")
    digest_delete = event("delete", REPO, digest=D1, actor="registry-consumer", request_id="own-1")
    tag_deletes = [event("delete", REPO, tag=t, actor="registry-consumer", request_id="own-1") for t in manifest.tags]
    events = [*tag_deletes, digest_delete] if reordered else [digest_delete, *tag_deletes]
    await send(app_client, auth_headers, *events, event("delete", REPO, tag="3.0", actor="registry-consumer"))
    assert totals(metrics) == before
    assert (await app_client.app[AUDIT].page(kind="unexpected_deletion"))[0] == []


async def test_revoke_actor_cuts_off_the_actors_tokens(
    app_client: TestClient[Any, Any], auth_headers: dict[str, str], make_token: Callable[..., str]
) -> None:
    mallory = {"Authorization": f"Bearer {make_token(sub='mallory')}"}
    bystander = {"Authorization": f"Bearer {make_token(sub='alice')}"}
    assert (await app_client.get("/v1/repositories", headers=mallory)).status == 200
    await push_fixture(app_client, auth_headers)
    await send(app_client, auth_headers, event("delete", REPO, digest=D2, actor="mallory", request_id="r-9"))
    assert (await app_client.get("/v1/repositories", headers=mallory)).status == 401
    assert (await app_client.get("/v1/repositories", headers=bystander)).status == 200
    records, _ = await app_client.app[AUDIT].page(kind="actor_revoked")
    assert [(r.repository, r.actor, r.digest) for r in records] == [(REPO, "mallory", D2)]
    assert "issued at or before" in (records[0].detail or "")


async def test_no_revocation_where_the_policy_does_not_ask(
    app_client: TestClient[Any, Any], auth_headers: dict[str, str], make_token: Callable[..., str]
) -> None:
    mallory = {"Authorization": f"Bearer {make_token(sub='mallory')}"}
    await send(app_client, auth_headers, event("push", "other/app", tag="1", digest=D1))
    await send(app_client, auth_headers, event("delete", "other/app", digest=D1, actor="mallory"))
    assert (await app_client.get("/v1/repositories", headers=mallory)).status == 200
    assert (await app_client.app[AUDIT].page(kind="actor_revoked"))[0] == []


# -- end to end: a real registry, a real curl -------------------------------------------------------


@pytest.mark.e2e
async def test_curl_delete_by_digest_is_reported_and_the_actor_revoked(
    aiohttp_client: Callable[..., Any],
    make_settings: Callable[..., Settings],
    metrics: Metrics,
    make_token: Callable[..., str],
    registries: RegistryFleet,
    tmp_path: Path,
) -> None:
    issuer = TokenIssuer(tmp_path / "keys")
    realm = "http://127.0.0.1:9/token"  # nobody asks it: every client here brings its own token
    registry_auth = {
        "realm": realm,
        "service": issuer.service,
        "issuer": issuer.issuer,
        "rootcertbundle": str(issuer.cert_path),
    }
    client = await aiohttp_client(
        create_app(make_settings(policies=POLICIES, registry_auth=registry_auth), metrics=metrics)
    )
    endpoint = NotificationEndpoint(
        str(client.make_url("/v1/events")), headers=bearer_headers(make_token(scope="events:write"))
    )
    registry = registries.start(auth=issuer.auth(realm=realm), token_issuer=issuer, notifications=[endpoint])

    image = oci.write_image(tmp_path / "layout", "a")
    robot = skopeo.Auth(token=issuer.mint([repository_access(REPO, ["pull", "push"])], subject="ci-robot"))
    await skopeo.push(image, registry, REPO, "1.0", auth=robot)
    await skopeo.retag(registry, REPO, "1.0", "stable", auth=robot)
    await registry.wait_notifications_delivered()
    await client.app[HOOKS].drain(30)

    mallory = issuer.mint([repository_access(REPO, ["pull", "delete"])], subject="mallory")
    gate = {
        "Authorization": f"Bearer {mallory}",
        "X-Original-Method": "GET",
        "X-Original-URI": f"/v2/{REPO}/manifests/stable",
    }
    assert (await client.get("/v1/auth", headers=gate)).status == 200  # the forward-auth lets mallory in, so far
    before = totals(metrics)

    result = await asyncio.to_thread(
        subprocess.run,
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "DELETE",
            "-H",
            f"Authorization: Bearer {mallory}",
            f"{registry.url}/v2/{REPO}/manifests/{image.digest}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout == "202", result.stderr
    await registry.wait_notifications_delivered()
    await client.app[HOOKS].drain(30)

    after = totals(metrics)
    assert after[("manifest", True)] - before[("manifest", True)] == 1  # stable went with the digest
    assert sum(after.values()) - sum(before.values()) == 1  # one report for the request, not one per tag
    records, _ = await client.app[AUDIT].page(repository=REPO, kind="unexpected_deletion")
    assert [(r.actor, r.digest, r.protected) for r in records] == [("mallory", image.digest, True)]
    assert (records[0].user_agent or "").startswith("curl/")
    assert records[0].detail == "tags removed with it: 1.0, stable"
    revoked, _ = await client.app[AUDIT].page(kind="actor_revoked")
    assert [r.actor for r in revoked] == ["mallory"]
    # The same registry token is refused from now on, wherever the consumer checks it.
    resp = await client.get("/v1/auth", headers=gate)
    assert resp.status == 401
    assert (await resp.json())["detail"].startswith("token revoked")
    robot_gate = {**gate, "Authorization": f"Bearer {robot.token}"}
    assert (await client.get("/v1/auth", headers=robot_gate)).status == 200  # nobody else's
