"""Run Debian's ``docker-registry`` (CNCF distribution 2.8.2) for tests, on free loopback ports.

A ``RegistryServer`` owns one temporary storage directory and one config file; it can be
stopped and started again on the same storage, garbage-collected, and queried over the
registry HTTP API with small async helpers (aiohttp, so they do not block a consumer that
runs on the test's event loop).

Token auth on 2.8.2 is libtrust-based: a token's ``kid`` header must be the libtrust
fingerprint of a public key in ``rootcertbundle``. ``TokenIssuer`` makes such a key and
certificate and mints tokens with PyJWT.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import datetime as dt
import hashlib
import json
import os
import secrets
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import jwt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from .oci import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST
from .procs import LOOPBACK, ManagedProcess, ProcessFailedError, free_port, run_checked
from .tls import TlsFiles

# Another build of distribution (a 3.x binary, say) can stand in for a one-off run; CI uses Debian's 2.8.2.
REGISTRY_BIN = os.environ.get("TEST_REGISTRY_BIN", "/usr/bin/docker-registry")
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))


class RegistryError(RuntimeError):
    """The registry answered an HTTP helper with an unexpected status."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> {status}: {body[:2000]}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class NotificationEndpoint:
    """One ``notifications.endpoints[]`` entry. Header values are lists, as the registry wants."""

    url: str
    headers: Mapping[str, Sequence[str]] = field(default_factory=dict)
    name: str = "consumer"
    timeout_seconds: float = 1.0
    threshold: int = 10
    backoff_seconds: float = 1.0
    ignored_media_types: Sequence[str] = ()

    def as_config(self) -> dict[str, Any]:
        """The endpoint as the registry's YAML expects it."""
        entry: dict[str, Any] = {
            "name": self.name,
            "url": self.url,
            "headers": {k: list(v) for k, v in self.headers.items()},
            "timeout": _go_duration(self.timeout_seconds),
            "threshold": self.threshold,
            "backoff": _go_duration(self.backoff_seconds),
        }
        if self.ignored_media_types:
            entry["ignoredmediatypes"] = list(self.ignored_media_types)
        return entry


def bearer_headers(token: str) -> dict[str, list[str]]:
    """Endpoint headers that send ``Authorization: Bearer <token>``."""
    return {"Authorization": [f"Bearer {token}"]}


@dataclass(frozen=True)
class BasicCredentials:
    """A user of the registry's htpasswd auth (and what skopeo's ``--*-creds`` takes)."""

    username: str
    password: str

    @property
    def skopeo_creds(self) -> str:
        """``user:password`` for ``--src-creds``/``--dest-creds``."""
        return f"{self.username}:{self.password}"


def bcrypt_hash(password: str, cost: int = 5) -> str:
    """A bcrypt hash, the only scheme the registry's htpasswd accepts.

    libxcrypt (Debian's libcrypt.so.1) does bcrypt; this avoids a bcrypt wheel just for tests.
    """
    lib = ctypes.CDLL("libcrypt.so.1")
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = lib.crypt_gensalt(b"$2y$", cost, None, 0)
    hashed = lib.crypt(password.encode(), salt) if salt else None
    if not hashed or not hashed.startswith(b"$2y$"):
        raise RuntimeError("libcrypt could not make a bcrypt hash")
    return str(hashed.decode())


@dataclass(frozen=True)
class HtpasswdAuth:
    """Configure ``auth.htpasswd`` with the given users."""

    users: Sequence[BasicCredentials]
    realm: str = "registry-tests"


def libtrust_key_id(public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> str:
    """The libtrust fingerprint that registry 2.x expects as a token's ``kid``.

    SHA-256 of the PKIX DER public key, first 240 bits, base32 without padding, in 12 groups of 4
    joined by ``:`` (docker/libtrust util.go keyIDFromCryptoKey).
    """
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def _go_b64_int(value: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).decode().rstrip("=")


def jwk_thumbprint_key_id(public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> str:
    """The RFC 7638 thumbprint that registry 3.1+ expects as a token's ``kid`` for a rootcertbundle key,
    computed as distribution's getJWKThumbprint does (integers without leading zero bytes)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        n = public_key.public_numbers()
        members = {"e": _go_b64_int(n.e), "kty": "RSA", "n": _go_b64_int(n.n)}
    else:
        point = public_key.public_numbers()
        members = {"crv": "P-256", "kty": "EC", "x": _go_b64_int(point.x), "y": _go_b64_int(point.y)}
    payload = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(payload).digest()).decode().rstrip("=")


def repository_access(repository: str, actions: Sequence[str] = ("pull", "push")) -> dict[str, Any]:
    """One entry of a registry token's ``access`` claim for a repository."""
    return {"type": "repository", "name": repository, "actions": list(actions)}


CATALOG_ACCESS: dict[str, Any] = {"type": "registry", "name": "catalog", "actions": ["*"]}


class TokenIssuer:
    """A token-signing key, its self-signed certificate (the registry's rootcertbundle) and a minter.

    ``algorithm`` is ES256 (P-256 key) or RS256 (2048-bit RSA), the families registry 2.8 accepts.
    """

    def __init__(
        self,
        directory: Path,
        *,
        issuer: str = "registry-consumer-tests",
        service: str = "registry-under-test",
        algorithm: Literal["ES256", "RS256"] = "ES256",
        kid_style: Literal["libtrust", "jwk-thumbprint"] | None = None,
    ) -> None:
        self.issuer = issuer
        self.service = service
        self.algorithm = algorithm
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        if algorithm == "ES256":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._key = key
        # Registry 2.x knows a certificate's key by its libtrust id, 3.1+ by its JWK thumbprint (a one-off run
        # against a 3.x binary, TEST_REGISTRY_BIN, sets TEST_REGISTRY_KID_STYLE=jwk-thumbprint).
        style = kid_style or os.environ.get("TEST_REGISTRY_KID_STYLE", "libtrust")
        self.kid = (jwk_thumbprint_key_id if style == "jwk-thumbprint" else libtrust_key_id)(key.public_key())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        self.cert_path = directory / "token-signer.crt"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def mint(
        self,
        access: Sequence[Mapping[str, Any]],
        *,
        subject: str = "ci-bot",
        ttl_seconds: int = 600,
    ) -> str:
        """A registry bearer token granting ``access`` (see ``repository_access``) to ``subject``."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            # 2.8 reads aud as one string, not a list.
            "aud": self.service,
            "iat": now,
            "nbf": now - 5,
            "exp": now + ttl_seconds,
            "jti": uuid.uuid4().hex,
            "access": [dict(a) for a in access],
        }
        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers={"kid": self.kid})

    def auth(self, realm: str = "http://127.0.0.1:9/token") -> TokenAuth:
        """The ``auth.token`` section trusting this issuer. The realm is only sent in challenges."""
        return TokenAuth(realm=realm, service=self.service, issuer=self.issuer, rootcertbundle=self.cert_path)


@dataclass(frozen=True)
class TokenAuth:
    """Configure ``auth.token``; the caller mints tokens the registry will trust."""

    realm: str
    service: str
    issuer: str
    rootcertbundle: Path


def _go_duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


class RegistryServer:
    """A ``docker-registry serve`` process with filesystem storage under ``workdir``.

    ``client_credentials`` or ``token_issuer`` are what the HTTP helpers authenticate with
    when the registry has auth configured.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        notifications: Sequence[NotificationEndpoint] = (),
        include_references: bool = True,
        auth: HtpasswdAuth | TokenAuth | None = None,
        client_credentials: BasicCredentials | None = None,
        token_issuer: TokenIssuer | None = None,
        log_level: str = "info",
        binary: str = REGISTRY_BIN,
        tls: TlsFiles | None = None,
    ) -> None:
        self.binary = binary
        # With tls the API is served over HTTPS with that certificate; the helpers here trust its CA.
        self.tls = tls
        self.client_tls = ssl.create_default_context(cafile=tls.ca) if tls is not None else None
        self.workdir = workdir
        self.storage_dir = workdir / "storage"
        self.config_path = workdir / "config.yml"
        self.log_path = workdir / "registry.log"
        self.notifications = tuple(notifications)
        self.include_references = include_references
        self.auth = auth
        self.client_credentials = client_credentials
        if client_credentials is None and isinstance(auth, HtpasswdAuth) and auth.users:
            self.client_credentials = auth.users[0]
        self.token_issuer = token_issuer
        self.log_level = log_level
        self.port = free_port()
        self.debug_port = free_port()
        self.read_only = False
        self._secret = secrets.token_hex(16)
        self._process: ManagedProcess | None = None

    # -- addresses -----------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``, the registry part of image references."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """Base URL of the registry API."""
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def metrics_url(self) -> str:
        """The debug server's Prometheus endpoint."""
        return f"http://{LOOPBACK}:{self.debug_port}/metrics"

    def ref(self, repository: str, tag_or_digest: str) -> str:
        """A skopeo ``docker://`` reference; ``tag_or_digest`` may be ``sha256:...``."""
        sep = "@" if ":" in tag_or_digest else ":"
        return f"docker://{self.host}/{repository}{sep}{tag_or_digest}"

    @property
    def pid(self) -> int | None:
        """The registry's pid while running."""
        return self._process.pid if self._process is not None and self._process.running else None

    # -- configuration -------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The registry configuration this server runs with."""
        storage: dict[str, Any] = {
            "filesystem": {"rootdirectory": str(self.storage_dir)},
            "delete": {"enabled": True},
            "maintenance": {
                "uploadpurging": {"enabled": False},
                "readonly": {"enabled": self.read_only},
            },
        }
        cfg: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": self.log_level, "formatter": "text", "accesslog": {"disabled": False}},
            "storage": storage,
            "http": {
                "addr": self.host,
                "secret": self._secret,
                **({"tls": {"certificate": str(self.tls.cert), "key": str(self.tls.key)}} if self.tls else {}),
                "debug": {
                    "addr": f"{LOOPBACK}:{self.debug_port}",
                    "prometheus": {"enabled": True, "path": "/metrics"},
                },
            },
        }
        if self.notifications:
            cfg["notifications"] = {
                "events": {"includereferences": self.include_references},
                "endpoints": [ep.as_config() for ep in self.notifications],
            }
        if isinstance(self.auth, HtpasswdAuth):
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text("".join(f"{u.username}:{bcrypt_hash(u.password)}\n" for u in self.auth.users))
            cfg["auth"] = {"htpasswd": {"realm": self.auth.realm, "path": str(htpasswd)}}
        elif isinstance(self.auth, TokenAuth):
            cfg["auth"] = {
                "token": {
                    "realm": self.auth.realm,
                    "service": self.auth.service,
                    "issuer": self.auth.issuer,
                    "rootcertbundle": str(self.auth.rootcertbundle),
                }
            }
        return cfg

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout_seconds: float = 20.0) -> None:
        """Write the config, start the registry, and wait until ``GET /v2/`` answers."""
        if self._process is not None and self._process.running:
            raise RuntimeError(f"registry already running (pid {self._process.pid})")
        self._write_config()
        self._process = ManagedProcess("docker-registry", [self.binary, "serve", str(self.config_path)], self.log_path)
        self._process.start()
        self._wait_ready(timeout_seconds)

    def _wait_ready(self, timeout_seconds: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout_seconds
        last_error = ""
        while time.monotonic() < deadline:
            if not self._process.running:
                raise ProcessFailedError(
                    f"docker-registry exited with {self._process.returncode}\n{self._process.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=1.0, context=self.client_tls) as resp:
                    resp.read()
                return
            except urllib.error.HTTPError as exc:
                # 401 means it is up and auth is on.
                if exc.code == 401:
                    return
                last_error = f"HTTP {exc.code}"
            except OSError as exc:
                last_error = str(exc)
            time.sleep(0.05)
        self.stop()
        raise ProcessFailedError(
            f"docker-registry did not answer /v2/ within {timeout_seconds}s ({last_error})\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stop the registry by pid (SIGTERM, then SIGKILL). Storage is kept."""
        if self._process is not None:
            self._process.stop()

    def restart(self, *, read_only: bool | None = None) -> None:
        """Stop and start on the same storage and ports, optionally toggling read-only mode.

        The registry's notification queue lives in memory: events not yet delivered are lost.
        """
        self.stop()
        if read_only is not None:
            self.read_only = read_only
        self.start()

    @property
    def running(self) -> bool:
        """True while the registry process is alive."""
        return self._process is not None and self._process.running

    def garbage_collect(self, *, delete_untagged: bool, dry_run: bool = False) -> str:
        """Run ``docker-registry garbage-collect`` on this storage; returns its output.

        The registry must be stopped or in read-only mode (``restart(read_only=True)``); GC of a
        registry that accepts writes can delete blobs of an upload in flight. GC emits no events.
        """
        if self.running and not self.read_only:
            raise RuntimeError("garbage_collect needs the registry stopped or restarted read-only")
        self._write_config()
        argv = [self.binary, "garbage-collect", str(self.config_path)]
        if delete_untagged:
            argv.append("--delete-untagged")
        if dry_run:
            argv.append("--dry-run")
        result = run_checked(argv)
        return result.stdout + result.stderr

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The end of the registry's log, for assertion messages."""
        return self._process.log_tail(max_bytes) if self._process is not None else ""

    def __enter__(self) -> RegistryServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP helpers --------------------------------------------------------------------------

    def _auth_headers(self, access: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        if isinstance(self.auth, TokenAuth):
            if self.token_issuer is None:
                raise RuntimeError("token auth is on: pass token_issuer= so the helpers can mint tokens")
            return {"Authorization": f"Bearer {self.token_issuer.mint(access, subject='harness')}"}
        if self.client_credentials is not None:
            raw = self.client_credentials.skopeo_creds.encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        return {}

    async def _request(
        self,
        method: str,
        path: str,
        access: Sequence[Mapping[str, Any]],
        *,
        headers: Mapping[str, str] | None = None,
        ok: Sequence[int] = (200,),
    ) -> tuple[int, Mapping[str, str], bytes]:
        url = f"{self.url}{path}"
        all_headers = {**self._auth_headers(access), **(headers or {})}
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, url, headers=all_headers, allow_redirects=False,
                            ssl=self.client_tls or True) as resp,
        ):
            body = await resp.read()
            if resp.status not in ok:
                raise RegistryError(method, url, resp.status, body.decode("utf-8", "replace"))
            return resp.status, dict(resp.headers), body

    async def catalog(self, page_size: int = 100) -> list[str]:
        """Every repository in ``/v2/_catalog``, following the ``Link`` pagination."""
        repositories: list[str] = []
        path = f"/v2/_catalog?n={page_size}"
        while True:
            _, headers, body = await self._request("GET", path, [CATALOG_ACCESS])
            repositories.extend(_json(body).get("repositories") or [])
            link = headers.get("Link")
            if not link:
                return repositories
            # Link: </v2/_catalog?last=x&n=100>; rel="next"
            path = link.split(";", 1)[0].strip().strip("<>")

    async def tags(self, repository: str) -> list[str] | None:
        """The repository's ``tags/list`` (sorted), or None when the registry answers 404.

        2.8.2 quirks: a repository whose tags were all deleted answers 200 with ``"tags": null``
        (returned here as ``[]``); a repository that never existed answers 404 NAME_UNKNOWN.
        """
        try:
            _, _, body = await self._request(
                "GET", f"/v2/{repository}/tags/list", [repository_access(repository, ["pull"])]
            )
        except RegistryError as exc:
            if exc.status == 404:
                return None
            raise
        return sorted(_json(body).get("tags") or [])

    async def head_digest(self, repository: str, reference: str) -> str | None:
        """``Docker-Content-Digest`` of ``HEAD /v2/<repo>/manifests/<ref>``, None on 404.

        Accepts OCI and Docker manifests and indexes, so the registry never converts.
        Note that a HEAD emits a ``pull`` event with method HEAD.
        """
        for attempt in range(5):
            try:
                _, headers, _ = await self._request(
                    "HEAD",
                    f"/v2/{repository}/manifests/{reference}",
                    [repository_access(repository, ["pull"])],
                    headers={"Accept": MANIFEST_ACCEPT},
                )
            except RegistryError as exc:
                if exc.status == 404:
                    return None
                if exc.status < 500 or attempt == 4:
                    raise
                # 2.8's filesystem storage answers 500 to a read of a tag whose link is being rewritten at
                # that moment (the consumer fixing latest while a test polls it): ask again.
                await asyncio.sleep(0.1)
                continue
            return headers["Docker-Content-Digest"]
        raise AssertionError("unreachable")

    async def get_manifest(self, repository: str, reference: str) -> tuple[str, dict[str, Any]]:
        """``GET`` a manifest: (media type, parsed JSON). Emits a ``pull`` event."""
        _, headers, body = await self._request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            [repository_access(repository, ["pull"])],
            headers={"Accept": MANIFEST_ACCEPT},
        )
        return headers["Content-Type"], _json(body)

    async def delete_manifest(self, repository: str, digest: str) -> None:
        """``DELETE /v2/<repo>/manifests/<digest>``; the registry also untags every tag on it.

        2.8 cannot delete by tag (400 DIGEST_INVALID, no event), so only digests are accepted.
        """
        if not digest.startswith("sha256:"):
            raise ValueError(f"registry 2.8 deletes by digest only, got {digest!r}")
        await self._request(
            "DELETE",
            f"/v2/{repository}/manifests/{digest}",
            [repository_access(repository, ["delete"])],
            ok=(202,),
        )

    async def snapshot(self) -> dict[str, dict[str, str]]:
        """``{repository: {tag: digest}}`` for the whole registry, via catalog, tags/list and HEAD."""
        result: dict[str, dict[str, str]] = {}
        for repository in await self.catalog():
            tags = await self.tags(repository) or []
            digests: dict[str, str] = {}
            for tag in tags:
                digest = await self.head_digest(repository, tag)
                if digest is not None:
                    digests[tag] = digest
            result[repository] = digests
        return result

    async def metrics_text(self) -> str:
        """The registry's own Prometheus metrics (debug server).

        2.8.2 exports only ``registry_http_*`` and Go metrics here; the notification counters
        (``registry_notifications_*``) arrived later. Use ``notification_metrics`` instead.
        """
        async with aiohttp.ClientSession() as session, session.get(self.metrics_url) as resp:
            resp.raise_for_status()
            return await resp.text()

    async def notification_metrics(self) -> dict[str, dict[str, Any]]:
        """Per-endpoint delivery counters from the debug server's expvar ``/debug/vars``.

        ``{name: {"Pending", "Events", "Successes", "Failures", "Errors", "Statuses"}}``. Beware:
        the same expvar document also shows each endpoint's configured headers, bearer token included.
        """
        url = f"http://{LOOPBACK}:{self.debug_port}/debug/vars"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            resp.raise_for_status()
            doc = await resp.json()
        endpoints = doc["registry"]["notifications"]["endpoints"] or []
        return {ep["name"]: ep["Metrics"] for ep in endpoints}

    async def wait_notifications(
        self, predicate: Callable[[dict[str, dict[str, Any]]], bool], timeout_seconds: float = 30.0
    ) -> dict[str, dict[str, Any]]:
        """Poll ``notification_metrics`` until ``predicate`` holds; return the counters that satisfied it."""
        deadline = time.monotonic() + timeout_seconds
        metrics: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            metrics = await self.notification_metrics()
            if predicate(metrics):
                return metrics
            await asyncio.sleep(0.05)
        raise TimeoutError(f"registry notification counters not as expected within {timeout_seconds}s: {metrics}")

    async def wait_notifications_delivered(self, timeout_seconds: float = 30.0) -> None:
        """Wait until every endpoint has no pending event and each queued event was delivered.

        A helper for ordering, not a proof: the events' effect is asserted on the receiver.
        """
        await self.wait_notifications(
            lambda metrics: all(m["Pending"] == 0 and m["Successes"] >= m["Events"] for m in metrics.values()),
            timeout_seconds,
        )


class RegistryFleet:
    """Starts registries in numbered folders under ``root`` and stops every one of them (by pid)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[RegistryServer] = []

    def start(self, **kwargs: Any) -> RegistryServer:
        """A started ``RegistryServer`` with the given keyword arguments."""
        server = RegistryServer(self.root / f"registry-{len(self.started)}", **kwargs)
        self.started.append(server)
        server.start()
        return server

    def stop_all(self) -> None:
        """Stop every registry this fleet started."""
        for server in self.started:
            server.stop()

    def __enter__(self) -> RegistryFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def _json(body: bytes) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            return parsed
    raise ValueError(f"registry answered non-JSON: {body[:200]!r}")
