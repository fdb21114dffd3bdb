"""Shared fixtures: a real Redis per session (flushed per test), the app, tokens, a consumer process."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from consumer.app import create_app
from consumer.metrics import Metrics
from consumer.settings import Settings, load_settings
from consumer.tokens import mint
from tests.support.procs import LOOPBACK, ManagedProcess, free_port, wait_for_port
from tests.support.redis_server import RedisServer
from tests.support.registry import RegistryFleet

JWT_SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
ALL_SCOPES = "events:write index:read tokens:admin tokens:introspect"
# Envelopes recorded from a real registry 2.8.2 (plus the derived 3.x shapes), copied from shared/.
EVENTS_DIR = Path(__file__).resolve().parent / "fixtures" / "registry-events"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """In CI every test must run: a skip is turned into a failure."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped tests fail the run when CI=true: {report.longrepr}"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own REGISTRY_CONSUMER_* settings must not leak into tests (env beats config)."""
    for name in list(os.environ):
        if name.startswith("REGISTRY_CONSUMER_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session; tests that stop Redis start their own instead."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session Redis, emptied before the test."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def make_settings(redis_url: str) -> Callable[..., Settings]:
    """Settings for tests: the session Redis and the test secret, plus any overrides."""

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"redis_url": redis_url, "jwt_secret": JWT_SECRET, "stats_interval_seconds": 0.2}
        values.update(overrides)
        return load_settings(None, **values)

    return factory


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def make_token(settings: Settings) -> Callable[..., str]:
    """Mint a consumer token (all scopes unless given)."""

    def factory(scope: str = ALL_SCOPES, sub: str = "tester", ttl_seconds: int = 3600) -> str:
        return mint(settings.auth, JWT_SECRET.encode(), sub=sub, scope=scope, ttl_seconds=ttl_seconds)

    return factory


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(process=False)


@pytest.fixture
async def client(
    aiohttp_client: Callable[..., Any], settings: Settings, metrics: Metrics
) -> TestClient[Any, Any]:
    """A test client for the app on the session Redis."""
    return await aiohttp_client(create_app(settings, metrics=metrics))  # type: ignore[no-any-return]


@pytest.fixture
def auth_headers(make_token: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token()}"}


def load_envelopes(scenario: str) -> list[dict[str, Any]]:
    """The recorded envelopes of one scenario folder (``distribution-2.8.2/01-...``), in order."""
    import json

    folder = EVENTS_DIR / scenario
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def all_scenarios() -> list[str]:
    return sorted(f"{d.parent.name}/{d.name}" for d in EVENTS_DIR.glob("*/*") if d.is_dir())


@dataclass
class ConsumerProcess:
    """A consumer started as ``python -m consumer serve`` on a free port."""

    url: str
    port: int
    token: str
    process: ManagedProcess
    env: dict[str, str]


@pytest.fixture
def consumer_process(redis_url: str, tmp_path: Path) -> Iterator[ConsumerProcess]:
    """The real service in its own process (so the registry can reach it while the test blocks)."""
    port = free_port()
    env = {
        **os.environ,
        "REGISTRY_CONSUMER_LISTEN": f"{LOOPBACK}:{port}",
        "REGISTRY_CONSUMER_REDIS_URL": redis_url,
        "REGISTRY_CONSUMER_JWT_SECRET": JWT_SECRET,
        "REGISTRY_CONSUMER_STATS_INTERVAL_SECONDS": "0.5",
    }
    env.pop("REGISTRY_CONSUMER_CONFIG", None)
    proc = ManagedProcess("consumer", [sys.executable, "-m", "consumer", "serve"], tmp_path / "consumer.log",
                          env=env)
    proc.start()
    try:
        wait_for_port(LOOPBACK, port, timeout=20, process=proc)
        token = mint(load_settings(None, jwt_secret=JWT_SECRET).auth, JWT_SECRET.encode(), sub="registry",
                     scope=ALL_SCOPES, ttl_seconds=3600, now=int(time.time()))
        yield ConsumerProcess(url=f"http://{LOOPBACK}:{port}", port=port, token=token, process=proc, env=env)
    finally:
        proc.stop()


@pytest.fixture
def registries(tmp_path: Path) -> Iterator[RegistryFleet]:
    """Start real docker-registry processes with ``registries.start(**kwargs)``; all stop at teardown."""
    with RegistryFleet(tmp_path / "registries") as fleet:
        yield fleet
