"""Signing keys and hand-made JWTs for the token tests: real keys, real signatures, and forgeries.

``KeySet`` writes one key of each family the verifier supports (RSA, EC P-256, Ed25519) as PEM public
keys plus a JWK Set, so a test can configure them as ``auth.keys``/``jwks_file`` and sign with the
private halves. ``forge`` builds tokens PyJWT refuses to make (``alg: none``, bad base64, ...).
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ISSUER = "registry-consumer"
AUDIENCE = "registry-consumer"


def b64url(data: bytes | str) -> str:
    """Unpadded base64url, as in a JWS."""
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid consumer claims (all scopes); ``None`` as a value removes the claim."""
    now = int(time.time())
    values: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "tester",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "jti-0001",
        "scope": "events:write index:read tokens:admin tokens:introspect",
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A compact JWS from parts, signed with whatever the caller says (or nothing)."""
    return ".".join((b64url(json.dumps(header)), b64url(json.dumps(payload)), b64url(signature)))


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass
class KeySet:
    """Private keys and the files that configure their public halves."""

    rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    ed: ed25519.Ed25519PrivateKey
    rsa_pem: Path
    ec_pem: Path
    ed_pem: Path
    jwks: Path  # the RSA key as "rsa-jwk" (PS256) and the EC key as "ec-jwk"

    @classmethod
    def create(cls, directory: Path) -> KeySet:
        directory.mkdir(parents=True, exist_ok=True)
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ec_key = ec.generate_private_key(ec.SECP256R1())
        ed_key = ed25519.Ed25519PrivateKey.generate()
        paths = {}
        for name, key in (("rsa", rsa_key), ("ec", ec_key), ("ed", ed_key)):
            paths[name] = directory / f"{name}.pub.pem"
            paths[name].write_bytes(public_pem(key))
        rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
        ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
        jwks = directory / "jwks.json"
        jwks.write_text(json.dumps({"keys": [{**rsa_jwk, "kid": "rsa-jwk", "alg": "PS256", "use": "sig"},
                                             {**ec_jwk, "kid": "ec-jwk"}]}))
        return cls(rsa_key, ec_key, ed_key, paths["rsa"], paths["ec"], paths["ed"], jwks)

    def rsa_public_jwk(self) -> str:
        """The RSA public key as a JWK JSON document (what CVE-2026-48526 fed to HMAC)."""
        return str(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key()))

    def key_settings(self) -> list[dict[str, Any]]:
        """``auth.keys`` entries for the three PEM files."""
        return [
            {"kid": "rsa-1", "alg": "RS256", "public_key_file": str(self.rsa_pem)},
            {"kid": "ec-1", "alg": "ES256", "public_key_file": str(self.ec_pem)},
            {"kid": "ed-1", "alg": "EdDSA", "public_key_file": str(self.ed_pem)},
        ]
