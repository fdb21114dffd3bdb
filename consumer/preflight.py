"""Checks of what the configuration points at: ``registry-consumer check``, and a warning at start-up.

The one that matters most is Redis's ``maxmemory-policy``. The index's correctness rests on keys Redis must
never drop on its own: dedup markers and tombstones (they carry TTLs, so even the ``volatile-*`` policies
evict them), and the index itself. Under memory pressure any policy but ``noeviction`` would make Redis
forget them silently (events applied twice, deletes forgotten); ``noeviction`` makes writes fail instead,
which the webhook answers with 503, and the registry redelivers once memory is freed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Literal

import redis.exceptions
from redis.asyncio import Redis

from consumer.connections import open_redis
from consumer.errors import RegistryAuthError, RegistryError
from consumer.registry_client import RegistryClient
from consumer.settings import Settings

log = logging.getLogger(__name__)
Status = Literal["ok", "warning", "error"]
SAFE_EVICTION_POLICY = "noeviction"


@dataclass(frozen=True, slots=True)
class Finding:
    """The outcome of one check."""

    check: str
    status: Status
    detail: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


async def eviction_policy(client: Redis) -> Finding:
    """Whether Redis may evict the consumer's keys under memory pressure (see the module docstring)."""
    try:
        reply = await client.config_get("maxmemory-policy")
    except redis.exceptions.ResponseError as exc:  # managed services often disable CONFIG
        return Finding("redis.maxmemory_policy", "warning",
                       f"unknown (CONFIG GET refused: {exc}); make sure it is {SAFE_EVICTION_POLICY}")
    policy = str(reply.get("maxmemory-policy"))
    if policy == SAFE_EVICTION_POLICY:
        return Finding("redis.maxmemory_policy", "ok", SAFE_EVICTION_POLICY)
    return Finding("redis.maxmemory_policy", "warning",
                   f"{policy}: under memory pressure Redis would drop dedup markers, tombstones and index keys "
                   f"(events applied twice, deletes forgotten); set maxmemory-policy {SAFE_EVICTION_POLICY}")


async def check_redis(settings: Settings) -> list[Finding]:
    """Redis answers, which version it is, and its eviction policy."""
    client = open_redis(settings, role="check", min_timeout_seconds=5.0)
    try:
        info = await client.info("server")
        findings = [Finding("redis", "ok", f"Redis {info.get('redis_version', '?')} answers")]
        findings.append(await eviction_policy(client))
        return findings
    except redis.exceptions.RedisError as exc:
        return [Finding("redis", "error", f"unreachable: {type(exc).__name__}: {exc}")]
    finally:
        await client.aclose()


async def check_registry(settings: Settings) -> list[Finding]:
    """The registry answers the consumer with its credentials (one catalog page, as reconciliation reads)."""
    if settings.registry is None:
        return [Finding("registry", "ok", "not configured: latest, retention and reconciliation are off")]
    url = settings.registry.url
    async with RegistryClient.open(settings.registry.model_copy(update={"retries": 0})) as client:
        try:
            async for _ in client.iter_catalog(page_size=1):
                break
        except RegistryAuthError as exc:
            return [Finding("registry", "error", f"{url}: the consumer's credentials are refused: {exc}")]
        except RegistryError as exc:
            return [Finding("registry", "error", f"{url}: {exc}")]
    return [Finding("registry", "ok", f"{url} answers and lets the consumer read its catalog")]


async def run_checks(settings: Settings) -> list[Finding]:
    """Every check, in a stable order."""
    return [*await check_redis(settings), *await check_registry(settings)]


async def warn_on_eviction_policy(client: Redis) -> None:
    """At start-up: log a warning when Redis may evict the consumer's keys (never fails the start)."""
    try:
        finding = await eviction_policy(client)
    except redis.exceptions.RedisError:
        return  # Redis down at start: /readyz says so, and the webhook answers 503
    if finding.status != "ok":
        log.warning("redis maxmemory-policy: %s", finding.detail)
