"""The application factory: routes, middlewares, and the lifetime of Redis and background tasks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from consumer import (
    api,
    deadletters_api,
    forward_auth,
    health,
    openapi,
    policy_api,
    policy_service,
    retention_api,
    retention_service,
    tokens_api,
    webhook,
)
from consumer.appkeys import (
    DEAD_LETTERS,
    HOOKS,
    INDEX,
    KEYS,
    METRICS,
    PIPELINE,
    POLICIES,
    PULLS,
    REDIS,
    REGISTRY_VERIFIER,
    SETTINGS,
    STATE,
    VERIFIER,
)
from consumer.auth import revocation_cache_ctx
from consumer.background import LOOP_CLOSE_SECONDS, REDIS_DOWN, Loops
from consumer.connections import open_redis
from consumer.deadletters import DeadLetters
from consumer.errors import AuthError, ConsumerError, ForbiddenError, StoreUnavailable
from consumer.hooks import EventHooks
from consumer.index import TagIndex
from consumer.logs import EVENT_ID, REQUEST_ID, request_id_from
from consumer.metrics import Metrics
from consumer.pipelining import SharedPipeline
from consumer.policy import PolicySet
from consumer.preflight import warn_on_eviction_policy
from consumer.pulls import PullFilter
from consumer.rediskeys import RedisKeys
from consumer.settings import Settings
from consumer.state import ServiceState
from consumer.tokens import TokenVerifier

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
WEBHOOK_PATH = "/v1/events"
REQUEST_ID_HEADER = "X-Request-ID"


def _error_response(exc: ConsumerError) -> web.Response:
    response = web.json_response({"error": exc.code, "detail": exc.detail}, status=exc.status)
    if isinstance(exc, AuthError):
        error = "insufficient_scope" if isinstance(exc, ForbiddenError) else "invalid_token"
        response.headers["WWW-Authenticate"] = exc.challenge or f'Bearer realm="registry-consumer", error="{error}"'
    if exc.status == 413:
        response.force_close()  # the unread rest of the body must not stay on a kept-alive connection
    return response


def _client_gone(request: web.Request, exc: BaseException) -> bool:
    transport = request.transport
    return isinstance(exc, ConnectionResetError) and (transport is None or transport.is_closing())


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one wrapper around every request, and the one place where errors become HTTP answers.

    - the request's id (the caller's ``X-Request-ID`` or a new one) goes on every log line and is echoed;
    - domain errors (``consumer.errors``) and an unreachable Redis (503) become their answers;
    - webhook answers are counted by code and timed (the registry's timeout is 1 s).

    One middleware rather than three: each layer cost the webhook several microseconds per event (bench/).
    """
    request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
    # Not reset afterwards: aiohttp runs each request in its own task (a fresh copy of the context), and
    # leaving the id set puts it on aiohttp's own "Error handling request" line for an unexpected 500 too.
    REQUEST_ID.set(request_id)
    EVENT_ID.set(None)
    started = time.perf_counter()
    metrics = request.app[METRICS]
    status = 500  # an unexpected exception: aiohttp answers 500
    try:
        try:
            response = await handler(request)
        except ConsumerError as exc:
            if isinstance(exc, AuthError):
                metrics.auth_failures.labels(exc.reason).inc()
            response = _error_response(exc)
        except REDIS_DOWN as exc:
            metrics.redis_errors.inc()
            log.warning("redis unreachable: %s", exc)
            response = _error_response(StoreUnavailable("redis unreachable"))
        status = response.status
    except web.HTTPException as exc:
        status = exc.status
        exc.headers[REQUEST_ID_HEADER] = request_id
        raise
    except ConnectionResetError as exc:
        if not _client_gone(request, exc):
            raise
        status = 0  # no answer: not counted
        log.debug("%s %s: client disconnected before the answer", request.method, request.path)
        # Never sent (the transport is closed); returned rather than raised so aiohttp does not log an error.
        return web.Response(status=499)
    except asyncio.CancelledError:
        if request.transport is None or request.transport.is_closing():
            status = 0  # cancelled because the client left (aiohttp's handler_cancellation): not counted
        raise
    finally:
        if status and request.path == WEBHOOK_PATH:
            metrics.count_answer(status, time.perf_counter() - started)
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "%s %s %s", request.method, request.path, status,
            extra={"status": status, "duration_seconds": round(time.perf_counter() - started, 6)},
        )
    return response


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    client = open_redis(settings)
    keys = app[KEYS]
    app[REDIS] = client
    pipeline = app[PIPELINE] = SharedPipeline.over(client)
    app[INDEX] = TagIndex(
        client,
        keys,
        dedup_ttl_seconds=settings.dedup_ttl_seconds,
        tombstone_ttl_seconds=settings.tombstone_ttl_seconds,
        pipeline=pipeline,
    )
    app[DEAD_LETTERS] = DeadLetters(
        client,
        keys.dead_letters,
        max_entries=settings.dead_letter_max_entries,
        max_bytes=settings.dead_letter_max_bytes,
    )
    yield
    await app[HOOKS].drain(app[STATE].cleanup_seconds(settings.shutdown_timeout_seconds))
    await pipeline.aclose()
    await client.aclose()


async def refresh_gauges(app: web.Application) -> None:
    """Recompute the gauges that summarise state (listener backlog, index size, dead letters)."""
    metrics = app[METRICS]
    metrics.listener_backlog.set(app[HOOKS].pending)  # first: it needs no Redis
    stats = await app[INDEX].stats()
    metrics.index_repositories.set(stats.repositories)
    metrics.index_tags.set(stats.tags)
    metrics.dead_letter_entries.set(await app[DEAD_LETTERS].length())


async def _background_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    loops = Loops(on_redis_error=app[METRICS].redis_errors.inc)
    loops.every(settings.stats_interval_seconds, lambda: refresh_gauges(app), name="index gauges")
    loops.spawn(warn_on_eviction_policy(app[REDIS]), name="redis eviction policy check")
    if settings.tombstone_sweep_interval_seconds > 0:
        loops.every(settings.tombstone_sweep_interval_seconds, app[INDEX].sweep_all_tombstones,
                    name="tombstone sweep", initial_delay_seconds=settings.tombstone_sweep_interval_seconds)
    yield
    await loops.close(app[STATE].cleanup_seconds(settings.shutdown_timeout_seconds,
                                                    at_most=LOOP_CLOSE_SECONDS))


def mark_shutting_down(app: web.Application) -> None:
    """From now on /readyz answers 503, so load balancers stop sending new work (see consumer.server)."""
    app[STATE].shutting_down = True
    app[METRICS].ready.set(0)


async def _mark_shutting_down(app: web.Application) -> None:
    mark_shutting_down(app)


def create_app(settings: Settings, *, metrics: Metrics | None = None) -> web.Application:
    """Build the aiohttp application for ``settings``; nothing connects until it starts."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[edge_middleware],
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics = metrics or Metrics()
    app[KEYS] = RedisKeys(settings.key_prefix)
    app[STATE] = ServiceState()
    app[HOOKS] = EventHooks(max_pending=settings.listener_backlog_max_events, on_overflow=metrics.listener_overflow.inc)
    app[PULLS] = PullFilter.for_settings(settings)
    app[POLICIES] = PolicySet(settings.policies)
    app[VERIFIER] = TokenVerifier.for_consumer(settings)
    app.cleanup_ctx.append(_redis_ctx)
    app.cleanup_ctx.append(tokens_api.revocation_ctx)
    app.cleanup_ctx.append(revocation_cache_ctx)
    app.cleanup_ctx.append(_background_ctx)
    app.on_shutdown.append(_mark_shutting_down)
    app.add_routes(health.routes)
    app.add_routes(openapi.routes)
    app.add_routes(webhook.routes)
    app.add_routes(api.routes)
    app.add_routes(deadletters_api.routes)
    app.add_routes(tokens_api.routes)
    if settings.registry_auth is not None:
        app[REGISTRY_VERIFIER] = TokenVerifier.for_registry(settings.registry_auth)
        app.add_routes(forward_auth.routes)
    # registry client, audit, intents, unexpected deletions, latest, reconciliation
    app.cleanup_ctx.append(policy_service.policies_ctx)
    app.add_routes(policy_api.routes)
    # retention: the planner on each event, the periodic sweep, the deletion worker (after the policy parts)
    app.cleanup_ctx.append(retention_service.retention_ctx)
    app.add_routes(retention_api.routes)
    return app
