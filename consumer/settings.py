"""The one frozen settings object, validated at start-up.

Sources, highest priority first: environment variables (``REGISTRY_CONSUMER_<FIELD>``, nested fields
with ``__``), then the YAML config file, then the defaults below.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from consumer.errors import ConfigError
from consumer.policy import Policy, check_unique_globs, describe_policy

ENV_PREFIX = "REGISTRY_CONSUMER_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
# A contract name with a single "_" (the nested delimiter is "__"), so load_settings maps it by hand.
REGISTRY_URL_ENV = ENV_PREFIX + "REGISTRY_URL"
DAY_SECONDS = 86_400


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


JwtAlgorithm = Literal[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]
# Printable ASCII without quotes or backslashes: safe inside a quoted WWW-Authenticate parameter.
_CHALLENGE_PARAM = r'^[\x20\x21\x23-\x5b\x5d-\x7e]{1,512}$'


class KeySettings(_Section):
    """One verification key, selected by ``kid`` and bound to exactly one algorithm (RFC 8725 3.1).

    HMAC algorithms read the secret from ``secret_file`` or from the environment variable named by
    ``secret_env``, never from the config file itself; the others read a PEM public key or certificate
    from ``public_key_file``. Secrets are never logged.
    """

    kid: str | None = Field(default=None, pattern=r"^[\x21-\x7e]{1,128}$")
    alg: JwtAlgorithm
    secret_file: Path | None = None
    secret_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    public_key_file: Path | None = None

    @model_validator(mode="after")
    def _check_source(self) -> KeySettings:
        given = [s for s in (self.secret_file, self.secret_env, self.public_key_file) if s is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of secret_file, secret_env, public_key_file")
        if self.alg.startswith("HS") == (self.public_key_file is not None):
            need = "secret_file or secret_env" if self.alg.startswith("HS") else "public_key_file"
            raise ValueError(f"{self.alg} keys need {need}")
        return self


class _KeySetSettings(_Section):
    """What every set of verification keys shares: the keys, and the bounds put on tokens."""

    leeway_seconds: int = Field(default=30, ge=0, le=60)
    max_token_bytes: int = Field(default=8192, ge=512, le=65_536)
    max_claim_bytes: int = Field(default=256, ge=32, le=4096)
    keys: tuple[KeySettings, ...] = ()
    jwks_file: Path | None = None
    verify_cache_entries: int = Field(default=4096, ge=0, le=1_000_000)

    @field_validator("keys")
    @classmethod
    def _check_unique_kids(cls, keys: tuple[KeySettings, ...]) -> tuple[KeySettings, ...]:
        kids = [k.kid for k in keys if k.kid is not None]
        if len(kids) != len(set(kids)):
            raise ValueError("each kid may appear only once")
        return keys


class AuthSettings(_KeySetSettings):
    """How the consumer verifies the bearer tokens sent to its own API and webhook.

    ``jwt_secret`` (or ``jwt_secret_file``) is the simple set-up: one HS256 key without a ``kid``.
    ``keys``/``jwks_file`` add keys by ``kid`` for rotation; ``signing_kid`` picks the HMAC key that
    ``token mint`` signs with when ``--kid`` is not given.
    """

    issuer: str = "registry-consumer"
    audience: str = "registry-consumer"
    max_token_lifetime_seconds: int = Field(default=400 * DAY_SECONDS, ge=60)
    signing_kid: str | None = None


class RegistryAuthSettings(_KeySetSettings):
    """The registry token server's keys, for the forward-auth in front of the registry (``GET /v1/auth``).

    ``realm``, ``service`` and ``issuer`` are the registry's own ``auth.token`` values; ``rootcertbundle``
    is the registry's certificate bundle (each certificate's key under its libtrust ``kid``, RS256 for
    RSA, ES256/384/512 by curve). ``keys`` without ``kid`` get the libtrust ``kid`` too.
    """

    realm: str = Field(pattern=_CHALLENGE_PARAM)
    service: str = Field(pattern=_CHALLENGE_PARAM)
    issuer: str
    rootcertbundle: Path | None = None
    max_token_lifetime_seconds: int = Field(default=DAY_SECONDS, ge=60)

    @model_validator(mode="after")
    def _check_some_key(self) -> RegistryAuthSettings:
        if not self.keys and self.jwks_file is None and self.rootcertbundle is None:
            raise ValueError("needs at least one key: rootcertbundle, keys or jwks_file")
        return self


class RegistrySettings(_Section):
    """The registry the consumer reads and changes (latest fixes, retention deletes, reconciliation).

    Only this URL is ever contacted: URLs inside events are never followed. Credentials: ``username``
    with ``password`` or ``password_file``; they are sent as Basic auth, or exchanged for a bearer token
    when the registry's challenge asks for one (token auth).
    """

    url: str
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    # PEM certificates trusted for the registry's (and its token service's) TLS, besides the system's: for a
    # registry behind a private CA.
    ca_file: Path | None = None
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    max_concurrency: int = Field(default=8, ge=1, le=256)
    retries: int = Field(default=3, ge=0, le=10)
    backoff_seconds: float = Field(default=0.2, gt=0, le=30)
    backoff_max_seconds: float = Field(default=5.0, gt=0, le=300)
    user_agent: str = Field(default="registry-consumer", pattern=r"^[\x21-\x7e][\x20-\x7e]{0,127}$")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1].strip("/")) == 0:
            raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:5000")
        return value.rstrip("/")

    @field_validator("ca_file")
    @classmethod
    def _check_ca_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                ssl.create_default_context().load_verify_locations(cafile=value)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"not a readable PEM certificate file: {exc}") from None
        return value

    @model_validator(mode="after")
    def _check_credentials(self) -> RegistrySettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and not self.username:
            raise ValueError("username is required with a password")
        return self

    def password_text(self) -> str | None:
        """The registry password, from the config, the environment or a file."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return None


class IgnorePullsSettings(_Section):
    """Pull events that do not count as use (``last_pulled_at``, ``pulled_within``): a vulnerability scanner
    that pulls every image would keep every image. Globs (``*``, ``?``) matched against the whole
    ``request.useragent`` / ``actor.name``. The consumer's own reads (``<registry.user_agent>/<version>``)
    never count."""

    user_agents: tuple[str, ...] = ()
    actors: tuple[str, ...] = ()


class AuditSettings(_Section):
    """Bounded retention of the audit log (global stream and per-repository streams)."""

    max_entries: int = Field(default=100_000, ge=100)
    repository_max_entries: int = Field(default=10_000, ge=10)
    max_age_seconds: int = Field(default=90 * DAY_SECONDS, ge=3600)


class ReconcileSettings(_Section):
    """The periodic comparison of the index with the registry (needs ``registry:``)."""

    interval_seconds: float = Field(default=3600.0, ge=0)  # 0: only on demand (CLI)
    initial_delay_seconds: float = Field(default=60.0, ge=0)
    head_concurrency: int = Field(default=8, ge=1, le=256)


class RetentionSettings(_Section):
    """How retention runs (the rules themselves are in ``policies[].retention``).

    The periodic sweep plans every repository in full (time-based rules, repairs after lost events).
    Deletions go through a Redis stream: at most ``max_deletions_per_second`` over all processes; a
    failed one is retried after ``retry_base_seconds`` doubling per attempt, at most ``max_attempts``
    times; one held longer than ``claim_idle_seconds`` by a worker that died is taken over.
    """

    sweep_interval_seconds: float = Field(default=300.0, ge=0)  # 0: no periodic sweep
    sweep_initial_delay_seconds: float = Field(default=30.0, ge=0)
    max_deletions_per_second: float = Field(default=2.0, gt=0, le=1000)
    retry_base_seconds: float = Field(default=2.0, gt=0)
    claim_idle_seconds: float = Field(default=300.0, gt=0)
    max_attempts: int = Field(default=8, ge=1, le=100)
    claim_ttl_seconds: int = Field(default=DAY_SECONDS, ge=60)

    @model_validator(mode="after")
    def _check_backoff(self) -> RetentionSettings:
        if self.retry_base_seconds > self.claim_idle_seconds:
            raise ValueError("retry_base_seconds must not exceed claim_idle_seconds (the longest backoff)")
        return self


class Settings(BaseSettings):
    """Everything the service needs to run; built once by :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    listen: str = "127.0.0.1:8080"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_seconds: float = Field(default=0.5, gt=0, le=30)
    # The connections' name in CLIENT LIST (consumer.connections); "" sends no CLIENT SETNAME, for a Redis ACL
    # user that may not run it.
    redis_client_name: str = Field(default="registry-consumer", pattern=r"^[!-~]{0,64}$")
    key_prefix: str = Field(default="rc", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    jwt_secret: SecretStr | None = None
    jwt_secret_file: Path | None = None
    auth: AuthSettings = AuthSettings()
    registry_auth: RegistryAuthSettings | None = None

    # Above the largest event a registry sends: a 4 MiB manifest's push, references included (a 413 is retried
    # by the registry forever).
    max_body_bytes: int = Field(default=8 * 1_048_576, ge=1024, le=64 * 1_048_576)
    dedup_ttl_seconds: int = Field(default=7 * DAY_SECONDS, ge=60)
    tombstone_ttl_seconds: int = Field(default=7 * DAY_SECONDS, ge=60)
    # How often every repository's expired tombstones are forgotten (events do it too, but only in their own
    # repository: a quiet one would keep its dead records forever). 0: only events do it.
    tombstone_sweep_interval_seconds: float = Field(default=3600.0, ge=0)
    dead_letter_max_entries: int = Field(default=10_000, ge=10)
    dead_letter_max_bytes: int = Field(default=16_384, ge=256)
    stats_interval_seconds: float = Field(default=15.0, gt=0)
    # Applied events waiting for the policy listeners before latest and retention fall back to one resync per
    # repository (consumer.hooks): bounds memory in a burst.
    listener_backlog_max_events: int = Field(default=10_000, ge=1)
    shutdown_timeout_seconds: float = Field(default=10.0, gt=0)
    # After SIGTERM, /readyz answers 503 for this long before the listener closes (0: close at once).
    shutdown_delay_seconds: float = Field(default=0.0, ge=0, le=300)

    registry: RegistrySettings | None = None
    policies: tuple[Policy, ...] = ()
    intent_ttl_seconds: int = Field(default=3600, ge=10)
    ignore_pulls: IgnorePullsSettings = IgnorePullsSettings()
    audit: AuditSettings = AuditSettings()
    reconcile: ReconcileSettings = ReconcileSettings()
    retention: RetentionSettings = RetentionSettings()

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port, e.g. 127.0.0.1:8080")
        return value

    @field_validator("policies")
    @classmethod
    def _check_policies(cls, policies: tuple[Policy, ...]) -> tuple[Policy, ...]:
        check_unique_globs(policies)
        return policies

    @model_validator(mode="after")
    def _check_secret_sources(self) -> Settings:
        if self.jwt_secret is not None and self.jwt_secret_file is not None:
            raise ValueError("set jwt_secret or jwt_secret_file, not both")
        return self

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def jwt_secret_bytes(self) -> bytes | None:
        """The HS256 secret of the simple set-up, from the environment, the config or a file."""
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value().encode()
        if self.jwt_secret_file is not None:
            return self.jwt_secret_file.read_bytes().strip()
        return None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment must win over it.
        return env_settings, init_settings, file_secret_settings


def _policy_field(loc: tuple[Any, ...], data: dict[str, Any]) -> str:
    """``policies[1] (team/*): retention.keep[0].last_pushed`` for a location inside ``policies``."""
    raw = data.get("policies")
    index = loc[1]
    head = describe_policy(index, raw[index] if isinstance(raw, list) and index < len(raw) else None)
    rest = ""
    previous: Any = None
    for part in loc[2:]:
        if part == previous:  # a tagged union repeats its tag (keep rules): say it once
            continue
        rest += f"[{part}]" if isinstance(part, int) else f"{'.' if rest else ''}{part}"
        previous = part
    return f"{head}: {rest}" if rest else head


def _format_errors(exc: Exception, data: dict[str, Any] | None = None) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    lines = []
    for err in errors():
        loc = tuple(err.get("loc", ()))
        if len(loc) > 1 and loc[0] == "policies" and isinstance(loc[1], int):
            field = _policy_field(loc, data or {})
        else:
            field = ".".join(str(part) for part in loc) or "(config)"
        lines.append(f"{field}: {err.get('msg')}")
    return "; ".join(lines)


def load_settings(config_path: Path | str | None = None, **overrides: Any) -> Settings:
    """Read the YAML file (``--config`` or ``REGISTRY_CONSUMER_CONFIG``), apply the environment, validate.

    Raises :class:`ConfigError` naming the offending field.
    """
    path = config_path or os.environ.get(CONFIG_ENV)
    data: dict[str, Any] = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping")
        data = loaded or {}
    data.update(overrides)
    registry_url = os.environ.get(REGISTRY_URL_ENV)
    if registry_url:
        section = data.get("registry")
        data["registry"] = {**(section if isinstance(section, dict) else {}), "url": registry_url}
    try:
        return Settings(**data)
    except Exception as exc:  # pydantic's ValidationError, or a bad env value
        raise ConfigError(f"invalid configuration: {_format_errors(exc, data)}") from exc
