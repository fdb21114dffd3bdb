"""``registry-consumer check`` and the start-up warning about Redis's eviction policy, against real servers."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from consumer.app import create_app
from consumer.metrics import Metrics
from consumer.preflight import run_checks
from consumer.settings import Settings
from tests.support.procs import LOOPBACK, free_port
from tests.support.redis_server import RedisServer
from tests.support.registry import BasicCredentials, HtpasswdAuth, RegistryFleet

ROBOT = BasicCredentials("robot", "s3cret-robot")


def statuses(findings: list[Any]) -> dict[str, str]:
    return {f.check: f.status for f in findings}


async def test_a_sound_set_up_checks_ok(make_settings: Callable[..., Settings], registries: RegistryFleet,
                                        tmp_path: Path) -> None:
    registry = registries.start(auth=HtpasswdAuth([ROBOT]))
    password = tmp_path / "password"
    password.write_text(ROBOT.password)
    settings = make_settings(registry={"url": registry.url, "username": ROBOT.username, "password_file": str(password)})
    findings = await run_checks(settings)
    assert statuses(findings) == {"redis": "ok", "redis.maxmemory_policy": "ok", "registry": "ok"}, findings

    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    settings = make_settings(registry={"url": registry.url, "username": ROBOT.username, "password_file": str(wrong)})
    (registry_finding,) = [f for f in await run_checks(settings) if f.check == "registry"]
    assert registry_finding.status == "error" and "refused" in registry_finding.detail


async def test_an_evicting_redis_is_a_warning_at_check_and_at_start(
    make_settings: Callable[..., Settings], aiohttp_client: Callable[..., Any], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with RedisServer(tmp_path / "redis", extra_args=["--maxmemory-policy", "allkeys-lru"]) as server:
        settings = make_settings(redis_url=server.url)
        (policy,) = [f for f in await run_checks(settings) if f.check == "redis.maxmemory_policy"]
        assert policy.status == "warning" and policy.detail.startswith("allkeys-lru:")
        with caplog.at_level(logging.WARNING, logger="consumer.preflight"):
            client = await aiohttp_client(create_app(settings, metrics=Metrics(process=False)))
            await client.close()  # the background check is awaited on the way out
        assert any("maxmemory-policy: allkeys-lru" in r.getMessage() for r in caplog.records)


def test_the_cli_exits_1_on_an_unreachable_redis() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_CONSUMER_")}
    env["REGISTRY_CONSUMER_REDIS_URL"] = f"redis://{LOOPBACK}:{free_port()}/0"
    result = subprocess.run([sys.executable, "-m", "consumer", "check", "--json"], capture_output=True, text=True,
                            env=env, timeout=60, check=False)
    assert result.returncode == 1, result.stderr
    findings = json.loads(result.stdout)
    assert findings[0]["check"] == "redis" and findings[0]["status"] == "error"
    assert findings[-1] == {"check": "registry", "status": "ok",
                            "detail": "not configured: latest, retention and reconciliation are off"}
