"""Configuration: YAML file, environment overrides, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.errors import ConfigError
from consumer.settings import load_settings


def test_example_config_loads() -> None:
    settings = load_settings("config/consumer.example.yaml")
    assert settings.listen == "127.0.0.1:8080" and settings.listen_port == 8080


def test_environment_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("listen: 127.0.0.1:9000\nredis_url: redis://file:6379/0\nauth: {leeway_seconds: 10}\n")
    monkeypatch.setenv("REGISTRY_CONSUMER_LISTEN", "0.0.0.0:8181")
    monkeypatch.setenv("REGISTRY_CONSUMER_AUTH__LEEWAY_SECONDS", "20")
    monkeypatch.setenv("REGISTRY_CONSUMER_JWT_SECRET", "from-env")
    settings = load_settings(path)
    assert settings.listen == "0.0.0.0:8181"
    assert settings.redis_url == "redis://file:6379/0"
    assert settings.auth.leeway_seconds == 20
    assert settings.jwt_secret_bytes() == b"from-env"


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("key_prefix: fromfile\n")
    monkeypatch.setenv("REGISTRY_CONSUMER_CONFIG", str(path))
    assert load_settings().key_prefix == "fromfile"


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("listen: nonsense\n", "listen"),
        ("auth: {leeway_seconds: 600}\n", "auth.leeway_seconds"),
        ("no_such_field: 1\n", "no_such_field"),
        ("max_body_bytes: -1\n", "max_body_bytes"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, yaml_text: str, field: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.detail.startswith("invalid configuration: " + field)


def test_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    assert load_settings(None, jwt_secret_file=str(secret)).jwt_secret_bytes() == b"s3cret"
    assert "s3cret" not in repr(load_settings(None, jwt_secret="s3cret"))
