"""Bearer-token verification and minting for the consumer's own API and webhook.

The verifier pins algorithms from configuration (never from the token header) and maps PyJWT's
exceptions to a bounded set of reasons, counted in ``registry_consumer_auth_failures_total``.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt

from consumer.errors import AuthError
from consumer.settings import AuthSettings

HS256 = "HS256"
REQUIRED_CLAIMS = ("exp", "iat", "sub")

# PyJWT's exception classes, most specific first, to the bounded reasons of the auth metric.
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidAudienceError, "bad_audience"),
    (jwt.InvalidIssuerError, "bad_issuer"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.InvalidAlgorithmError, "bad_algorithm"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.DecodeError, "malformed"),
    (jwt.InvalidTokenError, "malformed"),
)


@dataclass(frozen=True, slots=True)
class Claims:
    """The verified claims the service relies on."""

    sub: str
    iat: int
    exp: int
    scopes: frozenset[str] = frozenset()
    jti: str | None = None
    iss: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


class TokenVerifier:
    """Verifies HS256 tokens signed with the configured secret."""

    def __init__(self, auth: AuthSettings, secret: bytes | None) -> None:
        self._auth = auth
        self._secret = secret

    def verify(self, token: str) -> Claims:
        """Return the claims of a valid token, or raise :class:`AuthError` with a bounded reason."""
        if len(token) > self._auth.max_token_bytes:
            raise AuthError("oversized", "token too large")
        if self._secret is None:
            raise AuthError("bad_signature", "no verification key configured")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[HS256],
                audience=self._auth.audience,
                issuer=self._auth.issuer,
                leeway=self._auth.leeway_seconds,
                options={"require": [*REQUIRED_CLAIMS, "aud", "iss"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(_reason(exc), str(exc)) from exc
        return _claims(claims)


def _reason(exc: Exception) -> str:
    for cls, reason in _REASONS:
        if isinstance(exc, cls):
            return reason
    return "malformed"


def _claims(raw: dict[str, Any]) -> Claims:
    scope = raw.get("scope", "")
    if not isinstance(scope, str) or not isinstance(raw.get("sub"), str):
        raise AuthError("malformed", "scope and sub must be strings")
    return Claims(
        sub=raw["sub"],
        iat=int(raw["iat"]),
        exp=int(raw["exp"]),
        scopes=frozenset(scope.split()),
        jti=raw.get("jti"),
        iss=raw.get("iss"),
        raw=raw,
    )


def mint(auth: AuthSettings, secret: bytes, *, sub: str, scope: str, ttl_seconds: int, now: int | None = None) -> str:
    """Sign a token for this consumer (what the registry sends in its notification headers)."""
    issued = int(time.time()) if now is None else now
    payload = {
        "iss": auth.issuer,
        "aud": auth.audience,
        "sub": sub,
        "scope": scope,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_seconds,
        "jti": secrets.token_urlsafe(16),
    }
    return jwt.encode(payload, secret, algorithm=HS256)
