"""The registry harness against the real programs: docker-registry 2.8.2 and skopeo.

These tests prove that tests/support drives the registry the way the end-to-end tests rely on:
what is pushed is what catalog, tags/list and HEAD report, deletes and GC behave as on 2.8.2,
auth works, and notifications reach a receiver.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support import oci, skopeo
from tests.support.procs import LOOPBACK, free_port
from tests.support.registry import (
    BasicCredentials,
    HtpasswdAuth,
    NotificationEndpoint,
    RegistryFleet,
    RegistryServer,
    TokenIssuer,
    bearer_headers,
    repository_access,
)

EVENTS_V1 = "application/vnd.docker.distribution.events.v1+json"


@pytest.fixture
def registry(registries: RegistryFleet) -> RegistryServer:
    """A registry without auth or notifications."""
    return registries.start()


class EventReceiver:
    """A bare notification endpoint on a fixed loopback port that records what the registry posts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}/events"
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self._arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/events", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), json.loads(await request.read())))
        self._arrived.set()
        return web.Response()

    def events(self) -> list[dict[str, Any]]:
        return [event for _, envelope in self.requests for event in envelope["events"]]

    async def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], seconds: float = 20) -> None:
        async with asyncio.timeout(seconds):
            while not predicate(self.events()):
                self._arrived.clear()
                await self._arrived.wait()


@pytest.fixture
async def receiver() -> AsyncIterator[EventReceiver]:
    rec = EventReceiver()
    await rec.start()
    yield rec
    await rec.stop()


async def test_single_arch_oci_push_is_what_the_registry_reports(registry: RegistryServer, tmp_path: Path) -> None:
    image = oci.write_image(tmp_path / "layout", "a")

    pushed = await skopeo.push(image, registry, "myapp1", "1.0")

    assert pushed == image.digest
    assert await registry.catalog() == ["myapp1"]
    assert await registry.tags("myapp1") == ["1.0"]
    assert await registry.head_digest("myapp1", "1.0") == image.digest
    media_type, manifest = await registry.get_manifest("myapp1", "1.0")
    assert media_type == oci.OCI_MANIFEST
    assert manifest["mediaType"] == oci.OCI_MANIFEST


async def test_each_written_image_has_new_digests(tmp_path: Path) -> None:
    first = oci.write_image(tmp_path / "layout", "x")
    second = oci.write_image(tmp_path / "layout", "x")

    assert first.digest != second.digest
    assert oci.read_ref(tmp_path / "layout", "x").digest == second.digest


async def test_multi_arch_index_push_keeps_index_and_children(registry: RegistryServer, tmp_path: Path) -> None:
    index = oci.write_index(tmp_path / "layout", "multi")

    pushed = await skopeo.push(index, registry, "team/myapp2", "3.0")

    assert pushed == index.digest
    assert await registry.head_digest("team/myapp2", "3.0") == index.digest
    media_type, doc = await registry.get_manifest("team/myapp2", "3.0")
    assert media_type == oci.OCI_INDEX
    assert tuple(m["digest"] for m in doc["manifests"]) == index.children
    assert [m["platform"]["architecture"] for m in doc["manifests"]] == ["amd64", "arm64"]
    for child in index.children:
        assert await registry.head_digest("team/myapp2", child) == child


async def test_schema2_push_converts_the_manifest(registry: RegistryServer, tmp_path: Path) -> None:
    image = oci.write_image(tmp_path / "layout", "legacy")

    pushed = await skopeo.push(image, registry, "legacy/app", "4.0", v2s2=True)

    assert pushed != image.digest
    assert await registry.head_digest("legacy/app", "4.0") == pushed
    media_type, manifest = await registry.get_manifest("legacy/app", "4.0")
    assert media_type == oci.DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"


async def test_retag_push_by_digest_and_pull(registry: RegistryServer, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    tagged = oci.write_image(layout, "tagged")
    untagged = oci.write_image(layout, "untagged")
    await skopeo.push(tagged, registry, "myapp1", "2.0")

    assert await skopeo.retag(registry, "myapp1", "2.0", "stable") == tagged.digest
    assert await skopeo.push_by_digest(untagged, registry, "myapp1") == untagged.digest

    assert await registry.tags("myapp1") == ["2.0", "stable"]
    assert await registry.head_digest("myapp1", "stable") == tagged.digest
    assert await registry.head_digest("myapp1", untagged.digest) == untagged.digest
    pulled = await skopeo.pull(registry, "myapp1", "stable", tmp_path / "pulled", "p")
    assert pulled.digest == tagged.digest
    raw = await skopeo.inspect(registry, "myapp1", "2.0")
    assert raw["mediaType"] == oci.OCI_MANIFEST


async def test_catalog_follows_pagination(registry: RegistryServer, tmp_path: Path) -> None:
    image = oci.write_image(tmp_path / "layout", "a")
    names = ["b/one", "a", "c"]
    for name in names:
        await skopeo.push(image, registry, name, "t")

    assert await registry.catalog(page_size=1) == sorted(names)


async def test_delete_by_digest_removes_every_tag_on_it(registry: RegistryServer, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    doomed = oci.write_image(layout, "doomed")
    kept = oci.write_image(layout, "kept")
    await skopeo.push(doomed, registry, "myapp1", "2.0")
    await skopeo.retag(registry, "myapp1", "2.0", "stable")
    await skopeo.push(kept, registry, "myapp1", "1.0")

    await registry.delete_manifest("myapp1", doomed.digest)

    assert await registry.tags("myapp1") == ["1.0"]
    assert await registry.head_digest("myapp1", "2.0") is None
    assert await registry.head_digest("myapp1", "stable") is None
    assert await registry.head_digest("myapp1", doomed.digest) is None
    assert await registry.snapshot() == {"myapp1": {"1.0": kept.digest}}


async def test_a_repository_without_tags_stays_in_the_catalog(registry: RegistryServer, tmp_path: Path) -> None:
    """2.8.2: deleting the last tagged digest leaves the name in _catalog with tags: null."""
    image = oci.write_image(tmp_path / "layout", "only")
    await skopeo.push(image, registry, "lonely", "1.0")

    await registry.delete_manifest("lonely", image.digest)

    assert await registry.catalog() == ["lonely"]
    assert await registry.tags("lonely") == []
    assert await registry.tags("never-pushed") is None


async def test_garbage_collect_delete_untagged_drops_untagged_manifests(
    registry: RegistryServer, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    tagged = oci.write_image(layout, "tagged")
    untagged = oci.write_image(layout, "untagged")
    await skopeo.push(tagged, registry, "myapp1", "1.0")
    await skopeo.push_by_digest(untagged, registry, "myapp1")

    with pytest.raises(RuntimeError, match="read-only"):
        registry.garbage_collect(delete_untagged=True)
    registry.restart(read_only=True)
    registry.garbage_collect(delete_untagged=True)
    registry.restart(read_only=False)

    assert await registry.head_digest("myapp1", untagged.digest) is None
    assert await registry.head_digest("myapp1", "1.0") == tagged.digest


async def test_restart_keeps_storage_and_ports(registry: RegistryServer, tmp_path: Path) -> None:
    image = oci.write_image(tmp_path / "layout", "a")
    await skopeo.push(image, registry, "myapp1", "1.0")
    port, old_pid = registry.port, registry.pid

    registry.restart()

    assert registry.port == port
    assert registry.pid not in (None, old_pid)
    assert await registry.snapshot() == {"myapp1": {"1.0": image.digest}}


async def test_htpasswd_auth(registries: RegistryFleet, tmp_path: Path) -> None:
    user = BasicCredentials("ci-bot", "s3cret-pw")
    registry = registries.start(auth=HtpasswdAuth([user]))
    image = oci.write_image(tmp_path / "layout", "a")

    with pytest.raises(skopeo.SkopeoError, match=r"unauthorized|authentication required"):
        await skopeo.push(image, registry, "myapp1", "1.0")
    with pytest.raises(skopeo.SkopeoError):
        await skopeo.push(image, registry, "myapp1", "1.0", auth=skopeo.Auth(creds=BasicCredentials("ci-bot", "no")))
    await skopeo.push(image, registry, "myapp1", "1.0", auth=skopeo.Auth(creds=user))

    assert await registry.snapshot() == {"myapp1": {"1.0": image.digest}}


@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
async def test_token_auth_with_libtrust_kid(registries: RegistryFleet, tmp_path: Path, algorithm: str) -> None:
    issuer = TokenIssuer(tmp_path / "keys", algorithm=algorithm)  # type: ignore[arg-type]
    stranger = TokenIssuer(tmp_path / "other-keys", issuer=issuer.issuer, service=issuer.service)
    registry = registries.start(auth=issuer.auth(), token_issuer=issuer)
    image = oci.write_image(tmp_path / "layout", "a")
    access = [repository_access("myapp1", ["pull", "push"])]

    # Same claims, signed by a key the registry does not trust.
    with pytest.raises(skopeo.SkopeoError, match=r"denied|unauthorized|authentication required"):
        await skopeo.push(image, registry, "myapp1", "1.0", auth=skopeo.Auth(token=stranger.mint(access)))
    # A trusted token for another repository.
    with pytest.raises(skopeo.SkopeoError, match=r"denied|unauthorized|authentication required"):
        await skopeo.push(
            image,
            registry,
            "myapp1",
            "1.0",
            auth=skopeo.Auth(token=issuer.mint([repository_access("other")])),
        )
    await skopeo.push(image, registry, "myapp1", "1.0", auth=skopeo.Auth(token=issuer.mint(access)))

    assert await registry.snapshot() == {"myapp1": {"1.0": image.digest}}


async def test_notifications_reach_the_endpoint(
    registries: RegistryFleet, receiver: EventReceiver, tmp_path: Path
) -> None:
    registry = registries.start(notifications=[NotificationEndpoint(receiver.url, headers=bearer_headers("tok-123"))])
    index = oci.write_index(tmp_path / "layout", "multi")

    await skopeo.push(index, registry, "team/myapp2", "3.0")
    await receiver.wait_for(lambda evs: any(e["target"].get("tag") == "3.0" for e in evs))

    headers = [h for h, _ in receiver.requests]
    assert {h["Authorization"] for h in headers} == {"Bearer tok-123"}
    assert {h["Content-Type"] for h in headers} == {EVENTS_V1}
    manifest_pushes = [
        e for e in receiver.events() if e["action"] == "push" and e["target"]["mediaType"] != "application/octet-stream"
    ]
    by_digest = {e["target"]["digest"]: e for e in manifest_pushes}
    assert set(by_digest) == {index.digest, *index.children}
    assert by_digest[index.digest]["target"]["tag"] == "3.0"
    # includereferences: the index event lists its children.
    assert [r["digest"] for r in by_digest[index.digest]["target"]["references"]] == list(index.children)
    for child in index.children:
        assert "tag" not in by_digest[child]["target"]

    await registry.wait_notifications_delivered()
    delivered = (await registry.notification_metrics())["consumer"]
    assert delivered["Successes"] == delivered["Events"] == len(receiver.requests)


async def test_registry_28_counts_deliveries_in_expvar_not_prometheus(
    registries: RegistryFleet, receiver: EventReceiver, tmp_path: Path
) -> None:
    """2.8.2 has no registry_notifications_* Prometheus series; /debug/vars has the counters."""
    registry = registries.start(notifications=[NotificationEndpoint(receiver.url)])
    await skopeo.push(oci.write_image(tmp_path / "layout", "a"), registry, "myapp1", "1.0")
    await registry.wait_notifications_delivered()

    metrics = await registry.metrics_text()
    assert "registry_http_requests_total" in metrics
    assert "registry_notifications" not in metrics
    counters = (await registry.notification_metrics())["consumer"]
    assert counters["Successes"] == counters["Events"] == len(receiver.requests) == 3


async def test_restart_drops_undelivered_notifications(registries: RegistryFleet, tmp_path: Path) -> None:
    """The queue is in memory: events pending at a restart are never sent (reconcile after restarts)."""
    late = EventReceiver()  # not listening yet: every delivery fails and stays queued
    registry = registries.start(notifications=[NotificationEndpoint(late.url)])
    layout = tmp_path / "layout"
    await skopeo.push(oci.write_image(layout, "lost"), registry, "myapp1", "lost")
    await registry.wait_notifications(lambda metrics: metrics["consumer"]["Pending"] == 3)

    registry.restart()
    await late.start()
    try:
        await skopeo.push(oci.write_image(layout, "kept"), registry, "myapp1", "kept")
        await registry.wait_notifications_delivered()
    finally:
        await late.stop()

    # FIFO per endpoint: had the old events survived, they would have arrived before these.
    assert [e["target"].get("tag") for e in late.events()] == [None, None, "kept"]
    assert await registry.tags("myapp1") == ["kept", "lost"]
