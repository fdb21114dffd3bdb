"""Graceful shutdown of ``python -m consumer serve`` (consumer/server.py), with a real process and real sockets.

The slow request is a webhook delivery whose write Redis holds back (``CLIENT PAUSE ... WRITE``), as in a
Redis hiccup during a deploy. On SIGTERM: /readyz answers 503 while the listener stays open
(``shutdown_delay_seconds``; a second signal ends the delay), then the listener closes, the request in flight
still completes, and the process exits 0. A request that does not complete within
``shutdown_timeout_seconds`` is cut, and the process still exits 0. Queued event-hook actions finish before
Redis is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import web
from redis.asyncio import Redis

from consumer.app import create_app
from consumer.appkeys import HOOKS, REDIS, SETTINGS
from consumer.envelope import Change
from consumer.settings import Settings
from tests.conftest import JWT_SECRET
from tests.support.procs import LOOPBACK, ManagedProcess, free_port, port_open, wait_for_port
from tests.support.redis_server import RedisServer
from tests.test_logs import V1, tag_push

# Generous bounds for "eventually": the assertions are about what happens, never about how fast.
EVENTUALLY_SECONDS = 30.0


class Consumer:
    """A consumer process on a free port, stopped by pid at the end of the test."""

    def __init__(self, tmp_path: Path, redis_url: str, **env: str) -> None:
        self.port = free_port()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_CONSUMER_")}
        full_env.update({
            "REGISTRY_CONSUMER_LISTEN": f"{LOOPBACK}:{self.port}",
            "REGISTRY_CONSUMER_REDIS_URL": redis_url,
            "REGISTRY_CONSUMER_JWT_SECRET": JWT_SECRET,
            # Long enough for a write that Redis holds back (CLIENT PAUSE) to be waited for, not timed out.
            "REGISTRY_CONSUMER_REDIS_TIMEOUT_SECONDS": "30",
            **env,
        })
        self.process = ManagedProcess("consumer", [sys.executable, "-m", "consumer", "serve"],
                                      tmp_path / "consumer.log", env=full_env)

    def start(self) -> None:
        self.process.start()
        wait_for_port(LOOPBACK, self.port, timeout=20, process=self.process)

    def signal(self, signum: int) -> None:
        assert self.process.pid is not None
        os.kill(self.process.pid, signum)

    def status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.port}{path}", timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code

    def wait_exit(self) -> int | None:
        deadline = time.monotonic() + EVENTUALLY_SECONDS
        while self.process.running and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.process.returncode


@pytest.fixture
def start_consumer(tmp_path: Path) -> Iterator[Callable[..., Consumer]]:
    started: list[Consumer] = []

    def factory(redis_server: RedisServer, **env: str) -> Consumer:
        consumer = Consumer(tmp_path, redis_server.url, **env)
        started.append(consumer)
        consumer.start()
        return consumer

    yield factory
    for consumer in started:
        consumer.process.stop()


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + EVENTUALLY_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


class Delivery:
    """One webhook delivery over a raw socket, sent whole; the answer is read when the test wants it."""

    def __init__(self, port: int, token: str, event_id: str) -> None:
        body = json.dumps({"events": [tag_push(event_id, "1.0")]}).encode()
        self.sock = socket.create_connection((LOOPBACK, port), timeout=EVENTUALLY_SECONDS)
        head = (
            f"POST /v1/events HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: {V1}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + body)

    def answer(self) -> tuple[int, dict[str, Any]]:
        """The status and JSON body the server sends before it closes the connection; (0, {}) for none."""
        raw = b""
        while chunk := self.sock.recv(65536):  # the server closes the connection: it is shutting down
            raw += chunk
        self.sock.close()
        if not raw:
            return 0, {}
        head, _, payload = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        try:
            return status, json.loads(payload)
        except ValueError:
            return status, {}


@pytest.fixture
def redis_server_to_pause(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own: CLIENT PAUSE stalls every client of a server."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


@contextlib.contextmanager
def writes_paused(server: RedisServer) -> Iterator[redis.Redis]:
    """Redis holds every write (the index's Lua scripts) until the block ends; reads and PINGs go on."""
    with redis.Redis.from_url(server.url) as client:
        client.client_pause(int(EVENTUALLY_SECONDS * 4 * 1000), all=False)
        try:
            yield client
        finally:
            client.client_unpause()


def stalled_in_redis(client: redis.Redis) -> bool:
    """A write is waiting in Redis: the delivery's handler has read the body and is applying the event."""
    return int(client.info("clients")["blocked_clients"]) >= 1


def repository_indexed(client: redis.Redis) -> bool:
    return any(b"myapp1" in key for key in client.keys("*"))


def test_sigterm_turns_readiness_off_then_finishes_the_request_in_flight_and_exits_0(
    start_consumer: Callable[..., Consumer], make_token: Callable[..., str], redis_server_to_pause: RedisServer
) -> None:
    consumer = start_consumer(
        redis_server_to_pause,
        REGISTRY_CONSUMER_SHUTDOWN_DELAY_SECONDS="120",
        REGISTRY_CONSUMER_SHUTDOWN_TIMEOUT_SECONDS="120",
    )
    assert consumer.status("/readyz") == 200
    with writes_paused(redis_server_to_pause) as redis_client:
        delivery = Delivery(consumer.port, make_token(), "ev-in-flight")
        until(lambda: stalled_in_redis(redis_client), "the delivery waits in Redis")

        consumer.signal(signal.SIGTERM)
        until(lambda: consumer.status("/readyz") == 503, "/readyz answers 503 after SIGTERM")
        assert consumer.status("/healthz") == 200  # alive and still listening: only readiness is off

        consumer.signal(signal.SIGTERM)  # a second signal ends the readiness delay
        until(lambda: not port_open(LOOPBACK, consumer.port), "the listener closes")
        assert consumer.process.running, "the process must wait for the request in flight"
    # Redis takes writes again: the delivery completes although the listener is gone.
    assert delivery.answer() == (200, {"applied": 1, "duplicate": 0, "ignored": 0, "dead_lettered": 0})
    assert consumer.wait_exit() == 0, consumer.process.log_tail()
    assert repository_indexed(redis_client)
    log = consumer.process.log_tail()
    assert "SIGTERM received: shutting down" in log and '"message": "stopped"' in log


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_request_that_outlives_the_shutdown_timeout_is_cut_and_the_process_still_exits_0(
    start_consumer: Callable[..., Consumer],
    make_token: Callable[..., str],
    redis_server_to_pause: RedisServer,
    signum: int,
) -> None:
    consumer = start_consumer(redis_server_to_pause, REGISTRY_CONSUMER_SHUTDOWN_TIMEOUT_SECONDS="1")
    with writes_paused(redis_server_to_pause) as redis_client:
        delivery = Delivery(consumer.port, make_token(), "ev-stalled")
        until(lambda: stalled_in_redis(redis_client), "the delivery waits in Redis")
        consumer.signal(signum)
        assert consumer.wait_exit() == 0, consumer.process.log_tail()
        # No 2xx: the registry will deliver the event again to the next consumer.
        assert delivery.answer()[0] != 200
    assert not repository_indexed(redis_client)


# --- queued actions (event-hook listeners), in process -----------------------------------------------------


async def run_and_shut_down(app: web.Application, token: str, event_ids: list[str]) -> None:
    """Serve ``app``, deliver one event per id, then shut the runner down as the process would."""
    runner = web.AppRunner(app, shutdown_timeout=app[SETTINGS].shutdown_timeout_seconds)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    try:
        async with aiohttp.ClientSession() as session:
            for event_id in event_ids:
                body = json.dumps({"events": [tag_push(event_id, event_id)]})
                async with session.post(f"http://{LOOPBACK}:{port}/v1/events", data=body,
                                        headers={"Authorization": f"Bearer {token}", "Content-Type": V1}) as resp:
                    assert resp.status == 200, await resp.text()
    finally:
        await runner.cleanup()


async def test_queued_actions_finish_before_redis_closes(
    make_settings: Callable[..., Settings], make_token: Callable[..., str], redis_client: Redis
) -> None:
    app = create_app(make_settings(shutdown_timeout_seconds=30))
    started = asyncio.Event()

    async def slow_action(change: Change) -> None:
        started.set()
        await asyncio.sleep(0.5)  # still running when the shutdown begins
        await app[REDIS].set(f"test:done:{change.event_id}", "1")  # Redis must still be open

    app[HOOKS].subscribe(slow_action)
    await run_and_shut_down(app, make_token(), ["a1", "a2"])
    assert started.is_set()
    assert await redis_client.get("test:done:a1") == b"1"
    assert await redis_client.get("test:done:a2") == b"1"


async def test_an_action_that_outlives_the_timeout_is_cancelled(
    make_settings: Callable[..., Settings], make_token: Callable[..., str]
) -> None:
    app = create_app(make_settings(shutdown_timeout_seconds=0.2))
    outcome: list[str] = []

    async def stuck_action(change: Change) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    app[HOOKS].subscribe(stuck_action)
    await run_and_shut_down(app, make_token(), ["b1"])
    assert outcome == ["cancelled"]
