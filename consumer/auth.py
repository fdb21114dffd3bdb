"""Request-level authentication: the bearer token of a request, checked for one scope."""

from __future__ import annotations

from aiohttp import web

from consumer.appkeys import METRICS, VERIFIER
from consumer.errors import AuthError, ForbiddenError
from consumer.tokens import Claims

SCOPE_EVENTS_WRITE = "events:write"
SCOPE_INDEX_READ = "index:read"


def bearer_token(request: web.Request) -> str:
    """The token of an ``Authorization: Bearer`` header, or :class:`AuthError` ``missing``."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("missing", "bearer token required")
    return token.strip()


async def require_scope(request: web.Request, scope: str) -> Claims:
    """Verify the request's token and its ``scope``; failures are counted by reason."""
    metrics = request.app[METRICS]
    try:
        claims = request.app[VERIFIER].verify(bearer_token(request))
        if not claims.has_scope(scope):
            raise ForbiddenError("insufficient_scope", f"scope {scope} required")
    except AuthError as exc:
        metrics.auth_failures.labels(exc.reason).inc()
        raise
    return claims
