"""Bearer tokens: key rings selected by ``kid``, a verifier with a bounded cache, and minting.

Every key is bound to exactly one algorithm (RFC 8725 3.1) and picked by the token's ``kid`` from a
key ring built at start-up; the algorithm allowed for a token is the one of its key, never the one
its header names. Failures carry a reason from a bounded set, counted in
``registry_consumer_auth_failures_total{reason}``.

The registry sends the same token with every notification, so successful verifications are cached
(bounded, by SHA-256 of the token, never past the token's ``exp``). Revocation is not decided here:
``consumer.revocation`` answers that, from Redis, on every request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from consumer.errors import AuthError, ConfigError
from consumer.settings import AuthSettings, KeySettings, RegistryAuthSettings, Settings

HS256 = "HS256"
REQUIRED_CLAIMS = ("exp", "iat", "sub", "jti")
HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
# NumericDate bounds: beyond them a value is junk (and would overflow Redis' EXAT).
_MAX_NUMERIC_DATE = 10**11

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey

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
    """The verified claims the service relies on (``raw`` keeps the rest, e.g. the registry's ``access``)."""

    sub: str
    iat: int
    exp: int
    jti: str
    iss: str
    scopes: frozenset[str] = frozenset()
    nbf: int | None = None
    kid: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def has_scope(self, scope: str) -> bool:
        """Whether the space-separated ``scope`` claim grants ``scope``."""
        return scope in self.scopes


# --- keys --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One key of a ring: its ``kid`` (None for the simple set-up's default key) and its one algorithm."""

    kid: str | None
    algorithm: str
    key: bytes | PublicKey = field(repr=False)

    @property
    def is_hmac(self) -> bool:
        return self.algorithm in HMAC_MIN_BYTES


class KeyRing:
    """Verification keys by ``kid``; at most one key has no ``kid`` (the ``jwt_secret`` default key)."""

    def __init__(self, keys: Iterable[VerificationKey]) -> None:
        self._keys: dict[str | None, VerificationKey] = {}
        for key in keys:
            if key.kid in self._keys:
                raise ConfigError(f"invalid configuration: two keys with kid {key.kid!r}")
            self._keys[key.kid] = key

    def get(self, kid: str | None) -> VerificationKey | None:
        """The key for a token header's ``kid`` (None: the default key), or None if there is none."""
        return self._keys.get(kid)

    @property
    def kids(self) -> list[str | None]:
        """The configured key ids (None stands for the default key)."""
        return list(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def signing_key(self, kid: str | None) -> VerificationKey:
        """The HMAC key ``token mint`` signs with (the consumer holds no private keys)."""
        key = self._keys.get(kid)
        if key is None:
            name = "the default key (jwt_secret)" if kid is None else f"kid {kid!r}"
            raise ConfigError(f"invalid configuration: auth.keys: no key for {name} to sign with")
        if not key.is_hmac:
            raise ConfigError(f"invalid configuration: auth.keys: kid {kid!r} is a public key; cannot sign")
        return key


def libtrust_key_id(public_key: PublicKey) -> str:
    """The libtrust fingerprint registry 2.x expects as ``kid`` for a ``rootcertbundle`` key.

    SHA-256 of the PKIX DER public key, first 240 bits, base32 without padding, 12 groups of 4 joined by
    ``:`` (docker/libtrust util.go keyIDFromCryptoKey).
    """
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def _b64_int(value: int) -> str:
    # Big-endian without leading zero bytes, as Go's big.Int.Bytes() gives it to distribution.
    return base64.urlsafe_b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).decode().rstrip("=")


def jwk_thumbprint(public_key: PublicKey) -> str | None:
    """The RFC 7638 SHA-256 thumbprint registry 3.1+ expects as ``kid`` for a ``rootcertbundle`` key.

    Computed as distribution does (registry/auth/token/util.go getJWKThumbprint): members in lexicographic
    order, integers without leading zero bytes. None for key types it does not thumbprint (Ed448).
    """
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        payload = f'{{"e":"{_b64_int(numbers.e)}","kty":"RSA","n":"{_b64_int(numbers.n)}"}}'
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        point = public_key.public_numbers()
        curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(public_key.curve.name)
        if curve is None:
            return None
        payload = f'{{"crv":"{curve}","kty":"EC","x":"{_b64_int(point.x)}","y":"{_b64_int(point.y)}"}}'
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        payload = f'{{"crv":"Ed25519","kty":"OKP","x":"{base64.urlsafe_b64encode(raw).decode().rstrip("=")}"}}'
    else:
        return None
    return base64.urlsafe_b64encode(hashlib.sha256(payload.encode()).digest()).decode().rstrip("=")


def registry_key_ids(public_key: PublicKey) -> list[str]:
    """Every ``kid`` a registry trusts a certificate's key under: libtrust's (2.x) and the thumbprint (3.1+).

    Both name the same key, so accepting either gives a token no key it could not already use; it lets one
    ``rootcertbundle`` serve the forward-auth in front of either registry.
    """
    thumbprint = jwk_thumbprint(public_key)
    return [libtrust_key_id(public_key), *([thumbprint] if thumbprint else [])]


def hmac_key(algorithm: str, secret: bytes, where: str, kid: str | None = None) -> VerificationKey:
    """Check an HMAC secret (length, and not a public key or JWK in disguise) and wrap it as a key."""
    if len(secret) < HMAC_MIN_BYTES[algorithm]:
        raise ConfigError(f"invalid configuration: {where}: {algorithm} needs a secret of at least "
                          f"{HMAC_MIN_BYTES[algorithm]} bytes")
    try:
        # PyJWT refuses PEM, SSH and DER keys and JWK documents as HMAC secrets (CVE-2022-29217, CVE-2026-48526).
        jwt.get_algorithm_by_name(algorithm).prepare_key(secret)
    except jwt.InvalidKeyError as exc:
        raise ConfigError(f"invalid configuration: {where}: not usable as an HMAC secret: {exc}") from None
    return VerificationKey(kid, algorithm, secret)


def _check_key_type(algorithm: str, key: object, where: str) -> PublicKey:
    if algorithm[:2] in ("RS", "PS") and isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ConfigError(f"invalid configuration: {where}: RSA keys need at least 2048 bits")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and EC_ALGORITHMS.get(key.curve.name) == algorithm:
        return key
    if algorithm == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return key
    raise ConfigError(f"invalid configuration: {where}: a {type(key).__name__} cannot be used with {algorithm}")


def _algorithm_for(key: object, where: str) -> str:
    """The one algorithm a certificate's key is used with when the config does not say (as docker_auth signs)."""
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in EC_ALGORITHMS:
        return EC_ALGORITHMS[key.curve.name]
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "EdDSA"
    raise ConfigError(f"invalid configuration: {where}: unsupported key type {type(key).__name__}")


def _read(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"invalid configuration: {where}: cannot read {path}: {exc.strerror}") from None


def _load_public_pem(data: bytes, where: str) -> object:
    try:
        return serialization.load_pem_public_key(data)
    except ValueError:
        pass
    try:
        return x509.load_pem_x509_certificate(data).public_key()
    except ValueError:
        pass
    if b"PRIVATE KEY" in data:
        raise ConfigError(f"invalid configuration: {where}: is a private key; give the public key or certificate")
    raise ConfigError(f"invalid configuration: {where}: not a PEM public key or certificate")


def _configured_keys(
    entry: KeySettings, where: str, derive_kids: Callable[[PublicKey], list[str]] | None
) -> list[VerificationKey]:
    """One configured key, under its ``kid``; without one, under every kid ``derive_kids`` gives."""
    if entry.public_key_file is None:
        secret = _secret(entry, where)
        if entry.kid is None:
            raise ConfigError(f"invalid configuration: {where}.kid: HMAC keys need a kid")
        return [hmac_key(entry.alg, secret, where, entry.kid)]
    public = _check_key_type(entry.alg, _load_public_pem(_read(entry.public_key_file, where), where), where)
    if entry.kid is not None:
        return [VerificationKey(entry.kid, entry.alg, public)]
    if derive_kids is None:
        raise ConfigError(f"invalid configuration: {where}.kid: required")
    return [VerificationKey(kid, entry.alg, public) for kid in derive_kids(public)]


def _secret(entry: KeySettings, where: str) -> bytes:
    if entry.secret_file is not None:
        return _read(entry.secret_file, where).strip()
    assert entry.secret_env is not None  # KeySettings guarantees one source
    value = os.environ.get(entry.secret_env)
    if not value:
        raise ConfigError(f"invalid configuration: {where}.secret_env: ${entry.secret_env} is not set")
    return value.encode()


def _jwks_keys(path: Path, where: str) -> list[VerificationKey]:
    try:
        document = json.loads(_read(path, where))
    except ValueError as exc:
        raise ConfigError(f"invalid configuration: {where}: not JSON: {exc}") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"invalid configuration: {where}: a JWK Set needs a \"keys\" list")
    keys = []
    for i, entry in enumerate(entries):
        at = f"{where}: keys[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str) or not entry["kid"]:
            raise ConfigError(f"invalid configuration: {at}: every key needs a kid")
        if entry.get("kty") not in ("RSA", "EC", "OKP"):
            raise ConfigError(f"invalid configuration: {at}: only public RSA, EC and OKP keys (HMAC secrets come "
                              "from secret_file or secret_env)")
        if "d" in entry or entry.get("use", "sig") != "sig":
            raise ConfigError(f"invalid configuration: {at}: must be a public signing key")
        if entry["kty"] == "RSA" and "alg" not in entry:
            raise ConfigError(f"invalid configuration: {at}: RSA keys need an alg (RS256, PS256, ...)")
        try:
            jwk = jwt.PyJWK(entry)
        except jwt.PyJWTError as exc:
            raise ConfigError(f"invalid configuration: {at}: {exc}") from None
        algorithm = jwk.algorithm_name
        keys.append(VerificationKey(entry["kid"], algorithm, _check_key_type(algorithm, jwk.key, at)))
    return keys


def _bundle_keys(path: Path, where: str) -> list[VerificationKey]:
    try:
        certificates = x509.load_pem_x509_certificates(_read(path, where))
    except ValueError as exc:
        raise ConfigError(f"invalid configuration: {where}: not a PEM certificate bundle: {exc}") from None
    keys = []
    for cert in certificates:
        algorithm = _algorithm_for(cert.public_key(), where)
        public = _check_key_type(algorithm, cert.public_key(), where)
        keys += [VerificationKey(kid, algorithm, public) for kid in registry_key_ids(public)]
    return keys


def load_keyring(
    section: str,
    keys: Sequence[KeySettings],
    *,
    jwks_file: Path | None = None,
    rootcertbundle: Path | None = None,
    default_secret: bytes | None = None,
    derive_kids: Callable[[PublicKey], list[str]] | None = None,
) -> KeyRing:
    """Build a key ring from config; every problem is a :class:`ConfigError` naming the setting."""
    ring: list[VerificationKey] = []
    if default_secret is not None:
        ring.append(hmac_key(HS256, default_secret, "jwt_secret"))
    if rootcertbundle is not None:
        ring += _bundle_keys(rootcertbundle, f"{section}.rootcertbundle")
    for i, k in enumerate(keys):
        ring += _configured_keys(k, f"{section}.keys[{i}]", derive_kids)
    if jwks_file is not None:
        ring += _jwks_keys(jwks_file, f"{section}.jwks_file")
    return KeyRing(ring)


# --- verification ------------------------------------------------------------------------------------


class VerifiedCache:
    """Claims of successfully verified tokens by SHA-256 of the token: LRU-bounded, never past ``exp``."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: OrderedDict[bytes, Claims] = OrderedDict()

    def get(self, key: bytes, now: float) -> Claims | None:
        claims = self._entries.get(key)
        if claims is None:
            return None
        if claims.exp <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return claims

    def put(self, key: bytes, claims: Claims, now: float) -> None:
        if self._max == 0 or claims.exp <= now:
            return
        self._entries[key] = claims
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class TokenVerifier:
    """Verifies bearer tokens against one key ring, issuer and audience.

    ``name`` says which set of keys this is (``consumer`` or ``registry``). ``clock`` gives unix seconds;
    every time check uses it (PyJWT's own time checks are off), so tests can move time.
    """

    def __init__(
        self,
        keyring: KeyRing,
        *,
        name: str,
        issuer: str,
        audience: str,
        leeway_seconds: int,
        max_token_bytes: int,
        max_claim_bytes: int,
        max_lifetime_seconds: int,
        cache_entries: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keyring = keyring
        self.name = name
        self.issuer = issuer
        self.audience = audience
        self.leeway_seconds = leeway_seconds
        self.max_lifetime_seconds = max_lifetime_seconds
        self._max_token_bytes = max_token_bytes
        self._max_claim_bytes = max_claim_bytes
        self._clock = clock
        self.cache = VerifiedCache(cache_entries)

    @classmethod
    def for_consumer(cls, settings: Settings, clock: Callable[[], float] = time.time) -> TokenVerifier:
        """The verifier of the consumer's own API and webhook tokens (``jwt_secret`` + ``auth``)."""
        auth = settings.auth
        ring = load_keyring("auth", auth.keys, jwks_file=auth.jwks_file, default_secret=settings.jwt_secret_bytes())
        return cls(ring, name="consumer", issuer=auth.issuer, audience=auth.audience, clock=clock,
                   **_bounds(auth, auth.max_token_lifetime_seconds))

    @classmethod
    def for_registry(cls, registry_auth: RegistryAuthSettings, clock: Callable[[], float] = time.time) -> TokenVerifier:
        """The verifier of registry bearer tokens (the forward-auth), with the token server's keys."""
        ra = registry_auth
        ring = load_keyring("registry_auth", ra.keys, jwks_file=ra.jwks_file, rootcertbundle=ra.rootcertbundle,
                            derive_kids=registry_key_ids)
        return cls(ring, name="registry", issuer=ra.issuer, audience=ra.service, clock=clock,
                   **_bounds(ra, ra.max_token_lifetime_seconds))

    def verify(self, token: str) -> Claims:
        """The claims of a valid token, or :class:`AuthError` with a bounded reason. Cached when valid."""
        self._check_shape(token)
        now = self._clock()
        digest = hashlib.sha256(token.encode()).digest()
        cached = self.cache.get(digest, now)
        if cached is not None:
            return cached
        claims = self._decode(token)
        self._check_times(claims, now)
        self.cache.put(digest, claims, now)
        return claims

    def verify_signature(self, token: str) -> Claims:
        """Signature, issuer, audience and claim shapes only, whatever the time: to revoke or inspect a token."""
        self._check_shape(token)
        return self._decode(token)

    def _check_shape(self, token: str) -> None:
        if len(token) > self._max_token_bytes:
            raise AuthError("oversized", "token too large")
        if not token.isascii():
            raise AuthError("malformed", "a JWT is ASCII")

    def _decode(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError("malformed", f"bad token header: {exc}") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise AuthError("bad_algorithm", "unsigned tokens are refused")
        if "crit" in header:
            raise AuthError("malformed", "no critical header extensions are supported")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("malformed", "kid must be a string")
        if kid is not None and len(kid) > self._max_claim_bytes:
            raise AuthError("oversized", "kid too large")
        key = self.keyring.get(kid)
        if key is None:
            raise AuthError("unknown_kid", "no key with this kid" if kid is not None else "a kid is required")
        if alg != key.algorithm:
            raise AuthError("bad_algorithm", f"key {kid!r} is used with {key.algorithm} only")
        try:
            payload = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require": [*REQUIRED_CLAIMS, "iss", "aud"],
                    # Time is checked by _check_times with this verifier's clock.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidTokenError as exc:
            raise AuthError(_reason(exc), str(exc)) from None
        return self._claims(payload, kid)

    def _claims(self, raw: dict[str, Any], kid: str | None) -> Claims:
        for name in ("sub", "jti", "iss", "scope"):
            value = raw.get(name, "")
            if not isinstance(value, str):
                raise AuthError("malformed", f"{name} must be a string")
            if len(value.encode()) > self._max_claim_bytes:
                raise AuthError("oversized", f"{name} too large")
        if not raw["jti"]:
            raise AuthError("missing_claim", "jti is empty")
        iat, exp = _numeric_date(raw, "iat"), _numeric_date(raw, "exp")
        nbf = _numeric_date(raw, "nbf") if raw.get("nbf") is not None else None
        if exp < iat:
            raise AuthError("malformed", "exp before iat")
        if exp - iat > self.max_lifetime_seconds:
            raise AuthError("lifetime_too_long", f"tokens may live {self.max_lifetime_seconds} s at most")
        return Claims(sub=raw["sub"], iat=iat, exp=exp, jti=raw["jti"], iss=raw["iss"], nbf=nbf, kid=kid,
                      scopes=frozenset(raw.get("scope", "").split()), raw=raw)

    def _check_times(self, claims: Claims, now: float) -> None:
        leeway = self.leeway_seconds
        if claims.exp <= now - leeway:
            raise AuthError("expired", "token expired")
        if claims.iat > now + leeway or (claims.nbf is not None and claims.nbf > now + leeway):
            raise AuthError("not_yet_valid", "token not valid yet")


def _bounds(section: AuthSettings | RegistryAuthSettings, max_lifetime_seconds: int) -> dict[str, int]:
    return {
        "leeway_seconds": section.leeway_seconds,
        "max_token_bytes": section.max_token_bytes,
        "max_claim_bytes": section.max_claim_bytes,
        "max_lifetime_seconds": max_lifetime_seconds,
        "cache_entries": section.verify_cache_entries,
    }


def _numeric_date(raw: dict[str, Any], name: str) -> int:
    value = raw[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < _MAX_NUMERIC_DATE:
        raise AuthError("malformed", f"{name} must be a NumericDate")
    return math.floor(value)


def _reason(exc: Exception) -> str:
    for cls, reason in _REASONS:
        if isinstance(exc, cls):
            return reason
    return "malformed"


def verify_any(verifiers: Sequence[TokenVerifier], token: str, *, check_times: bool = True) -> tuple[Claims, str]:
    """The claims and the verifier name of the first key set that accepts ``token``.

    The error raised when none does is the most telling one: a verifier that knows the token's ``kid``
    says more than one that does not.
    """
    failure: AuthError | None = None
    for verifier in verifiers:
        try:
            claims = verifier.verify(token) if check_times else verifier.verify_signature(token)
        except AuthError as exc:
            if failure is None or failure.reason == "unknown_kid":
                failure = exc
            continue
        return claims, verifier.name
    raise failure or AuthError("unknown_kid", "no key set configured")


# --- minting -----------------------------------------------------------------------------------------


def mint(
    auth: AuthSettings,
    secret: bytes,
    *,
    sub: str,
    scope: str,
    ttl_seconds: int,
    now: int | None = None,
    kid: str | None = None,
    algorithm: str = HS256,
) -> str:
    """Sign a token for this consumer (what the registry sends in its notification headers)."""
    if not 0 < ttl_seconds <= auth.max_token_lifetime_seconds:
        raise ValueError(f"ttl must be between 1 s and auth.max_token_lifetime_seconds "
                         f"({auth.max_token_lifetime_seconds} s)")
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
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, secret, algorithm=algorithm, headers=headers)
