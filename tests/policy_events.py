"""Registry events in the shape distribution 2.8.2 sends (see tests/fixtures/registry-events), for the policy
tests that drive the webhook directly; and a helper to wait for the listeners those events start."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from aiohttp.test_utils import TestClient

from consumer.appkeys import HOOKS

V1 = "application/vnd.docker.distribution.events.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_clock = itertools.count(1)


def digest(label: str) -> str:
    """A well-formed digest made from ``label``."""
    return "sha256:" + (label.encode().hex() * 64)[:64]


def event(
    action: str,
    repository: str,
    *,
    tag: str | None = None,
    digest: str | None = None,
    actor: str = "ci-bot",
    request_id: str | None = None,
    useragent: str = "skopeo/1.9.3",
    second: int | None = None,
) -> dict[str, Any]:
    """One event; timestamps increase with every call unless ``second`` pins one."""
    tick = next(_clock)
    seconds = second if second is not None else tick // 1000
    target: dict[str, Any] = {"repository": repository}
    method = {"push": "PUT", "delete": "DELETE", "pull": "GET"}[action]
    if action != "delete":
        target.update(mediaType=OCI_MANIFEST, size=528, length=528)
    if digest is not None:
        target["digest"] = digest
    if tag is not None:
        target["tag"] = tag
    return {
        "id": str(uuid.uuid4()),
        "timestamp": f"2026-12-04T10:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{tick % 1000:03d}000Z",
        "action": action,
        "target": target,
        "request": {
            "id": request_id or str(uuid.uuid4()),
            "addr": "10.1.2.3:40000",
            "host": "registry:5000",
            "method": method,
            "useragent": useragent,
        },
        "actor": {"name": actor},
        "source": {"addr": "registry:5000", "instanceID": "i-1"},
    }


async def send(client: TestClient[Any, Any], headers: dict[str, str], *events: dict[str, Any]) -> None:
    """POST each event in its own envelope (as the registry does), then wait for every listener."""
    for ev in events:
        resp = await client.post("/v1/events", json={"events": [ev]}, headers={**headers, "Content-Type": V1})
        assert resp.status == 200, await resp.text()
    await client.app[HOOKS].drain(30)
