"""Liveness, readiness and the Prometheus scrape endpoint (no authentication)."""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consumer.appkeys import METRICS, REDIS, STATE

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Ready when Redis answers a PING and the service is not shutting down."""
    metrics = request.app[METRICS]
    if request.app[STATE].shutting_down:
        metrics.ready.set(0)
        return web.json_response({"status": "shutting_down"}, status=503)
    started = time.perf_counter()
    try:
        await request.app[REDIS].ping()
    except Exception:
        metrics.redis_errors.inc()
        metrics.ready.set(0)
        return web.json_response({"status": "redis_unreachable"}, status=503)
    metrics.redis_roundtrip.observe(time.perf_counter() - started)
    metrics.ready.set(1)
    return web.json_response({"status": "ready"})


@routes.get("/metrics")
async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus text exposition of this application's registry."""
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
