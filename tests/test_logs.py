"""Structured logs: one JSON object per line, the request id on every line of a request, the event id on
every line about an event (the event-hook listeners' lines included), the level from the configuration."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import logging
import os
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from consumer.app import REQUEST_ID_HEADER
from consumer.appkeys import HOOKS
from consumer.envelope import Change
from consumer.logs import EVENT_ID, REQUEST_ID, ContextFilter, configure_logging, request_id_from
from tests.conftest import JWT_SECRET, load_envelopes
from tests.support.procs import LOOPBACK, ManagedProcess, free_port, wait_for_port

V1 = "application/vnd.docker.distribution.events.v1+json"
TAG_PUSH = load_envelopes("distribution-2.8.2/01-push-oci-single-arch-tag")[2]["body"]["events"][0]


def tag_push(event_id: str, tag: str) -> dict[str, Any]:
    """A recorded manifest push (myapp1), with another id and tag."""
    event: dict[str, Any] = copy.deepcopy(TAG_PUSH)
    event["id"] = event_id
    event["target"]["tag"] = tag
    return event


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """configure_logging at DEBUG into a buffer; the root logger is put back afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging("DEBUG", stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line written so far, each parsed as JSON (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# --- the pieces -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sent", ["abc-123", "7f1c2a", "a" * 128, "req:42/x=y"])
def test_a_sane_caller_request_id_is_kept(sent: str) -> None:
    assert request_id_from(sent) == sent


@pytest.mark.parametrize("sent", [None, "", "two words", "a" * 129, "line\nbreak", "caf\u00e9"])
def test_anything_else_gets_a_fresh_request_id(sent: str | None) -> None:
    generated = request_id_from(sent)
    assert generated != sent
    assert len(generated) == 32 and int(generated, 16) >= 0
    assert request_id_from(sent) != generated


def test_the_filter_adds_the_context_ids_and_keeps_explicit_ones(log_stream: io.StringIO) -> None:
    log = logging.getLogger("tests.logs")
    log.info("outside")
    request_token, event_token = REQUEST_ID.set("r-1"), EVENT_ID.set("e-1")
    try:
        log.info("inside", extra={"repository": "team/app"})
        log.warning("explicit", extra={"event_id": "e-explicit"})
    finally:
        EVENT_ID.reset(event_token)
        REQUEST_ID.reset(request_token)
    outside, inside, explicit = lines_of(log_stream)
    assert "request_id" not in outside and "event_id" not in outside
    assert (inside["request_id"], inside["event_id"], inside["repository"]) == ("r-1", "e-1", "team/app")
    assert inside["level"] == "INFO" and inside["logger"] == "tests.logs" and inside["message"] == "inside"
    assert (explicit["request_id"], explicit["event_id"]) == ("r-1", "e-explicit")


def test_configure_logging_sets_the_level_and_installs_the_filter(log_stream: io.StringIO) -> None:
    configure_logging("WARNING", log_stream)
    logging.getLogger("tests.logs").info("dropped")
    logging.getLogger("tests.logs").warning("kept")
    assert [line["message"] for line in lines_of(log_stream)] == ["kept"]
    (handler,) = logging.getLogger().handlers
    assert any(isinstance(f, ContextFilter) for f in handler.filters)


# --- through the app ---------------------------------------------------------------------------------------


async def test_request_id_is_echoed_and_on_every_line_and_listeners_log_their_event_id(
    client: TestClient[Any, Any], auth_headers: dict[str, str], log_stream: io.StringIO
) -> None:
    heard: list[str] = []
    done = asyncio.Event()

    async def listener(change: Change) -> None:
        await asyncio.sleep(0)  # runs after the webhook answered: only the copied context can carry the ids
        logging.getLogger("tests.listener").info("acting on %s", change.tag)
        heard.append(change.event_id)
        if len(heard) == 2:
            done.set()

    client.app[HOOKS].subscribe(listener)
    envelope = {"events": [tag_push("ev-one", "1.0"), tag_push("ev-two", "2.0"), {"id": "ev-bad", "action": 7}]}
    resp = await client.post(
        "/v1/events", data=json.dumps(envelope),
        headers={**auth_headers, "Content-Type": V1, REQUEST_ID_HEADER: "req-abc"},
    )
    assert resp.status == 200, await resp.text()
    assert resp.headers[REQUEST_ID_HEADER] == "req-abc"
    await asyncio.wait_for(done.wait(), 10)

    lines = lines_of(log_stream)
    acting = {line["message"]: line for line in lines if line["logger"] == "tests.listener"}
    assert acting["acting on 1.0"]["event_id"] == "ev-one"
    assert acting["acting on 2.0"]["event_id"] == "ev-two"
    assert {line["request_id"] for line in acting.values()} == {"req-abc"}
    applied = [line for line in lines if line["message"] == "event applied"]
    assert [line["event_id"] for line in applied] == ["ev-one", "ev-two"]
    (dead,) = [line for line in lines if line["message"] == "event dead-lettered"]
    assert (dead["event_id"], dead["request_id"]) == ("ev-bad", "req-abc")
    consumer_lines = [line for line in lines if line["logger"].startswith("consumer.")]
    assert consumer_lines and all(line.get("request_id") == "req-abc" for line in consumer_lines)


async def test_each_request_gets_its_own_id_errors_included(
    client: TestClient[Any, Any], auth_headers: dict[str, str], log_stream: io.StringIO
) -> None:
    first = await client.get("/healthz")
    second = await client.get("/healthz", headers={REQUEST_ID_HEADER: "bad id with spaces"})
    refused = await client.post("/v1/events", data="{}", headers={REQUEST_ID_HEADER: "no-token"})
    missing = await client.get("/no/such/route", headers={REQUEST_ID_HEADER: "lost"})
    ids = [first.headers[REQUEST_ID_HEADER], second.headers[REQUEST_ID_HEADER]]
    assert len(set(ids)) == 2 and "bad id with spaces" not in ids
    assert (refused.status, refused.headers[REQUEST_ID_HEADER]) == (401, "no-token")
    assert (missing.status, missing.headers[REQUEST_ID_HEADER]) == (404, "lost")
    by_request = {line["request_id"]: line for line in lines_of(log_stream) if "request_id" in line}
    assert by_request["no-token"]["status"] == 401
    assert set(ids) <= set(by_request)


# --- the real process ---------------------------------------------------------------------------------------


def run_consumer_once(tmp_path: Path, redis_url: str, make_token: Callable[..., str], **env: str) -> list[str]:
    """Start ``python -m consumer serve``, deliver one event with a request id, stop it; its log lines."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_CONSUMER_")}
    full_env.update({
        "REGISTRY_CONSUMER_LISTEN": f"{LOOPBACK}:{port}",
        "REGISTRY_CONSUMER_REDIS_URL": redis_url,
        "REGISTRY_CONSUMER_JWT_SECRET": JWT_SECRET,
        **env,
    })
    log_path = tmp_path / f"consumer-{port}.log"
    with ManagedProcess("consumer", [sys.executable, "-m", "consumer", "serve"], log_path, env=full_env) as proc:
        wait_for_port(LOOPBACK, port, timeout=20, process=proc)
        request = urllib.request.Request(
            f"http://{LOOPBACK}:{port}/v1/events",
            data=json.dumps({"events": [tag_push(f"ev-{port}", "1.0")]}).encode(),
            headers={"Authorization": f"Bearer {make_token()}", "Content-Type": V1, REQUEST_ID_HEADER: "req-proc"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            assert response.headers[REQUEST_ID_HEADER] == "req-proc"
        assert proc.stop() == 0, proc.log_tail()
    return log_path.read_text().splitlines()


def test_the_service_logs_json_at_the_configured_level(
    tmp_path: Path, redis_url: str, make_token: Callable[..., str]
) -> None:
    debug = run_consumer_once(tmp_path, redis_url, make_token, REGISTRY_CONSUMER_LOG_LEVEL="DEBUG")
    parsed = [json.loads(line) for line in debug if line.startswith("{")]
    assert len(parsed) == len(debug) - 1, debug  # the one plain line is "registry-consumer listening on ..."
    (applied,) = [line for line in parsed if line["message"] == "event applied"]
    assert applied["request_id"] == "req-proc" and applied["event_id"].startswith("ev-")
    assert any(line["message"] == "stopped" for line in parsed)

    info = run_consumer_once(tmp_path, redis_url, make_token)  # log_level defaults to INFO
    assert not [line for line in info if '"level": "DEBUG"' in line]
    assert any('"message": "stopped"' in line for line in info)
