"""The token-server half of ``make secrets``: a signing key pair shared by docker_auth, the registry and the
consumer, the registry users' passwords, and docker_auth's rendered configuration.

    python scripts/compose_secrets.py secrets

Writes into the given directory (existing files are kept; delete one to regenerate it, and then everything
that derives from it: a new key needs a new certificate and JWKS, a new password a new docker_auth config):

    registry_token_key           RSA key docker_auth signs registry tokens with (private, 0600)
    registry_token_cert          its self-signed certificate: the registry's auth.token.rootcertbundle
    registry_token_jwks          its public key as a JWKS, kid = RFC 7638 thumbprint: the consumer's
                                 registry_auth.jwks_file (forward-auth verifies registry tokens with it)
    registry_admin_password      password of the registry user "admin"
    registry_consumer_password   password of "registry-consumer", the consumer's registry client
    docker_auth_config           config/docker_auth/auth_config.yml with the passwords' bcrypt hashes
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from tests.support.registry import bcrypt_hash  # noqa: E402

TEMPLATE = ROOT / "config" / "docker_auth" / "auth_config.yml"
ISSUER = "registry-token-server"
PASSWORDS = {
    "registry_admin_password": "@@REGISTRY_ADMIN_PASSWORD_BCRYPT@@",
    "registry_consumer_password": "@@REGISTRY_CONSUMER_PASSWORD_BCRYPT@@",
}
CERT_DAYS = 3650


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def rsa_public_jwk(public_key: rsa.RSAPublicKey) -> dict[str, str]:
    """The RFC 7517 members of an RSA public key."""
    numbers = public_key.public_numbers()
    return {"kty": "RSA", "e": _b64url_uint(numbers.e), "n": _b64url_uint(numbers.n)}


def jwk_thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638: SHA-256 of the required members in lexicographic order, no whitespace, base64url.

    distribution 3 keys rootcertbundle certificates by this, and docker_auth 1.14 with
    ``disable_legacy_key_id`` writes it as ``kid``.
    """
    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}[jwk["kty"]]
    canonical = json.dumps({name: jwk[name] for name in required}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.replace(path)


def ensure(directory: Path) -> list[str]:
    """Create what is missing in ``directory``; the names of the files written."""
    directory.mkdir(mode=0o700, exist_ok=True)
    written: list[str] = []
    key_path, cert_path, jwks_path = (directory / n for n in ("registry_token_key", "registry_token_cert",
                                                              "registry_token_jwks"))
    if not key_path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
        _write(key_path, pem, 0o600)
        cert_path.unlink(missing_ok=True)
        jwks_path.unlink(missing_ok=True)
        written.append(key_path.name)
    private = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey), f"{key_path} is not an RSA key"
    if not cert_path.exists():
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=CERT_DAYS))
            .sign(private, hashes.SHA256())
        )
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        written.append(cert_path.name)
    if not jwks_path.exists():
        jwk = rsa_public_jwk(private.public_key())
        entry = {**jwk, "kid": jwk_thumbprint(jwk), "alg": "RS256", "use": "sig"}
        _write(jwks_path, json.dumps({"keys": [entry]}, indent=2).encode() + b"\n", 0o644)
        written.append(jwks_path.name)

    config_path = directory / "docker_auth_config"
    for name in PASSWORDS:
        path = directory / name
        if not path.exists():
            # The consumer container (uid 10001) reads registry_consumer_password: world-readable, in a 0700 dir.
            _write(path, secrets.token_urlsafe(24).encode() + b"\n", 0o644)
            config_path.unlink(missing_ok=True)
            written.append(name)
    if not config_path.exists():
        text = TEMPLATE.read_text()
        for name, placeholder in PASSWORDS.items():
            text = text.replace(placeholder, bcrypt_hash((directory / name).read_text().strip(), cost=10))
        _write(config_path, text.encode(), 0o600)  # password hashes: for docker_auth (root) only
        written.append(config_path.name)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    written = ensure(Path(argv[0]))
    print(f"token server secrets: {', '.join(written) if written else 'all present'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
