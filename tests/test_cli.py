"""The command line: token minting, and a bad config exits non-zero naming the field."""

from __future__ import annotations

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
