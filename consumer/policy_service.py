"""Wires the policy features into the service: the registry client, the audit log, deletion intents, the
watch for unexpected deletions, ``latest`` bookkeeping and reconciliation (periodic and one-off).

``policies_ctx`` is the app's cleanup context for all of them; ``reconcile_once`` is the CLI's
``registry-consumer reconcile``. Both build the same parts with ``build_parts``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from redis.asyncio import Redis

from consumer.appkeys import (
    AUDIT,
    HOOKS,
    INDEX,
    INTENTS,
    KEYS,
    LATEST,
    METRICS,
    POLICIES,
    RECONCILER,
    REDIS,
    REGISTRY_CLIENT,
    SETTINGS,
    STATE,
)
from consumer.audit import AuditLog
from consumer.background import LOOP_CLOSE_SECONDS, Loops
from consumer.connections import open_redis
from consumer.deletions import DeletionWatch, SubjectRevoker
from consumer.errors import ConfigError, RegistryError
from consumer.index import TagIndex
from consumer.intents import DeletionIntents
from consumer.latest import LatestKeeper
from consumer.metrics import Metrics
from consumer.policy import PolicySet
from consumer.reconcile import ReconcileBusy, Reconciler, ReconcileReport
from consumer.rediskeys import RedisKeys
from consumer.registry_client import RegistryClient, registry_session
from consumer.settings import Settings
from consumer.version_index import VersionIndex

log = logging.getLogger(__name__)
STALE_RETRY_SECONDS = 60.0
STALE_RETRY_BATCH = 200


@dataclass(frozen=True, slots=True)
class PolicyParts:
    """The policy features of one process, wired together."""

    audit: AuditLog
    intents: DeletionIntents
    latest: LatestKeeper
    watch: DeletionWatch
    reconciler: Reconciler | None


def build_parts(
    *,
    redis: Redis,
    keys: RedisKeys,
    settings: Settings,
    index: TagIndex,
    policies: PolicySet,
    metrics: Metrics,
    registry: RegistryClient | None,
    revoke_subject: SubjectRevoker | None = None,
) -> PolicyParts:
    """Build the parts; no I/O happens here."""
    audit = AuditLog(redis, keys, settings.audit)
    intents = DeletionIntents(redis, keys, ttl_seconds=settings.intent_ttl_seconds)
    latest = LatestKeeper(
        redis=redis,
        keys=keys,
        index=index,
        versions=VersionIndex(redis, keys),
        policies=policies,
        audit=audit,
        metrics=metrics,
        registry=registry,
    )
    watch = DeletionWatch(
        index=index, intents=intents, audit=audit, policies=policies, metrics=metrics, revoke_subject=revoke_subject
    )
    reconciler = None
    if registry is not None:
        reconciler = Reconciler(
            redis=redis,
            keys=keys,
            index=index,
            registry=registry,
            audit=audit,
            metrics=metrics,
            head_concurrency=settings.reconcile.head_concurrency,
        )
        reconciler.subscribe(latest.resync)
    return PolicyParts(audit, intents, latest, watch, reconciler)


def _subject_revoker(app: web.Application) -> SubjectRevoker:
    async def revoke(subject: str) -> int | None:
        # INTEGRATION POINT (token feature): the revocation list has its own cleanup context and app key; it is
        # imported here, not at the top, only until consumer.appkeys.REVOCATIONS is committed with it.
        from consumer.appkeys import REVOCATIONS

        store = app.get(REVOCATIONS)
        if store is None:
            return None
        outcome = await store.revoke_subject(subject)
        return outcome.entry.cutoff if outcome.entry is not None else None

    return revoke


async def _reconcile(reconciler: Reconciler) -> None:
    try:
        await reconciler.run()
    except ReconcileBusy:
        log.info("reconciliation skipped: another replica is running one")


async def _retry_stale(latest: LatestKeeper) -> None:
    # A fix that failed (registry down, credentials) is retried here, not only on the next event; and a
    # repository whose policy no longer manages latest is unmarked.
    for repository in await latest.stale_repositories(STALE_RETRY_BATCH):
        await latest.evaluate(repository)


async def policies_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx (after the Redis one): creates the parts, subscribes the listeners, runs the loops."""
    settings = app[SETTINGS]
    async with contextlib.AsyncExitStack() as stack:
        registry = None
        if settings.registry is not None:
            session = await stack.enter_async_context(registry_session(settings.registry))
            registry = app[REGISTRY_CLIENT] = RegistryClient(settings.registry, session)
        parts = build_parts(
            redis=app[REDIS],
            keys=app[KEYS],
            settings=settings,
            index=app[INDEX],
            policies=app[POLICIES],
            metrics=app[METRICS],
            registry=registry,
            revoke_subject=_subject_revoker(app),
        )
        app[AUDIT], app[INTENTS], app[LATEST] = parts.audit, parts.intents, parts.latest
        app[HOOKS].subscribe(parts.watch.on_change, wants=parts.watch.wants)
        app[HOOKS].subscribe(parts.latest.on_change, wants=parts.latest.wants, resync=parts.latest.resync)
        # Every replica reports the shared stale count, not only the one that evaluated last.
        loops = Loops(on_redis_error=app[METRICS].redis_errors.inc)
        loops.every(settings.stats_interval_seconds, parts.latest.refresh_gauge, name="latest gauge")
        loops.every(STALE_RETRY_SECONDS, lambda: _retry_stale(parts.latest), name="latest stale retry",
                    initial_delay_seconds=STALE_RETRY_SECONDS)
        if parts.reconciler is not None:
            app[RECONCILER] = parts.reconciler
            if settings.reconcile.interval_seconds > 0:
                reconciler = parts.reconciler
                loops.every(settings.reconcile.interval_seconds, lambda: _reconcile(reconciler), name="reconciliation",
                            initial_delay_seconds=settings.reconcile.initial_delay_seconds, expected=(RegistryError,))
        yield
        await loops.close(app[STATE].cleanup_seconds(settings.shutdown_timeout_seconds,
                                                    at_most=LOOP_CLOSE_SECONDS))
        # Listeners may still be using the registry session: let them finish before it closes.
        await app[HOOKS].drain(app[STATE].cleanup_seconds(settings.shutdown_timeout_seconds))


async def reconcile_once(settings: Settings, repository: str | None = None) -> ReconcileReport:
    """``registry-consumer reconcile``: one run with this process's own connections."""
    if settings.registry is None:
        raise ConfigError(
            "invalid configuration: registry: required to reconcile (set registry.url or "
            "REGISTRY_CONSUMER_REGISTRY_URL)"
        )
    redis = open_redis(settings, role="reconcile", min_timeout_seconds=5.0)
    keys = RedisKeys(settings.key_prefix)
    try:
        index = TagIndex(
            redis,
            keys,
            dedup_ttl_seconds=settings.dedup_ttl_seconds,
            tombstone_ttl_seconds=settings.tombstone_ttl_seconds,
        )
        async with RegistryClient.open(settings.registry) as registry:
            parts = build_parts(
                redis=redis,
                keys=keys,
                settings=settings,
                index=index,
                policies=PolicySet(settings.policies),
                metrics=Metrics(process=False),
                registry=registry,
            )
            assert parts.reconciler is not None
            return await parts.reconciler.run(repository)
    finally:
        await redis.aclose()
