"""Retention end to end: a real docker-registry 2.8.2 notifies the consumer, skopeo pushes, the consumer's
own deletion worker deletes through the registry API, and the registry's delete events come back.

2.8.2 cannot delete a tag by name, so these runs also prove the digest rules: an expired tag goes with its
digest only when no kept tag shares it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from consumer.app import create_app
from consumer.appkeys import AUDIT, HOOKS, RETENTION
from consumer.metrics import Metrics
from consumer.settings import Settings
from tests.support import oci, skopeo
from tests.support.registry import NotificationEndpoint, RegistryFleet, RegistryServer, bearer_headers
from tests.support.retention import REPO, SCENARIO, SCENARIO_POLICY, SCENARIO_RULES

pytestmark = pytest.mark.e2e
DEADLINE_SECONDS = 90.0
KEPT = sorted(tag for tag, rule in SCENARIO_RULES.items() if rule != "no_keep_rule")
EXPIRED = sorted(tag for tag, rule in SCENARIO_RULES.items() if rule == "no_keep_rule")


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def unexpected_total(metrics: Metrics) -> float:
    return sum(s.value for family in metrics.registry.collect() for s in family.samples
               if s.name == "registry_consumer_unexpected_deletions_total")


Stack = tuple[TestClient[Any, Any], RegistryServer, Metrics]


@pytest.fixture
def stack(
    aiohttp_client: Callable[..., Any],
    make_settings: Callable[..., Settings],
    make_token: Callable[..., str],
    registries: RegistryFleet,
) -> Callable[[dict[str, Any]], Awaitable[Stack]]:
    """Start a registry notifying a consumer whose policy for ``team/*`` has the given ``retention:``."""

    async def start(retention: dict[str, Any]) -> Stack:
        metrics = Metrics(process=False)
        registry = registries.start()
        settings = make_settings(
            registry={"url": registry.url, "backoff_seconds": 0.05},
            reconcile={"interval_seconds": 0},
            retention={"sweep_interval_seconds": 0, "max_deletions_per_second": 200, "retry_base_seconds": 0.1,
                       "claim_idle_seconds": 5},
            policies=[{"repositories": ["team/*"], "retention": retention}],
        )
        client = await aiohttp_client(create_app(settings, metrics=metrics))
        # The registry must know where to notify: start it again on the same port and storage with the endpoint.
        registry.stop()
        registry.notifications = (NotificationEndpoint(str(client.make_url("/v1/events")),
                                                       headers=bearer_headers(make_token(scope="events:write"))),)
        registry.start()
        return client, registry, metrics

    return start


async def settle(client: TestClient[Any, Any], registry: RegistryServer) -> None:
    """Until nothing moves: every notification delivered, every listener done, the deletion queue empty."""
    queue_key = client.app[RETENTION]._keys.retention_queue
    redis = client.app[RETENTION]._redis
    async with asyncio.timeout(DEADLINE_SECONDS):
        while True:
            await registry.wait_notifications_delivered(DEADLINE_SECONDS)
            await client.app[HOOKS].drain(30)
            if await redis.xlen(queue_key) == 0:
                metrics = await registry.notification_metrics()
                if all(m["Pending"] == 0 for m in metrics.values()):
                    await client.app[HOOKS].drain(30)
                    return
            await asyncio.sleep(0.1)


async def push_scenario(registry: RegistryServer, layout: Path) -> dict[str, str]:
    digests: dict[str, str] = {}
    for tag in SCENARIO:
        if tag == "latest":
            digests[tag] = await skopeo.retag(registry, REPO, "2.0.0", "latest")
        else:
            digests[tag] = await skopeo.push(oci.write_image(layout, tag), registry, REPO, tag)
    return digests


async def test_enforced_retention_leaves_exactly_the_kept_tags(
    stack: Callable[[dict[str, Any]], Awaitable[Stack]], auth_headers: dict[str, str], tmp_path: Path
) -> None:
    client, registry, metrics = await stack({**SCENARIO_POLICY, "dry_run": False})
    digests = await push_scenario(registry, tmp_path / "layout")
    await settle(client, registry)

    assert await registry.tags(REPO) == KEPT
    assert await registry.head_digest(REPO, "latest") == digests["2.0.0"]
    for tag in EXPIRED:
        assert await registry.head_digest(REPO, digests[tag]) is None, tag  # the manifests are gone
    assert sample(metrics, "registry_consumer_retention_deletions_total", mode="enforced") == len(EXPIRED)
    assert sample(metrics, "registry_consumer_retention_deletions_total", mode="failed") == 0
    # The registry's delete events for the consumer's own deletions were all expected.
    assert unexpected_total(metrics) == 0
    records, _ = await client.app[AUDIT].page(repository=REPO, kind="retention_delete")
    assert sorted(r.digest for r in records) == sorted(digests[t] for t in EXPIRED)
    # The index followed the registry, and the plan now keeps everything that is left.
    resp = await client.get(f"/v1/repositories/{REPO}/tags", headers=auth_headers)
    assert [t["tag"] for t in (await resp.json())["tags"]] == KEPT
    resp = await client.get(f"/v1/repositories/{REPO}/retention", headers=auth_headers)
    plan = await resp.json()
    assert plan["dry_run"] is False
    assert {t["tag"]: (t["decision"], t["rule"]) for t in plan["tags"]} == {
        tag: ("keep", SCENARIO_RULES[tag]) for tag in KEPT}


async def test_dry_run_deletes_nothing_and_names_the_deciding_rule(
    stack: Callable[[dict[str, Any]], Awaitable[Stack]], auth_headers: dict[str, str], tmp_path: Path
) -> None:
    client, registry, metrics = await stack({**SCENARIO_POLICY, "dry_run": True})
    digests = await push_scenario(registry, tmp_path / "layout")
    await settle(client, registry)
    await client.app[RETENTION].sweep()  # a sweep does not count what was already planned
    await settle(client, registry)

    assert await registry.tags(REPO) == sorted(SCENARIO)
    resp = await client.get(f"/v1/repositories/{REPO}/retention", headers=auth_headers)
    assert resp.status == 200
    plan = await resp.json()
    assert plan["repository"] == REPO and plan["dry_run"] is True
    assert {t["tag"]: t["rule"] for t in plan["tags"]} == SCENARIO_RULES
    assert {t["tag"] for t in plan["tags"] if t["decision"] == "delete"} == set(EXPIRED)
    assert all(t["digest"] == digests[t["tag"]] for t in plan["tags"])
    assert sample(metrics, "registry_consumer_retention_deletions_total", mode="dry_run") == len(EXPIRED)
    assert sample(metrics, "registry_consumer_retention_deletions_total", mode="enforced") == 0
    assert (await client.app[AUDIT].page(kind="retention_delete"))[0] == []


async def test_a_digest_shared_with_a_kept_tag_is_never_deleted_on_2x(
    stack: Callable[[dict[str, Any]], Awaitable[Stack]], auth_headers: dict[str, str], tmp_path: Path
) -> None:
    client, registry, metrics = await stack({"dry_run": False, "keep": [{"tags": ["keep-*"]}, {"last_pushed": 1}]})
    layout = tmp_path / "layout"
    shared = await skopeo.push(oci.write_image(layout, "shared"), registry, REPO, "old")
    assert await skopeo.retag(registry, REPO, "old", "keep-me") == shared
    alone = await skopeo.push(oci.write_image(layout, "alone"), registry, REPO, "alone")
    await skopeo.push(oci.write_image(layout, "newest"), registry, REPO, "newest")
    await settle(client, registry)
    await client.app[RETENTION].sweep()
    await settle(client, registry)

    assert await registry.tags(REPO) == ["keep-me", "newest", "old"]  # "alone" went with its own digest
    assert await registry.head_digest(REPO, alone) is None
    assert await registry.head_digest(REPO, "old") == shared
    assert await registry.head_digest(REPO, "keep-me") == shared
    resp = await client.get(f"/v1/repositories/{REPO}/retention", headers=auth_headers)
    old = next(t for t in (await resp.json())["tags"] if t["tag"] == "old")
    assert (old["decision"], old["rule"]) == ("keep", "shared_digest")
    assert sample(metrics, "registry_consumer_retention_deletions_total", mode="enforced") == 1
    assert unexpected_total(metrics) == 0
