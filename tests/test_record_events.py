"""scripts/record_events.py against Debian's docker-registry: what it records replays into the registry's state."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from consumer.app import create_app
from consumer.metrics import Metrics
from consumer.settings import Settings
from scripts.record_events import record

pytestmark = pytest.mark.e2e


def _envelopes(out: Path) -> list[dict[str, Any]]:
    return [json.loads(f.read_text()) for d in sorted(p for p in out.iterdir() if p.is_dir())
            for f in sorted(d.glob("*.json"))]


async def test_recorded_envelopes_replay_into_the_registrys_final_state(
    tmp_path: Path, aiohttp_client: Callable[..., Any], settings: Settings, auth_headers: dict[str, str]
) -> None:
    out = tmp_path / "recorded"
    assert await record("/usr/bin/docker-registry", out) == 0
    counts = {d.name: len(list(d.glob("*.json"))) for d in out.iterdir() if d.is_dir()}
    assert len(counts) == 12 and counts["12-delete-tag"] == 0  # 2.8 refuses DELETE by tag and sends nothing
    assert all(n > 0 for name, n in counts.items() if name != "12-delete-tag"), counts
    assert {e["headers"]["Authorization"] for e in _envelopes(out)} == {"Bearer REPLACE_WITH_JWT"}

    client = await aiohttp_client(create_app(settings, metrics=Metrics(process=False)))
    for envelope in _envelopes(out):
        resp = await client.post("/v1/events", data=json.dumps(envelope["body"]),
                                 headers={**auth_headers, "Content-Type": envelope["headers"]["Content-Type"]})
        assert resp.status == 200 and (await resp.json())["dead_lettered"] == 0
    final = json.loads((out / "final-state.json").read_text())
    for repository, tags in final.items():
        body = await (await client.get(f"/v1/repositories/{repository}/tags", headers=auth_headers)).json()
        assert {t["tag"]: t["digest"] for t in body["tags"]} == tags, repository
