"""The webhook against the recorded registry envelopes, and the never-wedge contract."""

from __future__ import annotations

import asyncio
import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from consumer.app import create_app
from consumer.metrics import Metrics
from consumer.rediskeys import RedisKeys
from tests.conftest import EVENTS_DIR, all_scenarios, load_envelopes
from tests.support.redis_server import RedisServer

V1 = "application/vnd.docker.distribution.events.v1+json"
V2 = "application/vnd.docker.distribution.events.v2+json"
D_V1 = "sha256:bbb5f71a"  # prefixes of digests in the corpus
D_V2 = "sha256:0aad4ce5"
D_LATEST = "sha256:8cd8967d"


async def post(client: TestClient[Any, Any], headers: dict[str, str], body: Any, content_type: str = V1) -> Any:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return await client.post("/v1/events", data=data, headers={**headers, "Content-Type": content_type})


async def replay(client: TestClient[Any, Any], headers: dict[str, str], scenarios: list[str]) -> None:
    for scenario in scenarios:
        for envelope in load_envelopes(scenario):
            resp = await post(client, headers, envelope["body"], envelope["headers"]["Content-Type"])
            assert resp.status == 200, await resp.text()


async def tags_of(client: TestClient[Any, Any], headers: dict[str, str], repo: str) -> dict[str, str]:
    resp = await client.get(f"/v1/repositories/{repo}/tags", headers=headers)
    assert resp.status == 200
    return {t["tag"]: t["digest"][:15] for t in (await resp.json())["tags"]}


def counter(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


V282 = [s for s in all_scenarios() if s.startswith("distribution-2.8.2/")]


async def test_corpus_builds_the_index_the_registry_had(client, auth_headers, metrics) -> None:
    await replay(client, auth_headers, V282)
    repos = await (await client.get("/v1/repositories", headers=auth_headers)).json()
    assert repos == {"repositories": ["legacy/app", "myapp1", "other/app", "team/myapp2"], "next": None}
    # 2.0 and stable went with their digest; latest moved to the new image; 1.0 stays.
    assert await tags_of(client, auth_headers, "myapp1") == {"1.0": D_V1, "latest": D_LATEST}
    assert await tags_of(client, auth_headers, "team/myapp2") == {"3.0": "sha256:2e40e2b5"}
    assert await tags_of(client, auth_headers, "legacy/app") == {"4.0": "sha256:4f4a48fb"}
    assert await tags_of(client, auth_headers, "other/app") == {"1.0": D_V1}
    # Blobs and HEAD checks are not index changes.
    assert counter(metrics, "registry_consumer_events_total", action="push", outcome="ignored") == 15
    assert counter(metrics, "registry_consumer_events_total", action="mount", outcome="ignored") == 1
    assert counter(metrics, "registry_consumer_events_total", action="delete", outcome="applied") == 3


async def test_tag_fields_and_pulls(client, auth_headers) -> None:
    await replay(client, auth_headers, V282)
    body = await (await client.get("/v1/repositories/myapp1/tags", headers=auth_headers)).json()
    one = next(t for t in body["tags"] if t["tag"] == "1.0")
    assert one["media_type"] == "application/vnd.oci.image.manifest.v1+json"
    assert one["pushed_at"] == "2026-12-04T14:16:31.128832Z"
    # GET pulls at 37.64 and 39.71 count, the HEAD at 38.69 does not.
    assert one["last_pulled_at"] == "2026-12-04T14:16:39.714973Z"
    latest = next(t for t in body["tags"] if t["tag"] == "latest")
    assert latest["last_pulled_at"] is None and latest["size"] > 0


async def test_multi_arch_children_and_push_by_digest_are_untagged_manifests(client, auth_headers) -> None:
    await replay(client, auth_headers, V282)
    index_digest = next(
        e["body"]["events"][0]["target"]["digest"] for e in load_envelopes(V282[3]) if e["body"]["events"][0]
        ["target"].get("tag")
    )
    resp = await client.get(f"/v1/repositories/team/myapp2/digests/{index_digest}", headers=auth_headers)
    body = await resp.json()
    assert body["tags"] == ["3.0"] and len(body["references"]) == 2
    child = body["references"][0]
    child_body = await (await client.get(f"/v1/repositories/team/myapp2/digests/{child}", headers=auth_headers)).json()
    assert child_body["tags"] == [] and child_body["media_type"] == "application/vnd.oci.image.manifest.v1+json"
    by_digest = load_envelopes(V282[10])[-1]["body"]["events"][0]["target"]["digest"]
    resp = await client.get(f"/v1/repositories/myapp1/digests/{by_digest}", headers=auth_headers)
    assert resp.status == 200 and (await resp.json())["tags"] == []


async def test_deleted_digest_is_gone(client, auth_headers) -> None:
    await replay(client, auth_headers, V282)
    deleted = load_envelopes(V282[9])[0]["body"]["events"][0]["target"]["digest"]
    resp = await client.get(f"/v1/repositories/myapp1/digests/{deleted}", headers=auth_headers)
    assert resp.status == 404 and (await resp.json())["error"] == "not_found"


async def test_redelivery_is_counted_as_duplicate_and_changes_nothing(client, auth_headers, metrics) -> None:
    await replay(client, auth_headers, V282)
    before = {r: await tags_of(client, auth_headers, r) for r in ("myapp1", "other/app")}
    await replay(client, auth_headers, V282)
    assert {r: await tags_of(client, auth_headers, r) for r in ("myapp1", "other/app")} == before
    for action in ("push", "pull", "delete", "mount"):
        sent = sum(e["body"]["events"][0]["action"] == action for s in V282 for e in load_envelopes(s))
        assert counter(metrics, "registry_consumer_events_total", action=action, outcome="duplicate") == sent


async def test_registry_3x_shapes(client, auth_headers) -> None:
    # Registry 3 sends "" and 0 for absent fields on deletes, and the v2 media type.
    await replay(client, auth_headers, [*V282[:3], V282[8]])
    assert await tags_of(client, auth_headers, "myapp1") == {"1.0": D_V1, "2.0": D_V2, "latest": D_V2,
                                                               "stable": D_V2}
    await replay(client, auth_headers, ["distribution-3.x-derived/02-delete-tag"])
    assert await tags_of(client, auth_headers, "myapp1") == {"1.0": D_V1, "latest": D_V2, "stable": D_V2}
    await replay(client, auth_headers, ["distribution-3.x-derived/01-delete-digest"])
    assert await tags_of(client, auth_headers, "myapp1") == {"1.0": D_V1}
    await replay(client, auth_headers, ["distribution-3.x-derived/03-mount"])


V300 = [s for s in all_scenarios() if s.startswith("distribution-3.0.0/")]


@pytest.mark.parametrize("order", ["as_delivered", "reversed", "twice_shuffled"])
async def test_recorded_registry_3_corpus_builds_the_index_the_registry_had(client, auth_headers, order) -> None:
    """Real distribution 3.0.0 envelopes (tag deletes included): the index ends as the registry did."""
    final = json.loads((EVENTS_DIR / "distribution-3.0.0" / "final-state.json").read_text())
    envelopes = [e for s in V300 for e in load_envelopes(s)]
    if order == "reversed":
        envelopes.reverse()
    elif order == "twice_shuffled":
        envelopes = random.Random(7).sample(envelopes * 2, len(envelopes) * 2)
    for envelope in envelopes:
        resp = await post(client, auth_headers, envelope["body"], envelope["headers"]["Content-Type"])
        assert resp.status == 200 and (await resp.json())["dead_lettered"] == 0
    repos = await (await client.get("/v1/repositories", headers=auth_headers)).json()
    assert repos["repositories"] == sorted(final)
    for repository, tags in final.items():
        assert await tags_of(client, auth_headers, repository) == {t: d[:15] for t, d in tags.items()}, repository


@pytest.mark.parametrize("content_type", [V1, V2, "application/json", "text/plain"])
async def test_every_content_type_is_read(client, auth_headers, content_type) -> None:
    envelope = load_envelopes(V282[0])[-1]["body"]
    resp = await post(client, auth_headers, envelope, content_type)
    assert resp.status == 200 and (await resp.json())["applied"] == 1


async def test_envelope_with_many_events(client, auth_headers) -> None:
    events = [e["body"]["events"][0] for e in load_envelopes(V282[0]) + load_envelopes(V282[1])]
    resp = await post(client, auth_headers, {"events": events})
    assert await resp.json() == {"applied": 2, "duplicate": 0, "ignored": 4, "dead_lettered": 0}
    assert await tags_of(client, auth_headers, "myapp1") == {"1.0": D_V1, "2.0": D_V2}


def _event() -> dict[str, Any]:
    return copy.deepcopy(load_envelopes(V282[0])[-1]["body"]["events"][0])


def _bad_bodies() -> list[tuple[str, Any]]:
    wrong_types = _event()
    wrong_types["target"]["size"] = "big"
    no_id = _event()
    del no_id["id"]
    no_target = _event()
    del no_target["target"]
    bad_repo = _event()
    bad_repo["target"]["repository"] = "UPPER/../case"
    huge_tag = _event()
    huge_tag["target"]["tag"] = "x" * 300_000
    bad_time = _event()
    bad_time["timestamp"] = "yesterday"
    bad_digest = _event()
    bad_digest["target"]["digest"] = "md5:{evil}"
    return [
        ("not json", b"\x00\xff garbage {"),
        ("json array", [1, 2, 3]),
        ("no events", {}),
        ("empty events", {"events": []}),
        ("events not a list", {"events": "push"}),
        ("event not an object", {"events": [42]}),
        ("wrong types", {"events": [wrong_types]}),
        ("missing id", {"events": [no_id]}),
        ("missing target", {"events": [no_target]}),
        ("invalid repository", {"events": [bad_repo]}),
        ("huge tag", {"events": [huge_tag]}),
        ("bad timestamp", {"events": [bad_time]}),
        ("bad digest", {"events": [bad_digest]}),
    ]


@pytest.mark.parametrize("body", ["[" * 5000 + "]" * 5000, '{"events": [' + "9" * 5000 + "]}"],
                         ids=["nesting-too-deep", "integer-too-long"])
async def test_content_python_cannot_even_parse_is_dead_lettered_not_a_500(client, auth_headers, body) -> None:
    resp = await post(client, auth_headers, body)
    assert resp.status == 200 and (await resp.json())["dead_lettered"] == 1


@pytest.mark.parametrize(("case", "body"), _bad_bodies(), ids=[c for c, _ in _bad_bodies()])
async def test_bad_content_answers_200_and_is_dead_lettered(client, auth_headers, redis_client, case, body) -> None:
    resp = await post(client, auth_headers, body)
    assert resp.status == 200, case
    entries = await redis_client.xrange(RedisKeys("rc").dead_letters)
    assert len(entries) == 1
    fields = entries[0][1]
    assert fields[b"reason"] and fields[b"payload"]
    repos = await (await client.get("/v1/repositories", headers=auth_headers)).json()
    assert repos["repositories"] == []


async def test_one_bad_event_does_not_block_the_good_ones(client, auth_headers, metrics) -> None:
    good = _event()
    resp = await post(client, auth_headers, {"events": [{"id": 1}, good]})
    assert await resp.json() == {"applied": 1, "duplicate": 0, "ignored": 0, "dead_lettered": 1}
    assert counter(metrics, "registry_consumer_events_total", action="unknown", outcome="dead_lettered") == 1


async def test_auth_missing_wrong_scope_bad_signature(client, make_token, metrics) -> None:
    body = json.dumps({"events": [_event()]})
    resp = await client.post("/v1/events", data=body)
    assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = await client.post("/v1/events", data=body,
                             headers={"Authorization": f"Bearer {make_token(scope='index:read')}"})
    assert resp.status == 403
    forged = make_token()[:-4] + "AAAA"
    resp = await client.post("/v1/events", data=body, headers={"Authorization": f"Bearer {forged}"})
    assert resp.status == 401
    assert counter(metrics, "registry_consumer_auth_failures_total", reason="missing") == 1
    assert counter(metrics, "registry_consumer_auth_failures_total", reason="insufficient_scope") == 1
    assert counter(metrics, "registry_consumer_auth_failures_total", reason="bad_signature") == 1
    assert counter(metrics, "registry_consumer_webhook_requests_total", code="401") == 2
    assert counter(metrics, "registry_consumer_webhook_requests_total", code="403") == 1


async def test_body_over_the_limit_is_413(aiohttp_client, make_settings, auth_headers) -> None:
    metrics = Metrics(process=False)
    client = await aiohttp_client(create_app(make_settings(max_body_bytes=2048), metrics=metrics))
    resp = await post(client, auth_headers, {"events": [_event()], "pad": "x" * 4096})
    assert resp.status == 413

    async def chunks() -> Any:  # no Content-Length: the limit must hold while streaming
        for _ in range(8):
            yield b"x" * 1024

    resp = await client.post("/v1/events", data=chunks(), headers=auth_headers)
    assert resp.status == 413
    small = await post(client, auth_headers, {"events": [_event()]})
    assert small.status == 200
    assert counter(metrics, "registry_consumer_webhook_requests_total", code="413") == 2


async def test_redis_down_is_503_and_redelivery_applies_once(aiohttp_client, make_settings, auth_headers,
                                                             tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "own-redis")
    server.start()
    try:
        metrics = Metrics(process=False)
        app = create_app(make_settings(redis_url=server.url), metrics=metrics)
        client = await aiohttp_client(app)
        envelope = {"events": [_event()]}
        server.stop()
        resp = await post(client, auth_headers, envelope)
        assert resp.status == 503
        assert (await client.get("/readyz")).status == 503
        assert counter(metrics, "registry_consumer_redis_errors_total") >= 1
        server.start()
        for _ in range(50):  # the client reconnects on its own; wait for readiness, not for time
            if (await client.get("/readyz")).status == 200:
                break
            await asyncio.sleep(0.1)
        first = await (await post(client, auth_headers, envelope)).json()
        second = await (await post(client, auth_headers, envelope)).json()
        assert first["applied"] == 1 and second["duplicate"] == 1
        async with Redis.from_url(server.url) as r:
            assert await r.zcard(RedisKeys("rc").repo("myapp1").tags) == 1
    finally:
        server.stop()


async def test_health_and_metrics_need_no_token(client) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    text = await (await client.get("/metrics")).text()
    assert 'registry_consumer_events_total{action="push",outcome="applied"} 0.0' in text


async def test_a_client_that_drops_mid_body_is_no_server_error(client, auth_headers, metrics, caplog) -> None:
    host, port = client.server.host, client.server.port
    _reader, writer = await asyncio.open_connection(host, port)
    head = (f"POST /v1/events HTTP/1.1\r\nHost: {host}\r\nContent-Type: {V1}\r\nContent-Length: 5000\r\n"
            f"Authorization: {auth_headers['Authorization']}\r\n\r\n")
    writer.write(head.encode() + b'{"events": [')
    await writer.drain()
    await asyncio.sleep(0.05)  # the handler is reading the body now
    writer.close()
    await writer.wait_closed()
    # A full request afterwards: the dropped one has been handled by the time this one is answered.
    resp = await post(client, auth_headers, load_envelopes("distribution-2.8.2/01-push-oci-single-arch-tag")[0])
    assert resp.status == 200
    await asyncio.sleep(0.05)
    assert counter(metrics, "registry_consumer_webhook_requests_total", code="500") == 0
    assert counter(metrics, "registry_consumer_webhook_requests_total", code="200") == 1
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_the_listener_backlog_gauge_shows_runs_in_flight(client, auth_headers, metrics) -> None:
    from consumer.app import refresh_gauges
    from consumer.appkeys import HOOKS

    release = asyncio.Event()

    async def stuck(change: Any) -> None:
        await release.wait()

    app = client.app
    app[HOOKS].subscribe(stuck)
    await replay(client, auth_headers, [V282[0]])
    applied = counter(metrics, "registry_consumer_events_total", action="push", outcome="applied")
    await refresh_gauges(app)
    assert applied > 0
    assert metrics.registry.get_sample_value("registry_consumer_listener_backlog") == applied
    release.set()
    await app[HOOKS].drain(5)
    await refresh_gauges(app)
    assert metrics.registry.get_sample_value("registry_consumer_listener_backlog") == 0
