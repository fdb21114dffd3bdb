"""End to end: a real docker-registry 2.8.2 notifies the real consumer; the index must equal the registry.

The consumer runs as ``python -m consumer serve`` (conftest ``consumer_process``) on a real port. The
registry's notification endpoint carries a token minted with ``registry-consumer token mint``. skopeo
drives every push, retag, pull and delete, then the test waits (polling the consumer's API against a
deadline) until the consumer's repositories, tags and digests equal what the registry's ``_catalog``,
``tags/list`` and ``HEAD`` report, exactly.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ConsumerProcess
from tests.support import oci, skopeo
from tests.support.registry import NotificationEndpoint, RegistryFleet, RegistryServer, bearer_headers

pytestmark = pytest.mark.e2e

CONVERGENCE_DEADLINE_SECONDS = 60.0
TagView = dict[str, dict[str, Any]]


def mint_with_cli(consumer: ConsumerProcess) -> str:
    """The token an operator pastes into the registry config, made by the documented command."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "consumer",
            "token",
            "mint",
            "--sub",
            "registry",
            "--scope",
            "events:write",
            "--ttl",
            "365d",
        ],
        env=consumer.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


class ConsumerApi:
    """The consumer's read API, as a client would page through it."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base = base_url

    async def get(self, path: str) -> tuple[int, Any]:
        async with self._session.get(f"{self._base}{path}") as resp:
            return resp.status, await resp.json()

    async def repositories(self, page_size: int = 2) -> list[str]:
        """Every repository, following ``next`` with ``last=`` like the registry's catalog."""
        names: list[str] = []
        last: str | None = None
        while True:
            query = f"?n={page_size}" + (f"&last={last}" if last else "")
            status, body = await self.get(f"/v1/repositories{query}")
            assert status == 200, body
            names.extend(body["repositories"])
            last = body["next"]
            if last is None:
                return names

    async def tags(self, repository: str) -> list[dict[str, Any]]:
        status, body = await self.get(f"/v1/repositories/{repository}/tags")
        assert status == 200, body
        assert body["repository"] == repository
        return list(body["tags"])

    async def view(self) -> dict[str, TagView]:
        """``{repository: {tag: tag entry}}`` of the whole index, tags in the API's order."""
        return {repo: {t["tag"]: t for t in await self.tags(repo)} for repo in await self.repositories()}

    async def metrics(self) -> dict[tuple[str, str], float]:
        """``registry_consumer_events_total`` samples by (action, outcome)."""
        async with self._session.get(f"{self._base}/metrics") as resp:
            text = await resp.text()
        samples: dict[tuple[str, str], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "registry_consumer_events_total":
                    samples[(sample.labels["action"], sample.labels["outcome"])] = sample.value
        return samples


def digests_of(view: dict[str, TagView]) -> dict[str, dict[str, str]]:
    return {repo: {tag: entry["digest"] for tag, entry in tags.items()} for repo, tags in view.items()}


async def wait_until_consumer_equals(
    api: ConsumerApi, truth: dict[str, dict[str, str]], registry: RegistryServer, consumer: ConsumerProcess
) -> dict[str, TagView]:
    """Poll until the consumer's {repo: {tag: digest}} equals ``truth``; fail with a diff at the deadline."""
    view: dict[str, TagView] = {}
    try:
        async with asyncio.timeout(CONVERGENCE_DEADLINE_SECONDS):
            while True:
                view = await api.view()
                if digests_of(view) == truth:
                    return view
                await asyncio.sleep(0.1)
    except TimeoutError:
        pass
    assert digests_of(view) == truth, (
        f"consumer did not converge in {CONVERGENCE_DEADLINE_SECONDS}s\n"
        f"registry deliveries: {await registry.notification_metrics()}\n"
        f"registry log:\n{registry.log_tail(2000)}\nconsumer log:\n{consumer.process.log_tail(3000)}"
    )
    return view


async def test_consumer_index_equals_the_registry(
    consumer_process: ConsumerProcess, registries: RegistryFleet, tmp_path: Path
) -> None:
    webhook_token = mint_with_cli(consumer_process)
    registry = registries.start(
        notifications=[NotificationEndpoint(f"{consumer_process.url}/v1/events", headers=bearer_headers(webhook_token))]
    )
    layout = tmp_path / "layout"
    one, two, moved, untagged, legacy = (oci.write_image(layout, ref) for ref in ("1", "2", "3", "4", "5"))
    multi = oci.write_index(layout, "multi")

    # The registry's story, as in ../shared/registry-events/distribution-2.8.2.
    await skopeo.push(one, registry, "myapp1", "1.0")  # OCI single-arch
    await skopeo.push(two, registry, "myapp1", "2.0")
    assert await skopeo.retag(registry, "myapp1", "2.0", "latest") == two.digest  # second tag, same digest
    await skopeo.push(multi, registry, "team/myapp2", "3.0")  # OCI index: children by digest, then the tag
    schema2 = await skopeo.push(legacy, registry, "legacy/app", "4.0", v2s2=True)  # Docker schema 2
    await skopeo.push(moved, registry, "myapp1", "latest")  # move latest to a new digest
    assert await skopeo.retag(registry, "myapp1", "2.0", "stable") == two.digest
    await skopeo.copy(registry.ref("myapp1", "1.0"), registry.ref("other/app", "1.0"), preserve_digests=True)
    await skopeo.push_by_digest(untagged, registry, "myapp1")  # a manifest with no tag
    pulled = await skopeo.pull(registry, "myapp1", "1.0", tmp_path / "pulled", "1.0")  # GET: a pull
    assert pulled.digest == one.digest
    await registry.delete_manifest("myapp1", two.digest)  # 2.0 and stable point here

    truth = await registry.snapshot()
    assert truth == {
        "legacy/app": {"4.0": schema2},
        "myapp1": {"1.0": one.digest, "latest": moved.digest},
        "other/app": {"1.0": one.digest},
        "team/myapp2": {"3.0": multi.digest},
    }
    catalog = await registry.catalog()
    registry_tags = {repo: await registry.tags(repo) for repo in catalog}

    headers = {"Authorization": f"Bearer {consumer_process.token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        api = ConsumerApi(session, consumer_process.url)
        view = await wait_until_consumer_equals(api, truth, registry, consumer_process)
        await registry.wait_notifications_delivered()
        # Everything the registry sent has been answered; the index must still be exactly the registry.
        view = await api.view()

        assert await api.repositories() == catalog
        assert await api.repositories(page_size=100) == catalog
        assert {repo: list(tags) for repo, tags in view.items()} == registry_tags
        for repo, tags in view.items():
            for tag, entry in tags.items():
                assert entry["digest"] == await registry.head_digest(repo, tag), (repo, tag)

        assert view["team/myapp2"]["3.0"]["media_type"] == oci.OCI_INDEX
        assert view["legacy/app"]["4.0"]["media_type"] == oci.DOCKER_MANIFEST
        assert view["myapp1"]["1.0"]["media_type"] == oci.OCI_MANIFEST
        assert view["myapp1"]["1.0"]["size"] == one.size
        assert view["myapp1"]["1.0"]["pushed_at"] is not None
        assert view["myapp1"]["1.0"]["last_pulled_at"] is not None
        # HEAD requests (the snapshot above) are not pulls.
        assert view["team/myapp2"]["3.0"]["last_pulled_at"] is None

        status, index_doc = await api.get(f"/v1/repositories/team/myapp2/digests/{multi.digest}")
        assert status == 200, index_doc
        assert index_doc["tags"] == ["3.0"]
        assert index_doc["references"] == list(multi.children)
        for child in multi.children:
            status, child_doc = await api.get(f"/v1/repositories/team/myapp2/digests/{child}")
            assert (status, child_doc["tags"]) == (200, []), child_doc
        status, untagged_doc = await api.get(f"/v1/repositories/myapp1/digests/{untagged.digest}")
        assert (status, untagged_doc["tags"]) == (200, []), untagged_doc
        status, latest_doc = await api.get(f"/v1/repositories/myapp1/digests/{moved.digest}")
        assert (status, latest_doc["tags"]) == (200, ["latest"]), latest_doc
        status, _ = await api.get(f"/v1/repositories/myapp1/digests/{two.digest}")
        assert status == 404

        # Every delivery the registry saw succeed carried one event, counted before the consumer answered:
        # read the registry first, so later deliveries (the HEADs above) cannot race the comparison.
        delivered = (await registry.notification_metrics())["consumer"]["Successes"]
        events = await api.metrics()
        assert events[("push", "applied")] >= 1
        assert events[("delete", "applied")] >= 1
        assert sum(events.values()) >= delivered > 0
