"""``latest`` bookkeeping: report marks, fix moves (real registry), never backwards, no fix loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from consumer.app import create_app
from consumer.appkeys import AUDIT, HOOKS, INDEX, KEYS, LATEST, REDIS
from consumer.latest import LatestKeeper
from consumer.metrics import Metrics
from consumer.policy import PolicySet
from consumer.settings import Settings
from consumer.version_index import VersionIndex
from tests.policy_events import digest, event, send
from tests.support import oci, skopeo
from tests.support.procs import LOOPBACK, free_port
from tests.support.registry import NotificationEndpoint, RegistryFleet, RegistryServer, bearer_headers

REPO = "team/app"
D = {v: digest(v) for v in ("1.0.0", "1.5.0", "2.0.0", "2.1.0", "3.0.0-rc.1", "x", "y")}
DEADLINE_SECONDS = 60.0


def sample(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None
    return value


async def latest_of(client: TestClient[Any, Any], headers: dict[str, str], repo: str = REPO) -> dict[str, Any]:
    resp = await client.get(f"/v1/repositories/{repo}/latest", headers=headers)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    assert set(body) == {"digest", "expected_digest", "expected_tag", "stale", "mode"}
    return body


def app_with(
    aiohttp_client: Callable[..., Any],
    make_settings: Callable[..., Settings],
    metrics: Metrics,
    latest: dict[str, Any],
    **settings: Any,
) -> Any:
    policies = [{"repositories": ["team/*"], "latest": latest}]
    return aiohttp_client(create_app(make_settings(policies=policies, **settings), metrics=metrics))


async def test_report_marks_stale_once_and_clears(
    aiohttp_client: Callable[..., Any],
    make_settings: Callable[..., Settings],
    metrics: Metrics,
    auth_headers: dict[str, str],
) -> None:
    client = await app_with(aiohttp_client, make_settings, metrics, {"mode": "highest-semver", "action": "report"})
    # latest first: a repository with versions and no latest would be stale (fix would create latest).
    await send(
        client,
        auth_headers,
        event("push", REPO, tag="latest", digest=D["1.0.0"]),
        event("push", REPO, tag="1.0.0", digest=D["1.0.0"]),
    )
    assert (await latest_of(client, auth_headers))["stale"] is False
    await send(client, auth_headers, event("push", REPO, tag="2.0.0", digest=D["2.0.0"]))
    assert await latest_of(client, auth_headers) == {
        "digest": D["1.0.0"],
        "expected_digest": D["2.0.0"],
        "expected_tag": "2.0.0",
        "stale": True,
        "mode": "highest-semver",
    }
    assert sample(metrics, "registry_consumer_latest_stale_repositories") == 1
    await send(
        client,
        auth_headers,
        event("push", REPO, tag="2.1.0", digest=D["2.1.0"]),
        event("push", REPO, tag="3.0.0-rc.1", digest=D["3.0.0-rc.1"]),
    )  # pre-releases do not count
    assert (await latest_of(client, auth_headers))["expected_tag"] == "2.1.0"
    stale_records, _ = await client.app[AUDIT].page(kind="latest_stale")
    assert [(r.repository, r.digest) for r in stale_records] == [(REPO, D["1.0.0"])]  # one per stale spell
    assert sample(metrics, "registry_consumer_latest_fixes_total") == 0  # report never changes anything
    await send(client, auth_headers, event("push", REPO, tag="latest", digest=D["2.1.0"]))
    assert (await latest_of(client, auth_headers))["stale"] is False
    assert sample(metrics, "registry_consumer_latest_stale_repositories") == 0
    # A push of latest itself onto an older version: reported, naming who pushed it.
    await send(client, auth_headers, event("push", REPO, tag="latest", digest=D["1.0.0"], actor="bob"))
    assert (await latest_of(client, auth_headers))["stale"] is True
    newest = (await client.app[AUDIT].page(kind="latest_stale", n=1))[0][0]
    assert (newest.actor, newest.digest) == ("bob", D["1.0.0"])


async def test_never_backwards_after_the_highest_tag_is_deleted(
    aiohttp_client: Callable[..., Any],
    make_settings: Callable[..., Settings],
    metrics: Metrics,
    auth_headers: dict[str, str],
) -> None:
    client = await app_with(aiohttp_client, make_settings, metrics, {"mode": "highest-semver", "action": "report"})
    await send(
        client,
        auth_headers,
        event("push", REPO, tag="1.0.0", digest=D["1.0.0"]),
        event("push", REPO, tag="2.0.0", digest=D["2.0.0"]),
        event("push", REPO, tag="latest", digest=D["2.0.0"]),
        event("push", REPO, tag="1.5.0", digest=D["1.5.0"]),
    )  # a backport
    assert (await latest_of(client, auth_headers))["stale"] is False
    await send(client, auth_headers, event("delete", REPO, tag="2.0.0"))  # registry 3.x: only the tag goes
    status = await latest_of(client, auth_headers)
    assert (status["digest"], status["stale"], status["expected_digest"]) == (D["2.0.0"], False, D["2.0.0"])
    # latest pushed by hand onto an unversioned image is wrong again: the highest version is 1.5.0 now.
    await send(client, auth_headers, event("push", REPO, tag="latest", digest=D["x"]))
    status = await latest_of(client, auth_headers)
    assert (status["stale"], status["expected_tag"]) == (True, "1.5.0")


async def test_newest_push_and_manual(
    aiohttp_client: Callable[..., Any],
    make_settings: Callable[..., Settings],
    metrics: Metrics,
    auth_headers: dict[str, str],
) -> None:
    client = await app_with(aiohttp_client, make_settings, metrics, {"mode": "newest-push", "action": "report"})
    await send(
        client,
        auth_headers,
        event("push", REPO, tag="main-1", digest=D["x"]),
        event("push", REPO, tag="latest", digest=D["x"]),
    )
    assert (await latest_of(client, auth_headers))["stale"] is False
    await send(client, auth_headers, event("push", REPO, tag="main-2", digest=D["y"]))
    status = await latest_of(client, auth_headers)
    assert (status["stale"], status["expected_tag"], status["mode"]) == (True, "main-2", "newest-push")
    await send(client, auth_headers, event("push", "elsewhere", tag="latest", digest=D["y"]))
    assert await latest_of(client, auth_headers, "elsewhere") == {
        "digest": D["y"],
        "expected_digest": None,
        "expected_tag": None,
        "stale": False,
        "mode": None,
    }
    assert (await client.get("/v1/repositories/nothing/latest", headers=auth_headers)).status == 404


async def test_manual_is_only_reported(
    aiohttp_client: Callable[..., Any],
    make_settings: Callable[..., Settings],
    metrics: Metrics,
    auth_headers: dict[str, str],
) -> None:
    client = await app_with(aiohttp_client, make_settings, metrics, {"mode": "manual", "action": "fix"})
    await send(
        client,
        auth_headers,
        event("push", REPO, tag="9.0.0", digest=D["x"]),
        event("push", REPO, tag="latest", digest=D["y"]),
    )
    assert await latest_of(client, auth_headers) == {
        "digest": D["y"],
        "expected_digest": None,
        "expected_tag": None,
        "stale": False,
        "mode": "manual",
    }


async def test_include_prereleases(
    aiohttp_client: Callable[..., Any],
    make_settings: Callable[..., Settings],
    metrics: Metrics,
    auth_headers: dict[str, str],
) -> None:
    client = await app_with(
        aiohttp_client,
        make_settings,
        metrics,
        {"mode": "highest-semver", "action": "report", "include_prereleases": True},
    )
    await send(
        client,
        auth_headers,
        event("push", REPO, tag="2.1.0", digest=D["2.1.0"]),
        event("push", REPO, tag="3.0.0-rc.1", digest=D["3.0.0-rc.1"]),
    )
    assert (await latest_of(client, auth_headers))["expected_tag"] == "3.0.0-rc.1"


async def test_highest_release_skips_many_prerelease_only_versions(
    aiohttp_client: Callable[..., Any],
    make_settings: Callable[..., Settings],
    metrics: Metrics,
    auth_headers: dict[str, str],
) -> None:
    client = await app_with(aiohttp_client, make_settings, metrics, {"mode": "highest-semver", "action": "report"})
    events = [event("push", REPO, tag="1.0.0", digest=D["1.0.0"])]
    events += [event("push", REPO, tag=f"{major}.0.0-rc.{rc}", digest=D["x"]) for major in (2, 3, 4) for rc in (1, 2)]
    await send(client, auth_headers, *events)
    assert (await latest_of(client, auth_headers))["expected_tag"] == "1.0.0"


# -- fix, against the real registry -------------------------------------------------------------------


async def _until(predicate: Callable[[], Any], what: str) -> None:
    """Poll the registry (an outside process) until ``predicate`` holds, failing with ``what`` at the deadline."""
    try:
        async with asyncio.timeout(DEADLINE_SECONDS):
            while True:
                if await predicate():
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"not within {DEADLINE_SECONDS}s: {what}")


async def _settle(client: TestClient[Any, Any], registry: RegistryServer) -> None:
    await registry.wait_notifications_delivered()
    await client.app[HOOKS].drain(30)
    await registry.wait_notifications_delivered()  # what the listeners caused (a PUT of latest)
    await client.app[HOOKS].drain(30)


@pytest.mark.e2e
async def test_fix_follows_the_highest_version_and_never_moves_back(
    aiohttp_client: Callable[..., Any],
    make_settings: Callable[..., Settings],
    metrics: Metrics,
    make_token: Callable[..., str],
    auth_headers: dict[str, str],
    registries: RegistryFleet,
    tmp_path: Path,
) -> None:
    # The registry notifies the in-process app on its test server's port; the app fixes through the registry.
    settings_holder: dict[str, Any] = {}
    registry = registries.start()  # first without notifications: the app's URL is not known yet
    client = await app_with(
        aiohttp_client,
        make_settings,
        metrics,
        {"mode": "highest-semver", "action": "fix"},
        registry={"url": registry.url, "backoff_seconds": 0.05},
    )
    settings_holder["url"] = str(client.make_url("/v1/events"))
    registry.stop()
    registry.notifications = (
        NotificationEndpoint(settings_holder["url"], headers=bearer_headers(make_token(scope="events:write"))),
    )
    registry.start()

    layout = tmp_path / "layout"
    images = {v: oci.write_image(layout, v) for v in ("1.0.0", "2.0.0", "1.4.9", "3.0.0-rc.1")}

    async def latest_is(version: str) -> bool:
        return await registry.head_digest(REPO, "latest") == images[version].digest

    await skopeo.push(images["1.0.0"], registry, REPO, "1.0.0")
    await _until(lambda: latest_is("1.0.0"), "latest created at 1.0.0")
    await skopeo.push(images["2.0.0"], registry, REPO, "2.0.0")
    await _until(lambda: latest_is("2.0.0"), "latest moved to 2.0.0")
    await skopeo.push(images["1.4.9"], registry, REPO, "1.4.9")  # a backport
    await skopeo.push(images["3.0.0-rc.1"], registry, REPO, "3.0.0-rc.1")  # a pre-release
    await _settle(client, registry)
    assert await latest_is("2.0.0")
    assert sample(metrics, "registry_consumer_latest_fixes_total") == 2

    # Someone pushes latest onto the backport: reported as stale and put back.
    await skopeo.retag(registry, REPO, "1.4.9", "latest")
    await _until(lambda: latest_is("2.0.0"), "latest corrected back to 2.0.0")
    await _settle(client, registry)
    assert sample(metrics, "registry_consumer_latest_fixes_total") == 3  # and no loop
    reports, _ = await client.app[AUDIT].page(repository=REPO, kind="latest_stale")
    assert [(r.digest, (r.user_agent or "").split("/")[0]) for r in reports] == [(images["1.4.9"].digest, "skopeo")]
    assert (reports[0].detail or "").startswith("a push of latest onto")
    status = await latest_of(client, auth_headers)
    assert status == {
        "digest": images["2.0.0"].digest,
        "expected_digest": images["2.0.0"].digest,
        "expected_tag": "2.0.0",
        "stale": False,
        "mode": "highest-semver",
    }
    assert sample(metrics, "registry_consumer_latest_stale_repositories") == 0
    fixes, _ = await client.app[AUDIT].page(repository=REPO, kind="latest_fix")
    assert [r.digest for r in fixes] == [images[v].digest for v in ("2.0.0", "2.0.0", "1.0.0")]
    # The media type survived the round trip: the registry serves latest as the OCI manifest it was.
    media_type, _ = await registry.get_manifest(REPO, "latest")
    assert media_type == oci.OCI_MANIFEST


async def test_a_failed_fix_leaves_the_repository_stale_and_a_dropped_policy_unmarks_it(
    aiohttp_client: Callable[..., Any],
    make_settings: Callable[..., Settings],
    metrics: Metrics,
    auth_headers: dict[str, str],
) -> None:
    dead = f"http://{LOOPBACK}:{free_port()}"  # nothing listens: every fix fails
    client = await app_with(
        aiohttp_client,
        make_settings,
        metrics,
        {"mode": "highest-semver", "action": "fix"},
        registry={"url": dead, "retries": 0},
    )
    await send(
        client,
        auth_headers,
        event("push", REPO, tag="latest", digest=D["1.0.0"]),
        event("push", REPO, tag="1.0.0", digest=D["1.0.0"]),
        event("push", REPO, tag="2.0.0", digest=D["2.0.0"]),
    )
    assert (await latest_of(client, auth_headers))["stale"] is True
    assert sample(metrics, "registry_consumer_latest_stale_repositories") == 1
    assert sample(metrics, "registry_consumer_latest_fixes_total") == 0
    keeper = client.app[LATEST]
    assert await keeper.stale_repositories(10) == [REPO]
    # The periodic retry calls evaluate again: still failing, still stale, and no second stale record.
    await keeper.evaluate(REPO)
    assert await keeper.is_stale(REPO)
    assert len((await client.app[AUDIT].page(kind="latest_stale"))[0]) == 1
    # The configuration no longer manages latest here: the mark goes on the next evaluation.
    unmanaged = LatestKeeper(
        redis=client.app[REDIS],
        keys=client.app[KEYS],
        index=client.app[INDEX],
        versions=VersionIndex(client.app[REDIS], client.app[KEYS]),
        policies=PolicySet([]),
        audit=client.app[AUDIT],
        metrics=metrics,
        registry=None,
    )
    assert await unmanaged.evaluate(REPO) is None
    assert not await keeper.is_stale(REPO)
    assert sample(metrics, "registry_consumer_latest_stale_repositories") == 0
