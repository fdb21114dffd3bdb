"""Request-level authentication: the bearer token of a request, verified, not revoked, checked for a scope."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from consumer.appkeys import REVOCATIONS, SETTINGS, VERIFIER
from consumer.errors import AuthError, ForbiddenError
from consumer.tokens import Claims, TokenVerifier

SCOPE_EVENTS_WRITE = "events:write"
SCOPE_INDEX_READ = "index:read"
SCOPE_TOKENS_ADMIN = "tokens:admin"
SCOPE_TOKENS_INTROSPECT = "tokens:introspect"


def bearer_token(request: web.Request) -> str:
    """The token of an ``Authorization: Bearer`` header, or :class:`AuthError` ``missing``."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("missing", "bearer token required")
    return token.strip()


async def authenticate(request: web.Request, verifier: TokenVerifier) -> Claims:
    """The claims of the request's bearer token: signature (cached) and claims, then revocation (Redis).

    Failures raise :class:`AuthError`, which the error middleware answers and counts by reason. A Redis
    error propagates too: the middleware answers 503, so the check fails closed.
    """
    claims = verifier.verify(bearer_token(request))
    kind = await request.app[REVOCATIONS].revoked_by(claims)
    if kind is not None:
        raise AuthError("revoked", f"token revoked ({kind})")
    return claims


async def require_scope(request: web.Request, scope: str) -> Claims:
    """Authenticate the request with the consumer's own keys and require ``scope`` (403 without it)."""
    claims = await authenticate(request, request.app[VERIFIER])
    if not claims.has_scope(scope):
        raise ForbiddenError("insufficient_scope", f"scope {scope} required")
    return claims


async def revocation_cache_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx (after the revocation store's): keeps the store subscribed to revocation messages, so
    that the registry's repeated token is not looked up in Redis on every notification (see
    ``consumer.revocation``). Start-up waits briefly for the subscription; without it nothing is cached."""
    subscribed, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(app[REVOCATIONS].listen(subscribed, stop))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(subscribed.wait(), app[SETTINGS].redis_timeout_seconds)
    yield
    stop.set()
    await task
