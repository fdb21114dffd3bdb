"""Token administration over HTTP: revoke (RFC 7009 and JSON), introspect (RFC 7662), list revocations.

``POST /v1/tokens/revoke`` (scope ``tokens:admin``) takes either an RFC 7009 form (``token``, optional
``token_type_hint``; 200 whatever the token, even unknown or invalid) or JSON: ``{"jti", "iss", "exp"}``,
``{"sub", "cutoff"?}`` or ``{"all": true, "cutoff"?}`` (cutoff: unix seconds, default now).
``POST /v1/tokens/introspect`` (scope ``tokens:introspect``) answers exactly ``{"active": false}`` for
anything not valid now. ``GET /v1/tokens/revocations`` (scope ``tokens:admin``) pages through the list.

This module also owns the revocation store's lifetime in the app (``revocation_ctx``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from consumer.api import page_size
from consumer.appkeys import (
    KEYS,
    METRICS,
    PIPELINE,
    REDIS,
    REGISTRY_VERIFIER,
    REVOCATIONS,
    SETTINGS,
    STATE,
    VERIFIER,
)
from consumer.auth import SCOPE_TOKENS_ADMIN, SCOPE_TOKENS_INTROSPECT, require_scope
from consumer.background import LOOP_CLOSE_SECONDS, Loops
from consumer.errors import AuthError, BadRequest
from consumer.revocation import Revocation, RevocationStore, RevokeOutcome
from consumer.tokens import TokenVerifier, verify_any

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RevokeTokenIn(_Body):
    """One token by issuer, ``jti`` and ``exp`` (when the token itself is not at hand)."""

    jti: str = Field(min_length=1, max_length=4096)
    iss: str = Field(min_length=1, max_length=4096)
    exp: int = Field(gt=0)


class RevokeSubjectIn(_Body):
    """Every token of ``sub`` issued at or before ``cutoff``."""

    sub: str = Field(max_length=4096)
    cutoff: int | None = Field(default=None, gt=0)


class RevokeAllIn(_Body):
    """Every token issued at or before ``cutoff``."""

    all: Literal[True]
    cutoff: int | None = Field(default=None, gt=0)


RevokeIn = TypeAdapter(RevokeTokenIn | RevokeSubjectIn | RevokeAllIn)


class RevocationOut(BaseModel):
    kind: str
    expires_at: int
    iss: str | None = None
    jti: str | None = None
    sub: str | None = None
    cutoff: int | None = None

    @classmethod
    def of(cls, entry: Revocation) -> RevocationOut:
        return cls(kind=entry.kind, expires_at=entry.expires_at, iss=entry.issuer, jti=entry.jti,
                   sub=entry.subject, cutoff=entry.cutoff)


class RevokeOut(BaseModel):
    """``revoked``: this call changed the list; ``entry``: the revocation in force (None: token expired)."""

    revoked: bool
    entry: RevocationOut | None


class RevocationPage(BaseModel):
    revocations: list[RevocationOut]
    next: str | None


class IntrospectionOut(BaseModel):
    """RFC 7662 section 2.2; an inactive token is ``{"active": false}`` and nothing else."""

    active: bool
    token_type: str | None = None
    scope: str | None = None
    sub: str | None = None
    iss: str | None = None
    aud: str | list[str] | None = None
    exp: int | None = None
    iat: int | None = None
    nbf: int | None = None
    jti: str | None = None


def _verifiers(app: web.Application) -> list[TokenVerifier]:
    """Every key set the consumer trusts: its own, then the registry token server's."""
    registry = app.get(REGISTRY_VERIFIER)
    return [app[VERIFIER], *([registry] if registry is not None else [])]


def _answer(model: BaseModel, *, exclude_none: bool = False) -> web.Response:
    """A JSON answer that no cache may keep (RFC 7009 / 7662)."""
    return web.Response(text=model.model_dump_json(exclude_none=exclude_none), content_type="application/json",
                        headers=NO_STORE)


async def _form_token(request: web.Request) -> str:
    form = await request.post()
    token = form.get("token")
    if not isinstance(token, str) or not token:
        raise BadRequest("invalid_request: the token parameter is required")
    return token


async def _counted(request: web.Request, kind: str, outcome: RevokeOutcome) -> RevokeOutcome:
    metrics = request.app[METRICS]
    if outcome.changed:
        metrics.token_revocations.labels(kind).inc()
        log.info("token revocation", extra={"kind": kind})
    metrics.revoked_tokens.set(await request.app[REVOCATIONS].count())
    return outcome


@routes.post("/v1/tokens/revoke")
async def revoke(request: web.Request) -> web.Response:
    """RFC 7009 form (the token itself) or JSON (token id, subject, or all); see the module docstring."""
    await require_scope(request, SCOPE_TOKENS_ADMIN)
    store = request.app[REVOCATIONS]
    if request.content_type != "application/json":
        token = await _form_token(request)
        try:
            claims, _ = verify_any(_verifiers(request.app), token, check_times=False)
        except AuthError:
            # RFC 7009 2.2: an invalid token needs no revocation, and the answer is 200 all the same.
            return web.json_response({}, headers=NO_STORE)
        await _counted(request, "token", await store.revoke_token(
            issuer=claims.iss, jti=claims.jti, exp=claims.exp, subject=claims.sub))
        return web.json_response({}, headers=NO_STORE)
    try:
        body = RevokeIn.validate_json(await request.read())
    except ValidationError as exc:
        raise BadRequest(f"expected {{jti, iss, exp}}, {{sub, cutoff?}} or {{all: true, cutoff?}}: "
                         f"{exc.errors()[0]['msg']}") from None
    if isinstance(body, RevokeTokenIn):
        outcome = await _counted(request, "token", await store.revoke_token(issuer=body.iss, jti=body.jti,
                                                                             exp=body.exp))
    elif isinstance(body, RevokeSubjectIn):
        outcome = await _counted(request, "subject", await store.revoke_subject(body.sub, body.cutoff))
    else:
        outcome = await _counted(request, "all", await store.revoke_all(body.cutoff))
    entry = RevocationOut.of(outcome.entry) if outcome.entry is not None else None
    return _answer(RevokeOut(revoked=outcome.changed, entry=entry))


@routes.post("/v1/tokens/introspect")
async def introspect(request: web.Request) -> web.Response:
    """RFC 7662: the claims of a token that is valid and not revoked now, else ``{"active": false}``."""
    await require_scope(request, SCOPE_TOKENS_INTROSPECT)
    token = await _form_token(request)
    inactive = IntrospectionOut(active=False)
    try:
        claims, _ = verify_any(_verifiers(request.app), token)
    except AuthError:
        return _answer(inactive, exclude_none=True)
    if await request.app[REVOCATIONS].revoked_by(claims) is not None:
        return _answer(inactive, exclude_none=True)
    active = IntrospectionOut(
        active=True, token_type="Bearer", scope=" ".join(sorted(claims.scopes)) or None, sub=claims.sub,
        iss=claims.iss, aud=claims.raw.get("aud"), exp=claims.exp, iat=claims.iat, nbf=claims.nbf, jti=claims.jti,
    )
    return _answer(active, exclude_none=True)


@routes.get("/v1/tokens/revocations")
async def list_revocations(request: web.Request) -> web.Response:
    """The live revocations, ordered by entry, paginated with ``n`` and ``last`` (``next`` when there is more)."""
    await require_scope(request, SCOPE_TOKENS_ADMIN)
    entries, more = await request.app[REVOCATIONS].page(page_size(request), request.query.get("last") or None)
    return _answer(RevocationPage(revocations=[RevocationOut.of(e) for e in entries], next=more))


async def _refresh_gauge(app: web.Application) -> None:
    store = app[REVOCATIONS]
    await store.prune()
    app[METRICS].revoked_tokens.set(await store.count())


async def revocation_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the revocation store on the app's Redis client, and its prune + gauge loop."""
    app[REVOCATIONS] = RevocationStore.for_settings(
        app[REDIS], app[KEYS].revocations, app[SETTINGS], pipeline=app[PIPELINE])
    loops = Loops(on_redis_error=app[METRICS].redis_errors.inc)
    loops.every(app[SETTINGS].stats_interval_seconds, lambda: _refresh_gauge(app), name="revocation gauge")
    yield
    await loops.close(app[STATE].cleanup_seconds(app[SETTINGS].shutdown_timeout_seconds,
                                                at_most=LOOP_CLOSE_SECONDS))
