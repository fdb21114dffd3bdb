"""``GET /v1/auth``: forward-auth for nginx ``auth_request`` and Traefik ForwardAuth in front of the registry.

The registry trusts any well-signed token until ``exp`` and never looks at ``jti``: this is the one place
where a revocation reaches it. The answer is 200 (let the request through), 401 with the registry token
server's challenge (``Bearer realm=..,service=..,scope=..``, which docker and skopeo follow to fetch a
token), or 403 when the token's ``access`` claim does not cover the request.

The request is read from ``X-Original-URI``/``X-Original-Method`` (nginx) or ``X-Forwarded-Uri``/
``X-Forwarded-Method`` (Traefik). The action needed is the one the registry itself asks for: ``pull`` for
GET/HEAD, ``push`` for PUT/POST/PATCH, ``delete`` for DELETE, also ``pull`` on the source of a cross-repository
mount; ``/v2/`` needs a valid token only and ``/v2/_catalog`` needs ``registry:catalog:*``. The challenge
asks for ``pull,push`` on writes, as the registry does, since the registry behind checks both. A path
this gate cannot read (percent-encoding, dot segments, an unknown route) is refused: fail closed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from aiohttp import web
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from consumer.appkeys import REGISTRY_VERIFIER, SETTINGS
from consumer.auth import authenticate
from consumer.errors import AuthError, BadRequest, ForbiddenError
from consumer.settings import RegistryAuthSettings
from consumer.tokens import Claims

routes = web.RouteTableDef()

# distribution's reference grammar: lowercase path components joined by "/".
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
NAME = re.compile(rf"^{_NAME}$")
# In the order of the registry's router (v2 routes.go), so an ambiguous path names the same repository.
REPOSITORY_ROUTES = tuple(
    re.compile(rf"^/v2/(?P<name>{_NAME})/{suffix}$")
    for suffix in (
        rf"manifests/(?:{_TAG}|{_DIGEST})",
        "tags/list",
        rf"blobs/{_DIGEST}",
        "blobs/uploads/",
        r"blobs/uploads/[A-Za-z0-9_.=-]+",
        rf"referrers/{_DIGEST}",
    )
)
ACTION_OF_METHOD = {"GET": "pull", "HEAD": "pull", "PUT": "push", "POST": "push", "PATCH": "push", "DELETE": "delete"}
CHALLENGE_ACTIONS = {"pull": "pull", "push": "pull,push", "delete": "delete"}


class AccessEntry(BaseModel):
    """One element of a registry token's ``access`` claim."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: str
    name: str
    actions: list[str] = []


ACCESS_CLAIM = TypeAdapter(list[AccessEntry])


@dataclass(frozen=True, slots=True)
class Need:
    """One (type, name, action) the request needs, as the registry's token ``access`` grants it."""

    type: str
    name: str
    action: str

    @property
    def scope(self) -> str:
        """The challenge scope that asks a token server for this, e.g. ``repository:app:pull,push``."""
        return f"{self.type}:{self.name}:{CHALLENGE_ACTIONS.get(self.action, self.action)}"


def required_access(method: str, uri: str) -> list[Need]:
    """What the client's request needs; :class:`ForbiddenError` for anything this gate cannot read."""
    parts = urlsplit(uri)
    path = parts.path
    if "%" in path or "\\" in path or "//" in path or re.search(r"/\.\.?(?:/|$)", path):
        raise ForbiddenError("insufficient_scope", "path not in canonical form")
    if path in ("/v2", "/v2/"):
        return []
    if path == "/v2/_catalog":
        return [Need("registry", "catalog", "*")]
    action = ACTION_OF_METHOD.get(method.upper())
    name = next((m["name"] for m in (r.match(path) for r in REPOSITORY_ROUTES) if m is not None), None)
    if action is None or name is None:
        raise ForbiddenError("insufficient_scope", f"{method} {path} is not a registry API request")
    needs = [Need("repository", name, action)]
    source = parse_qs(parts.query).get("from", [])
    if method.upper() == "POST" and source:
        if not NAME.match(source[0]):
            raise ForbiddenError("insufficient_scope", "bad mount source")
        needs.append(Need("repository", source[0], "pull"))
    return needs


def access_of(claims: Claims) -> list[AccessEntry]:
    """The token's ``access`` claim (none: nothing but ``/v2/``)."""
    try:
        return ACCESS_CLAIM.validate_python(claims.raw.get("access") or [])
    except ValidationError:
        raise AuthError("malformed", "access claim is malformed") from None


def granted(access: list[AccessEntry], need: Need) -> bool:
    """Whether ``access`` grants ``need`` (the action ``*`` grants every action)."""
    return any(
        a.type == need.type and a.name == need.name and (need.action in a.actions or "*" in a.actions) for a in access
    )


def challenge(settings: RegistryAuthSettings, needs: list[Need], error: str | None = None) -> str:
    """The registry-style ``WWW-Authenticate`` value (realm and service are checked in settings)."""
    params = [f'realm="{settings.realm}"', f'service="{settings.service}"']
    if needs:
        params.append(f'scope="{" ".join(n.scope for n in needs)}"')
    if error is not None:
        params.append(f'error="{error}"')
    return "Bearer " + ",".join(params)


def _original(request: web.Request, nginx: str, traefik: str) -> str:
    value = request.headers.get(nginx) or request.headers.get(traefik)
    if not value:
        raise BadRequest(f"{nginx} (or {traefik}) is required: configure the proxy to send it")
    return value


@routes.get("/v1/auth")
async def forward_auth(request: web.Request) -> web.Response:
    """200, 401 with a registry challenge, or 403; see the module docstring."""
    settings = request.app[SETTINGS].registry_auth
    assert settings is not None  # the route exists only with registry_auth configured
    method = _original(request, "X-Original-Method", "X-Forwarded-Method")
    needs: list[Need] = []
    try:
        needs = required_access(method, _original(request, "X-Original-URI", "X-Forwarded-Uri"))
        claims = await authenticate(request, request.app[REGISTRY_VERIFIER])
        missing = [need for need in needs if not granted(access_of(claims), need)]
        if missing:
            raise ForbiddenError("insufficient_scope", f"token does not grant {missing[0].scope}")
    except AuthError as exc:
        raise exc.with_challenge(challenge(settings, needs, _error_code(exc))) from None
    return web.Response(status=200)


def _error_code(exc: AuthError) -> str | None:
    if isinstance(exc, ForbiddenError):
        return "insufficient_scope"
    # RFC 6750 3.1: no error code when the client sent no credentials at all.
    return None if exc.reason == "missing" else "invalid_token"
