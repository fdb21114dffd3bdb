"""Wires retention into the service: the planner on the event hooks, the periodic sweep, the deletion worker.

``retention_ctx`` is the app's cleanup context; it runs after ``policy_service.policies_ctx`` (which makes the
registry client, the audit log and the deletion intents) and stops before it, so the worker never outlives
the registry session. Without ``registry:`` nothing is deleted: plans are made and recorded as dry runs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import redis.exceptions
from aiohttp import web

from consumer.appkeys import (
    AUDIT,
    HOOKS,
    INDEX,
    INTENTS,
    KEYS,
    METRICS,
    POLICIES,
    RECONCILER,
    REDIS,
    REGISTRY_CLIENT,
    RETENTION,
    SETTINGS,
    STATE,
)
from consumer.background import LOOP_CLOSE_SECONDS, Loops
from consumer.deleter import DeletionQueue, DeletionWorker, refresh_queue_gauges
from consumer.errors import RegistryError
from consumer.retention import RetentionPlanner
from consumer.version_index import VersionIndex

log = logging.getLogger(__name__)


async def _sweep(app: web.Application, planner: RetentionPlanner) -> None:
    # One sweep at a time across replicas; the lock outlives a crashed holder by at most one interval.
    lock = app[REDIS].lock(app[KEYS].retention_sweep_lock, timeout=app[SETTINGS].retention.sweep_interval_seconds,
                           blocking=False)
    if not await lock.acquire():
        return
    try:
        swept = await planner.sweep()
        log.info("retention sweep done", extra={"repositories": swept})
    finally:
        with contextlib.suppress(redis.exceptions.LockError):
            await lock.release()


async def retention_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx (after ``policies_ctx``): the planner, its listener and loops, and the deletion worker."""
    settings = app[SETTINGS]
    redis_client, keys, metrics = app[REDIS], app[KEYS], app[METRICS]
    registry = app.get(REGISTRY_CLIENT)
    queue = DeletionQueue(redis_client, keys, claim_ttl_seconds=settings.retention.claim_ttl_seconds)
    planner = RetentionPlanner(
        redis_client, keys, app[INDEX], VersionIndex(redis_client, keys), app[POLICIES], queue, metrics,
        registry.supports_tag_delete if registry is not None else None,
    )
    app[RETENTION] = planner
    app[HOOKS].subscribe(planner.on_change, wants=planner.wants, resync=planner.resync)
    reconciler = app.get(RECONCILER)
    if reconciler is not None:
        reconciler.subscribe(planner.resync)
    loops = Loops(on_redis_error=metrics.redis_errors.inc)
    loops.every(settings.stats_interval_seconds, lambda: refresh_queue_gauges(queue, metrics),
                name="retention queue gauges")
    if settings.retention.sweep_interval_seconds > 0:
        loops.every(settings.retention.sweep_interval_seconds, lambda: _sweep(app, planner), name="retention sweep",
                    initial_delay_seconds=settings.retention.sweep_initial_delay_seconds, expected=(RegistryError,))
    if registry is not None:
        worker = DeletionWorker(redis_client, keys, queue, planner, registry, app[INTENTS], app[AUDIT], metrics,
                                settings.retention)
        loops.spawn(worker.run(loops), name="retention deletion worker")
    yield
    await loops.close(app[STATE].cleanup_seconds(settings.shutdown_timeout_seconds,
                                                    at_most=LOOP_CLOSE_SECONDS))
