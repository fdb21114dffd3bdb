"""The command line: token minting, and a bad config exits non-zero naming the field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jwt

from tests.conftest import JWT_SECRET


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_CONSUMER_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "consumer", *args], capture_output=True, text=True,
                          env=full_env, timeout=60, check=False)


def test_token_mint_prints_a_token_the_registry_can_send() -> None:
    result = run_cli("token", "mint", "--sub", "registry", "--scope", "events:write", "--ttl", "365d",
                     env={"REGISTRY_CONSUMER_JWT_SECRET": JWT_SECRET})
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), JWT_SECRET, algorithms=["HS256"], audience="registry-consumer")
    assert claims["sub"] == "registry" and claims["scope"] == "events:write"
    assert claims["exp"] - claims["iat"] == 365 * 86400


def test_bad_config_exits_non_zero_and_names_the_field(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("listen: 127.0.0.1:99999\n")
    result = run_cli("--config", str(config), "serve")
    assert result.returncode == 2
    assert "listen" in result.stderr


def test_mint_without_secret_fails_clearly() -> None:
    result = run_cli("token", "mint", "--sub", "x", "--scope", "index:read", "--ttl", "1h")
    assert result.returncode == 2 and "jwt_secret" in result.stderr


def test_config_prints_what_the_service_would_run_with_secrets_hidden(tmp_path: Path) -> None:
    config = tmp_path / "consumer.yaml"
    config.write_text("listen: 127.0.0.1:9090\nregistry:\n  url: http://ci:reg-pass@127.0.0.1:5000\n"
                      "  username: ci\n  password: reg-password\n")
    result = run_cli("config", "--config", str(config),
                     env={"REGISTRY_CONSUMER_REDIS_URL": "redis://app:redis-pass@10.0.0.1:6380/2",
                          "REGISTRY_CONSUMER_JWT_SECRET": JWT_SECRET})
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["listen"] == "127.0.0.1:9090"  # the file
    assert effective["redis_url"] == "redis://app:***@10.0.0.1:6380/2"  # the environment, password hidden
    assert effective["listener_backlog_max_events"] == 10_000  # a default
    assert effective["registry"]["url"] == "http://ci:***@127.0.0.1:5000"
    for secret in (JWT_SECRET, "redis-pass", "reg-pass", "reg-password"):
        assert secret not in result.stdout


def test_config_exits_2_naming_a_bad_field(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("listener_backlog_max_events: 0\n")
    result = run_cli("config", "--config", str(config))
    assert result.returncode == 2 and "listener_backlog_max_events" in result.stderr


def test_version() -> None:
    from consumer import __version__

    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"registry-consumer {__version__}"


def test_config_hides_passwords_given_in_the_query_too() -> None:
    result = run_cli("config", env={"REGISTRY_CONSUMER_REDIS_URL": "unix:///run/redis.sock?db=0&password=s3cret-q",
                                    "REGISTRY_CONSUMER_JWT_SECRET": JWT_SECRET})
    assert result.returncode == 0, result.stderr
    assert "s3cret-q" not in result.stdout
    assert json.loads(result.stdout)["redis_url"] == "unix:///run/redis.sock?db=0&password=***"
