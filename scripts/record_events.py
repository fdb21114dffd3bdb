"""Record a real registry's notification envelopes for each client action: the test corpus's source.

Runs a registry binary (Debian's ``docker-registry`` 2.8.2 by default; ``--registry-bin`` for another build of
CNCF distribution, a 3.x one say) with htpasswd auth (user ``ci-bot``) and ``notifications`` pointed at a
capture endpoint on loopback, drives each scenario with ``skopeo`` and plain HTTP, and writes what arrived,
in arrival order, as ``<out>/<scenario>/NNN.json`` = ``{"headers": {...}, "body": <envelope>}`` (the layout
of ``tests/fixtures/registry-events``), and the registry's final ``{repository: {tag: digest}}`` as
``<out>/final-state.json``. The Authorization header the registry was told to send is the
placeholder ``Bearer REPLACE_WITH_JWT``. Every process it starts is stopped before it exits.

    .venv/bin/python scripts/record_events.py --out /tmp/events [--registry-bin PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the repo root holds tests/
    sys.path.insert(0, str(ROOT))

from tests.support import oci, skopeo  # noqa: E402
from tests.support.procs import LOOPBACK, free_port  # noqa: E402
from tests.support.registry import (  # noqa: E402
    BasicCredentials,
    HtpasswdAuth,
    NotificationEndpoint,
    RegistryServer,
    bearer_headers,
    repository_access,
)

KEPT_HEADERS = ("User-Agent", "Authorization", "Content-Type")
QUIET_SECONDS = 2.0  # deliveries are asynchronous: a scenario is done when nothing arrived for this long


class Capture:
    """The notification endpoint: keeps every delivery of the current scenario, answers 200."""

    def __init__(self) -> None:
        self.deliveries: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.deliveries.append({"headers": {h: request.headers[h] for h in KEPT_HEADERS if h in request.headers},
                                "body": body})
        self._arrived.set()
        return web.Response(text="ok")

    async def settle(self) -> list[dict[str, Any]]:
        """Wait until nothing has arrived for ``QUIET_SECONDS`` (counted from the call at the earliest), then
        hand the deliveries over and start afresh."""
        while True:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), QUIET_SECONDS)
            except TimeoutError:
                break
        taken, self.deliveries = self.deliveries, []
        return taken


class Scenarios:
    """The client actions of the corpus, one method each, run in order on one registry."""

    def __init__(self, registry: RegistryServer, auth: skopeo.Auth, layout: Path) -> None:
        self.registry, self.auth, self.layout = registry, auth, layout
        self.digests: dict[str, str] = {}

    async def push(self, ref: str, repository: str, tag: str, **kw: Any) -> str:
        return await skopeo.push(oci.write_image(self.layout, ref), self.registry, repository, tag, auth=self.auth,
                                 **kw)

    async def s01_push_oci_single_arch_tag(self) -> None:
        self.digests["1.0"] = await self.push("one", "myapp1", "1.0")

    async def s02_push_second_version(self) -> None:
        self.digests["2.0"] = await self.push("two", "myapp1", "2.0")

    async def s03_retag_same_digest_as_latest(self) -> None:
        await skopeo.retag(self.registry, "myapp1", "2.0", "latest", auth=self.auth)

    async def s04_push_multi_arch_index(self) -> None:
        await skopeo.push(oci.write_index(self.layout, "multi"), self.registry, "team/myapp2", "3.0", auth=self.auth)

    async def s05_push_docker_schema2(self) -> None:
        await self.push("legacy", "legacy/app", "4.0", v2s2=True)

    async def s06_move_tag_to_new_digest(self) -> None:
        await self.push("moved", "myapp1", "latest")

    async def s07_pull_by_tag(self) -> None:
        await skopeo.pull(self.registry, "myapp1", "1.0", self.layout, "pulled", auth=self.auth)

    async def s08_head_manifest_by_tag(self) -> None:
        await self.registry.head_digest("myapp1", "1.0")

    async def s09_cross_repo_copy_mount(self) -> None:
        await skopeo.copy(self.registry.ref("myapp1", "1.0"), self.registry.ref("other/app", "1.0"),
                          src_auth=self.auth, dest_auth=self.auth, preserve_digests=True)
        await skopeo.retag(self.registry, "myapp1", "2.0", "stable", auth=self.auth)

    async def s10_delete_digest_with_two_tags(self) -> None:
        await self.registry.delete_manifest("myapp1", self.digests["2.0"])  # 2.0 and stable point at it

    async def s11_push_by_digest_no_tag(self) -> None:
        await skopeo.push_by_digest(oci.write_image(self.layout, "untagged"), self.registry, "myapp1", auth=self.auth)

    async def s12_delete_tag(self) -> None:
        """``DELETE /v2/<name>/manifests/<tag>``: distribution 3 untags; 2.8 answers 400 and sends nothing."""
        await self.registry._request("DELETE", "/v2/myapp1/manifests/1.0", [repository_access("myapp1", ["delete"])],
                                     ok=(202, 400))

    def all(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        steps = sorted(name for name in dir(self) if name.startswith("s") and name[1:3].isdigit())
        return [(name[1:].replace("_", "-", 1).replace("_", "-"), getattr(self, name)) for name in steps]


async def record(registry_bin: str, out: Path) -> int:
    capture = Capture()
    app = web.Application()
    app.router.add_post("/events", capture.receive)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    user = BasicCredentials("ci-bot", secrets.token_urlsafe(12))
    endpoint = NotificationEndpoint(f"http://{LOOPBACK}:{port}/events", headers=bearer_headers("REPLACE_WITH_JWT"),
                                    timeout_seconds=5.0)
    written = 0
    try:
        with tempfile.TemporaryDirectory(prefix="record-events-") as tmp:
            registry = RegistryServer(Path(tmp) / "registry", notifications=[endpoint], auth=HtpasswdAuth([user]),
                                      binary=registry_bin)
            with registry:
                scenarios = Scenarios(registry, skopeo.Auth(creds=user), Path(tmp) / "layout")
                await capture.settle()
                for name, run in scenarios.all():
                    await run()
                    deliveries = await capture.settle()
                    folder = out / name
                    folder.mkdir(parents=True, exist_ok=True)
                    for stale in folder.glob("*.json"):  # re-recording: an envelope fewer must not stay behind
                        stale.unlink()
                    for number, delivery in enumerate(deliveries, start=1):
                        (folder / f"{number:03d}.json").write_text(json.dumps(delivery, indent=1) + "\n")
                    written += len(deliveries)
                    print(f"{name}: {len(deliveries)} envelope(s)")
                # What the registry holds at the end (its HEADs send events nobody records any more): replaying
                # every scenario must give this index.
                state = await registry.snapshot()
                (out / "final-state.json").write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    finally:
        await runner.cleanup()
    print(f"{written} envelopes in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for the scenario folders")
    parser.add_argument("--registry-bin", default="/usr/bin/docker-registry", help="the registry binary to run")
    args = parser.parse_args(argv)
    return asyncio.run(record(args.registry_bin, args.out))


if __name__ == "__main__":
    raise SystemExit(main())
