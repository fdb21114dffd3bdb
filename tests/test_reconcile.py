"""Reconciliation against the real registry: events lost to a restart, and garbage collection that sends
none; afterwards the index equals the registry and the drift counter says what was repaired."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from consumer.app import create_app
from consumer.appkeys import AUDIT, HOOKS, INDEX, KEYS, RECONCILER, REDIS
from consumer.index import TagIndex
from consumer.metrics import DRIFT_KINDS, Metrics
from consumer.reconcile import ReconcileBusy
from consumer.settings import Settings
from tests.support import oci, skopeo
from tests.support.procs import LOOPBACK, free_port
from tests.support.registry import NotificationEndpoint, RegistryFleet, RegistryServer, bearer_headers

pytestmark = pytest.mark.e2e
DEADLINE_SECONDS = 60.0


async def index_view(index: TagIndex) -> dict[str, dict[str, str]]:
    view: dict[str, dict[str, str]] = {}
    for repo in await index.list_repositories(1000, None):
        view[repo] = {t.tag: t.digest for t in await index.list_tags(repo)}
    return view


def drift(metrics: Metrics) -> dict[str, float]:
    return {
        k: metrics.registry.get_sample_value("registry_consumer_reconcile_drift_total", {"kind": k}) or 0.0
        for k in DRIFT_KINDS
    }


def runs(metrics: Metrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("registry_consumer_reconcile_runs_total", {"outcome": outcome}) or 0.0


async def _converged(client: TestClient[Any, Any], registry: RegistryServer) -> dict[str, dict[str, str]]:
    truth = await registry.snapshot()
    view: dict[str, dict[str, str]] = {}
    try:
        async with asyncio.timeout(DEADLINE_SECONDS):
            while True:
                view = await index_view(client.app[INDEX])
                if view == truth:
                    break
                await asyncio.sleep(0.05)
    except TimeoutError:
        pass
    assert view == truth
    await registry.wait_notifications_delivered()
    await client.app[HOOKS].drain(30)
    return truth


@pytest.fixture
async def app_and_registry(
    aiohttp_client: Callable[..., Any],
    make_settings: Callable[..., Settings],
    metrics: Metrics,
    make_token: Callable[..., str],
    registries: RegistryFleet,
) -> tuple[TestClient[Any, Any], RegistryServer, NotificationEndpoint]:
    registry = registries.start()
    settings = make_settings(
        registry={"url": registry.url, "backoff_seconds": 0.05},
        reconcile={"interval_seconds": 0},
        policies=[{"repositories": ["*"]}],
    )
    client = await aiohttp_client(create_app(settings, metrics=metrics))
    endpoint = NotificationEndpoint(
        str(client.make_url("/v1/events")), headers=bearer_headers(make_token(scope="events:write"))
    )
    registry.stop()
    registry.notifications = (endpoint,)
    registry.start()
    return client, registry, endpoint


async def test_reconcile_repairs_what_a_restart_and_garbage_collection_lost(
    app_and_registry: tuple[TestClient[Any, Any], RegistryServer, NotificationEndpoint],
    metrics: Metrics,
    tmp_path: Path,
    redis_url: str,
) -> None:
    client, registry, endpoint = app_and_registry
    layout = tmp_path / "layout"
    img = {name: oci.write_image(layout, name) for name in ("a", "b", "b2", "c", "d", "u", "n")}
    await skopeo.push(img["a"], registry, "team/app", "1.0")
    await skopeo.retag(registry, "team/app", "1.0", "stable")
    await skopeo.push(img["b"], registry, "team/app", "2.0")
    await skopeo.push(img["d"], registry, "team/app", "keep")
    await skopeo.push_by_digest(img["u"], registry, "team/app")  # untagged: garbage collection will take it
    await _converged(client, registry)
    assert (await client.app[INDEX].get_manifest("team/app", img["u"].digest)) is not None
    before = drift(metrics)

    # The consumer stops hearing from the registry (a dead endpoint): these events queue, then die with
    # the restart below.
    registry.stop()
    registry.notifications = (
        NotificationEndpoint(f"http://{LOOPBACK}:{free_port()}/v1/events", timeout_seconds=0.2, backoff_seconds=0.2),
    )
    registry.start()
    await skopeo.push(img["c"], registry, "team/app", "3.0")  # missing_tag
    await skopeo.push(img["b2"], registry, "team/app", "2.0")  # wrong_digest (and b is left untagged)
    await registry.delete_manifest("team/app", img["a"].digest)  # ghost_tag: 1.0 and stable; a: ghost_manifest
    await skopeo.push(img["n"], registry, "new/repo", "1")  # missing_repository + missing_tag
    registry.stop()
    registry.garbage_collect(delete_untagged=True)  # removes u and b (ghost_manifest), sends no events
    registry.notifications = (endpoint,)
    registry.start()

    truth = await registry.snapshot()
    assert await index_view(client.app[INDEX]) != truth
    report = await client.app[RECONCILER].run()
    assert await index_view(client.app[INDEX]) == truth
    after = drift(metrics)
    assert {k: after[k] - before[k] for k in after} == {
        "missing_tag": 2,
        "wrong_digest": 1,
        "ghost_tag": 2,
        "missing_repository": 1,
        "ghost_manifest": 3,
    }
    assert dict(report.drift) == {
        "missing_tag": 2,
        "wrong_digest": 1,
        "ghost_tag": 2,
        "missing_repository": 1,
        "ghost_manifest": 3,
    }
    assert runs(metrics, "ok") == 1
    index = client.app[INDEX]
    for gone in (img["u"].digest, img["b"].digest, img["a"].digest):
        assert await index.get_manifest("team/app", gone) is None
    tag = (await index.get_tags("team/app", ["3.0"]))["3.0"]
    assert (tag.digest, tag.media_type, tag.size) == (img["c"].digest, oci.OCI_MANIFEST, img["c"].size)

    # A repair is audited, and is not an unexpected deletion.
    repairs, _ = await client.app[AUDIT].page(kind="reconcile_repair", n=100)
    assert sorted((r.repository, (r.detail or "").split(":")[0], r.tag) for r in repairs) == sorted(
        [
            ("team/app", "missing_tag", "3.0"),
            ("new/repo", "missing_tag", "1"),
            ("new/repo", "missing_repository", None),
            ("team/app", "wrong_digest", "2.0"),
            ("team/app", "ghost_tag", "1.0"),
            ("team/app", "ghost_tag", "stable"),
            ("team/app", "ghost_manifest", None),
            ("team/app", "ghost_manifest", None),
            ("team/app", "ghost_manifest", None),
        ]
    )
    assert (await client.app[AUDIT].page(kind="unexpected_deletion"))[0] == []
    assert (
        sum(
            metrics.registry.get_sample_value(
                "registry_consumer_unexpected_deletions_total", {"kind": k, "protected": p}
            )
            or 0
            for k in ("tag", "manifest")
            for p in ("true", "false")
        )
        == 0
    )

    # A second run finds nothing; real events keep flowing and agree with the repaired index.
    assert sum((await client.app[RECONCILER].run()).drift.values()) == 0
    await skopeo.push(img["a"], registry, "team/app", "4.0")
    await _converged(client, registry)


async def test_cli_reconciles_one_repository(
    app_and_registry: tuple[TestClient[Any, Any], RegistryServer, NotificationEndpoint],
    tmp_path: Path,
    redis_url: str,
) -> None:
    client, registry, _ = app_and_registry
    image = oci.write_image(tmp_path / "layout", "a")
    registry.stop()
    registry.notifications = ()  # nobody hears these
    registry.start()
    await skopeo.push(image, registry, "quiet/one", "1.0")
    await skopeo.push(image, registry, "quiet/two", "1.0")
    env = {**os.environ, "REGISTRY_CONSUMER_REDIS_URL": redis_url, "REGISTRY_CONSUMER_REGISTRY_URL": registry.url}
    env.pop("REGISTRY_CONSUMER_CONFIG", None)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "consumer", "reconcile", "--repository", "quiet/one"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "repositories": 1,
        "tags": 1,
        "drift": {"missing_repository": 1, "missing_tag": 1},
    }
    view = await index_view(client.app[INDEX])
    assert view == {"quiet/one": {"1.0": image.digest}}  # only the repository asked for


async def test_cli_without_a_registry_names_the_setting(redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_CONSUMER_")}
    env["REGISTRY_CONSUMER_REDIS_URL"] = redis_url
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "consumer", "reconcile"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "registry" in result.stderr


async def test_one_run_at_a_time(
    app_and_registry: tuple[TestClient[Any, Any], RegistryServer, NotificationEndpoint],
    metrics: Metrics,
) -> None:
    client, _, _ = app_and_registry
    reconciler = client.app[RECONCILER]
    lock = client.app[REDIS].lock(client.app[KEYS].reconcile_lock, timeout=30)
    assert await lock.acquire(blocking=False)
    try:
        with pytest.raises(ReconcileBusy):
            await reconciler.run()
    finally:
        await lock.release()
    assert runs(metrics, "ok") == 0 and runs(metrics, "error") == 0
    await reconciler.run()
    assert runs(metrics, "ok") == 1


async def test_a_multi_arch_index_missed_by_the_events_is_repaired_with_its_children(
    app_and_registry: tuple[TestClient[Any, Any], RegistryServer, NotificationEndpoint], tmp_path: Path,
) -> None:
    """Without its children, retention would keep every untagged manifest of the repository
    (index_children_unknown); reconciliation reads them from the registry."""
    client, registry, endpoint = app_and_registry
    registry.stop()
    registry.notifications = (
        NotificationEndpoint(f"http://{LOOPBACK}:{free_port()}/v1/events", timeout_seconds=0.2, backoff_seconds=0.2),
    )
    registry.start()
    index = oci.write_index(tmp_path / "layout", "multi")
    await skopeo.push(index, registry, "team/multi", "1.0")  # the consumer never hears of it
    registry.stop()
    registry.notifications = (endpoint,)
    registry.start()
    await client.app[RECONCILER].run()
    manifest = await client.app[INDEX].get_manifest("team/multi", index.digest)
    assert manifest is not None and manifest.tags == ["1.0"]
    assert sorted(manifest.references) == sorted(index.children)
