"""Reading the dead-letter stream, and replaying what the consumer understands now."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import TestClient

from consumer.appkeys import DEAD_LETTERS
from consumer.deadletters_api import changes_of
from tests.conftest import load_envelopes

V1 = "application/vnd.docker.distribution.events.v1+json"


def _events(scenario: str = "distribution-2.8.2/01-push-oci-single-arch-tag") -> list[dict[str, Any]]:
    return [copy.deepcopy(ev) for env in load_envelopes(scenario) for ev in env["body"]["events"]]


async def _post(client: TestClient[Any, Any], headers: dict[str, str], body: str) -> None:
    resp = await client.post("/v1/events", data=body, headers={**headers, "Content-Type": V1})
    assert resp.status == 200


async def test_pages_newest_first_with_a_cursor(client: TestClient[Any, Any], auth_headers: dict[str, str],
                                                make_token: Callable[..., str]) -> None:
    for n in range(3):
        await _post(client, auth_headers, f"not json {n}")
    seen: list[str] = []
    url = "/v1/dead-letters?n=2"
    while url:
        resp = await client.get(url, headers=auth_headers)
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        seen += [e["payload"] for e in page["entries"]]
        assert all(e["reason"].startswith("malformed JSON") and e["received_at"] > 0 for e in page["entries"])
        url = f"/v1/dead-letters?n=2&before={page['next']}" if page["next"] else ""
    assert seen == ["not json 2", "not json 1", "not json 0"]
    assert (await client.get("/v1/dead-letters?before=x", headers=auth_headers)).status == 400
    assert (await client.get(f"/v1/dead-letters?before={2**64}-0", headers=auth_headers)).status == 400
    oldest = await (await client.get("/v1/dead-letters?before=0-0", headers=auth_headers)).json()
    assert oldest == {"entries": [], "next": None}
    writer = {"Authorization": f"Bearer {make_token(scope='events:write')}"}
    assert (await client.get("/v1/dead-letters", headers=writer)).status == 403


async def test_replay_applies_what_is_valid_now_once_and_keeps_the_rest(
    client: TestClient[Any, Any], auth_headers: dict[str, str], make_token: Callable[..., str]
) -> None:
    # As an older consumer would have stored them: one event refused alone, one whole envelope, and junk.
    push, other = _events()[-1], _events("distribution-2.8.2/05-push-docker-schema2")[-1]
    dead_letters = client.app[DEAD_LETTERS]
    await dead_letters.add("invalid event: (an older consumer)", json.dumps(push))
    await dead_letters.add("envelope refused (an older consumer)", json.dumps({"events": [other]}))
    await dead_letters.add("malformed JSON", "{truncated")
    reader = {"Authorization": f"Bearer {make_token(scope='index:read')}"}
    assert (await client.post("/v1/dead-letters/replay", headers=reader)).status == 403

    resp = await client.post("/v1/dead-letters/replay", headers=auth_headers)
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"examined": 3, "replayed": 2, "still_invalid": 1, "applied": 2, "duplicate": 0,
                                 "ignored": 0}
    left = (await (await client.get("/v1/dead-letters", headers=auth_headers)).json())["entries"]
    assert [e["payload"] for e in left] == ["{truncated"]
    tags = await (await client.get(f"/v1/repositories/{push['target']['repository']}/tags",
                                   headers=auth_headers)).json()
    assert [t["tag"] for t in tags["tags"]] == [push["target"]["tag"]]

    # Replaying again changes nothing; an entry whose event the registry redelivered meanwhile is a duplicate.
    await dead_letters.add("invalid event: (an older consumer)", json.dumps(push))
    again = await (await client.post("/v1/dead-letters/replay", headers=auth_headers)).json()
    assert again == {"examined": 2, "replayed": 1, "still_invalid": 1, "applied": 0, "duplicate": 1, "ignored": 0}


def test_a_stored_payload_is_an_envelope_or_one_event() -> None:
    event = _events()[-1]
    alone = changes_of(json.dumps(event))
    assert alone is not None and alone == changes_of(json.dumps({"events": [event]}))
    assert changes_of(json.dumps({"events": []})) is None
    assert changes_of('"a string"') is None
    assert changes_of("{cut") is None
