"""An HTTP client for the one configured registry (distribution 2.x/3.x, or any OCI registry).

Only the configured base URL is ever contacted; ``Link`` pagination is followed by path only, and a URL
inside an event is never used. Authentication is learned from the registry's ``WWW-Authenticate``
challenge: Basic (htpasswd) sends the configured credentials; Bearer runs the token flow (GET the
challenge's realm with ``service`` and ``scope``, Basic credentials if any) and caches each scope's token
until shortly before it expires. Requests are bounded by a semaphore; 5xx answers and connection errors
are retried with exponential backoff and jitter, 4xx answers never are.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import random
import re
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from consumer import __version__
from consumer.errors import (
    RegistryAuthError,
    RegistryError,
    RegistryUnavailable,
    TagDeleteUnsupported,
)
from consumer.settings import RegistrySettings

log = logging.getLogger(__name__)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_MEDIA_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)
INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})  # manifests whose references are manifests
MANIFEST_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)
# distribution refuses manifests above 4 MiB; anything larger is not a manifest it served.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_LIST_BYTES = 16 * 1024 * 1024
PAGE_SIZE = 1000
# A token is used until this many seconds before it expires (the spec promises at least 60 s of life).
TOKEN_MARGIN_SECONDS = 10.0
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")


@dataclass(frozen=True, slots=True)
class ManifestHead:
    """What ``HEAD /v2/<name>/manifests/<ref>`` says about a manifest."""

    digest: str
    media_type: str | None
    size: int | None


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest's exact bytes, as needed to PUT it again under another tag."""

    body: bytes
    media_type: str
    digest: str


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes
    retried: bool = False  # an earlier attempt was sent and failed (its effect is unknown)

    def error_code(self) -> str | None:
        """The first ``errors[].code`` of a distribution error body, if any."""
        with contextlib.suppress(ValueError, TypeError, KeyError, IndexError, AttributeError):
            return str(json.loads(self.body)["errors"][0]["code"])
        return None


@dataclass(slots=True)
class _Token:
    value: str
    expires_at: float  # time.monotonic()


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest))


def _scope(repository: str, actions: str) -> str:
    return f"repository:{repository}:{actions}"


CATALOG_SCOPE = "registry:catalog:*"


def is_digest(reference: str) -> bool:
    """True for ``algorithm:hex`` references (as opposed to tags)."""
    return _DIGEST.match(reference) is not None


class RegistryClient:
    """Talks to ``settings.url`` through one aiohttp session (owned by the caller's cleanup context)."""

    def __init__(self, settings: RegistrySettings, session: aiohttp.ClientSession) -> None:
        self._settings = settings
        self._session = session
        self._base = settings.url
        self._origin = urlsplit(settings.url)
        self._semaphore = asyncio.Semaphore(settings.max_concurrency)
        self._username = settings.username
        self._password = settings.password_text()
        self._scheme: str | None = None  # learned from the first challenge: "basic" or "bearer"
        self._challenge_params: dict[str, str] = {}
        self._tokens: dict[str, _Token] = {}
        self._token_locks: dict[str, asyncio.Lock] = {}
        self._tag_delete: bool | None = None
        self.user_agent = user_agent_of(settings)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: RegistrySettings) -> AsyncIterator[RegistryClient]:
        """A client with its own session, for the CLI and tests; closed on exit."""
        async with registry_session(settings) as session:
            yield cls(settings, session)

    # -- the registry API -------------------------------------------------------------------------

    async def catalog(self, page_size: int = PAGE_SIZE) -> list[str]:
        """Every repository of ``/v2/_catalog``, following ``Link`` pagination."""
        return [name async for name in self.iter_catalog(page_size)]

    async def iter_catalog(self, page_size: int = PAGE_SIZE) -> AsyncIterator[str]:
        """The catalog page by page."""
        async for item in self._pages(f"/v2/_catalog?n={page_size}", "repositories", CATALOG_SCOPE):
            yield item

    async def tags(self, repository: str, page_size: int = PAGE_SIZE) -> list[str] | None:
        """Every tag of ``repository`` (``tags/list`` with pagination), or None when the registry has no
        such repository. A repository whose tags were all deleted answers ``[]`` (2.8 sends ``null``)."""
        try:
            return [
                t
                async for t in self._pages(
                    f"/v2/{repository}/tags/list?n={page_size}", "tags", _scope(repository, "pull")
                )
            ]
        except RegistryError as exc:
            if exc.registry_status == 404:
                return None
            raise

    async def head_manifest(self, repository: str, reference: str) -> ManifestHead | None:
        """The digest, media type and size of a tag or digest, or None on 404. A HEAD is not a pull."""
        answer = await self._call(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            _scope(repository, "pull"),
            headers={"Accept": MANIFEST_ACCEPT},
            ok=(200, 404),
        )
        if answer.status == 404:
            return None
        digest = answer.headers.get("Docker-Content-Digest")
        if not digest:
            raise RegistryError(f"HEAD {repository}:{reference}: no Docker-Content-Digest header")
        length = answer.headers.get("Content-Length")
        return ManifestHead(
            digest=digest,
            media_type=(answer.headers.get("Content-Type") or "").split(";")[0].strip() or None,
            size=int(length) if length and length.isdigit() else None,
        )

    async def head_digest(self, repository: str, reference: str) -> str | None:
        """``Docker-Content-Digest`` of a tag or digest, or None when it does not exist."""
        head = await self.head_manifest(repository, reference)
        return None if head is None else head.digest

    async def get_manifest(self, repository: str, reference: str) -> Manifest | None:
        """The manifest's exact bytes, media type and digest, or None on 404.

        Fetched by digest, the bytes are checked against it, so a retag can never PUT other content.
        """
        answer = await self._call(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            _scope(repository, "pull"),
            headers={"Accept": MANIFEST_ACCEPT},
            ok=(200, 404),
            max_bytes=MAX_MANIFEST_BYTES,
        )
        if answer.status == 404:
            return None
        media_type = (answer.headers.get("Content-Type") or "").split(";")[0].strip()
        computed = "sha256:" + hashlib.sha256(answer.body).hexdigest()
        digest = answer.headers.get("Docker-Content-Digest") or computed
        if is_digest(reference) and reference.startswith("sha256:") and reference != computed:
            raise RegistryError(f"GET {repository}@{reference}: content has digest {computed}")
        return Manifest(body=answer.body, media_type=media_type, digest=digest)

    async def put_manifest(self, repository: str, tag: str, body: bytes, media_type: str) -> str:
        """PUT ``body`` as ``repository:tag`` with its own media type; returns the registry's digest."""
        answer = await self._call(
            "PUT",
            f"/v2/{repository}/manifests/{tag}",
            _scope(repository, "pull,push"),
            headers={"Content-Type": media_type},
            data=body,
            ok=(201,),
        )
        return answer.headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(body).hexdigest()

    async def delete_manifest(self, repository: str, digest: str) -> bool:
        """DELETE a manifest by digest (the registry untags every tag on it). False if it was already gone.

        A 404 after a retried attempt counts as deleted: the attempt whose answer was lost is the likeliest
        to have deleted it.
        """
        if not is_digest(digest):
            raise ValueError(f"delete_manifest needs a digest, got {digest!r}")
        answer = await self._call(
            "DELETE", f"/v2/{repository}/manifests/{digest}", _scope(repository, "delete"), ok=(202, 404)
        )
        return answer.status == 202 or (answer.status == 404 and answer.retried)

    async def delete_tag(self, repository: str, tag: str) -> bool:
        """DELETE one tag (distribution 3.x, OCI 1.1). False if the tag did not exist.

        Raises :class:`TagDeleteUnsupported` on a registry that deletes only by digest (400/405).
        """
        if is_digest(tag):
            raise ValueError(f"delete_tag needs a tag, got {tag!r}")
        answer = await self._call(
            "DELETE", f"/v2/{repository}/manifests/{tag}", _scope(repository, "delete"), ok=(202, 404, 400, 405)
        )
        if answer.status in (400, 405):
            self._tag_delete = False
            raise TagDeleteUnsupported(
                f"the registry cannot delete tag {repository}:{tag} ({answer.status} {answer.error_code()})",
                registry_status=answer.status,
                registry_code=answer.error_code(),
            )
        self._tag_delete = True
        return answer.status == 202 or (answer.status == 404 and answer.retried)  # as delete_manifest

    async def supports_tag_delete(self, repository: str) -> bool:
        """Whether the registry deletes tags by name; learned once, then cached for this client.

        The probe deletes a random tag name that cannot exist, in a repository that does: 3.x answers
        404 MANIFEST_UNKNOWN (tag deletes work), 2.x answers 400 DIGEST_INVALID, and a registry with
        deletes disabled 405. Anything inconclusive answers False without caching: deleting by digest
        only when every tag on it expired is the safe fallback.
        """
        if self._tag_delete is not None:
            return self._tag_delete
        probe = f"registry-consumer-probe-{secrets.token_hex(12)}"
        answer = await self._call(
            "DELETE",
            f"/v2/{repository}/manifests/{probe}",
            _scope(repository, "delete"),
            ok=(202, 400, 404, 405),
        )
        code = answer.error_code()
        if answer.status in (400, 405):
            self._tag_delete = False
        elif answer.status == 202 or code == "MANIFEST_UNKNOWN":
            self._tag_delete = True
        else:
            log.info("tag delete probe inconclusive", extra={"status": answer.status, "code": code})
            return False
        log.info("registry tag delete support learned", extra={"supported": self._tag_delete})
        return self._tag_delete

    # -- plumbing --------------------------------------------------------------------------------

    async def _pages(self, first: str, key: str, scope: str) -> AsyncIterator[str]:
        path: str | None = first
        while path is not None:
            answer = await self._call("GET", path, scope, max_bytes=MAX_LIST_BYTES)
            try:
                items = json.loads(answer.body).get(key) or []
            except (ValueError, AttributeError) as exc:
                raise RegistryError(f"GET {path}: not a JSON object with {key!r}") from exc
            for item in items:
                yield str(item)
            path = self._next_page(answer.headers.get("Link"))

    def _next_page(self, link: str | None) -> str | None:
        """The path of a ``Link: <...>; rel="next"``; only the path and query are used, never the host."""
        if not link or 'rel="next"' not in link:
            return None
        target = link.split(";", 1)[0].strip().strip("<>")
        parts = urlsplit(target)
        if parts.netloc and parts.netloc != self._origin.netloc:
            raise RegistryError(f"refusing to follow a Link to another host: {parts.netloc}")
        if not parts.path.startswith("/v2/"):
            raise RegistryError(f"unexpected Link target {target!r}")
        return parts.path + (f"?{parts.query}" if parts.query else "")

    async def _call(
        self,
        method: str,
        path: str,
        scope: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        ok: tuple[int, ...] = (200,),
        max_bytes: int = MAX_MANIFEST_BYTES,
    ) -> _Answer:
        """One request with auth, retries and the concurrency bound; raises unless the status is in ``ok``."""
        answer = await self._with_retries(method, path, scope, headers, data, max_bytes)
        if answer.status == 401:
            # The first challenge of this client, or a token that stopped working: authenticate, once.
            await self._authenticate(answer, scope)
            answer = await self._with_retries(method, path, scope, headers, data, max_bytes)
        if answer.status in ok:
            return answer
        code = answer.error_code()
        where = f"{method} {path}"
        if answer.status in (401, 403):
            raise RegistryAuthError(
                f"{where}: the registry refused the consumer's credentials ({answer.status} {code})",
                registry_status=answer.status,
                registry_code=code,
            )
        if answer.status >= 500:
            raise RegistryUnavailable(f"{where}: {answer.status} {code}", registry_status=answer.status)
        raise RegistryError(f"{where}: {answer.status} {code}", registry_status=answer.status, registry_code=code)

    async def _with_retries(
        self,
        method: str,
        path: str,
        scope: str,
        headers: Mapping[str, str] | None,
        data: bytes | None,
        max_bytes: int,
    ) -> _Answer:
        settings = self._settings
        attempt = 0
        while True:
            try:
                answer = await self._send(method, path, scope, headers, data, max_bytes)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                if attempt >= settings.retries:
                    raise RegistryUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
                reason = type(exc).__name__
            else:
                if answer.status < 500 or attempt >= settings.retries:
                    return dataclasses.replace(answer, retried=True) if attempt else answer
                reason = str(answer.status)
            delay = min(settings.backoff_max_seconds, settings.backoff_seconds * 2**attempt)
            delay *= 0.5 + random.random() / 2  # jitter: replicas do not retry in lockstep
            log.info("registry request retried", extra={"method": method, "path": path, "reason": reason})
            await asyncio.sleep(delay)
            attempt += 1

    async def _send(
        self,
        method: str,
        path: str,
        scope: str,
        headers: Mapping[str, str] | None,
        data: bytes | None,
        max_bytes: int,
    ) -> _Answer:
        all_headers = {"User-Agent": self.user_agent, **(headers or {})}
        authorization = await self._authorization(scope)
        if authorization:
            all_headers["Authorization"] = authorization
        async with (
            self._semaphore,
            self._session.request(
                method, self._base + path, headers=all_headers, data=data, allow_redirects=False
            ) as resp,
        ):
            body = b"" if method == "HEAD" else await _read_bounded(resp, max_bytes)
            return _Answer(resp.status, dict(resp.headers), body)

    async def _authorization(self, scope: str) -> str | None:
        if self._scheme == "basic":
            return self._basic()
        if self._scheme == "bearer":
            token = self._tokens.get(scope)
            if token is None or token.expires_at <= time.monotonic():
                token = await self._fetch_token(scope)
            return f"Bearer {token.value}"
        return None

    def _basic(self) -> str:
        if self._username is None:
            raise RegistryAuthError("the registry asks for credentials: set registry.username and password_file")
        raw = f"{self._username}:{self._password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    async def _authenticate(self, answer: _Answer, scope: str) -> None:
        scheme, params = _challenge(answer.headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            self._scheme = "basic"
            self._basic()
        elif scheme == "bearer" and params.get("realm"):
            self._scheme = "bearer"
            self._challenge_params = params
            self._tokens.pop(scope, None)
            await self._fetch_token(scope, params.get("scope"))
        else:
            raise RegistryAuthError(f"the registry answered 401 with an unusable challenge: {scheme or 'none'}")

    async def _fetch_token(self, scope: str, challenge_scope: str | None = None) -> _Token:
        lock = self._token_locks.setdefault(scope, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(scope)
            if cached is not None and cached.expires_at > time.monotonic():
                return cached
            params = self._challenge_params
            query = {"scope": challenge_scope or scope}
            if params.get("service"):
                query["service"] = params["service"]
            headers = {"User-Agent": self.user_agent}
            if self._username is not None:
                headers["Authorization"] = self._basic()
            started = time.monotonic()
            try:
                async with (
                    self._semaphore,
                    self._session.get(params["realm"], params=query, headers=headers, allow_redirects=False) as resp,
                ):
                    body = await _read_bounded(resp, 64 * 1024)
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise RegistryUnavailable(f"token service unreachable: {type(exc).__name__}: {exc}") from exc
            if status != 200:
                raise RegistryAuthError(f"the token service refused the consumer ({status})", registry_status=status)
            try:
                doc: dict[str, Any] = json.loads(body)
                value = str(doc.get("token") or doc.get("access_token") or "")
                ttl = float(doc.get("expires_in") or 60)
            except (ValueError, TypeError, AttributeError) as exc:
                raise RegistryAuthError("the token service answered something that is not a token") from exc
            if not value:
                raise RegistryAuthError("the token service answered without a token")
            token = _Token(value, started + max(0.0, ttl - min(TOKEN_MARGIN_SECONDS, ttl / 2)))
            self._tokens[scope] = token
            return token


async def _read_bounded(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(65_536):
        total += len(chunk)
        if total > max_bytes:
            raise RegistryError(f"{resp.method} {resp.url.path}: answer larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def user_agent_of(settings: RegistrySettings | None) -> str:
    """The ``User-Agent`` the consumer's registry client sends (``registry-consumer/<version>`` by default)."""
    name = settings.user_agent if settings is not None else RegistrySettings.model_fields["user_agent"].default
    return f"{name}/{__version__}"


def tls_context(settings: RegistrySettings) -> ssl.SSLContext | bool:
    """The system's trusted certificates plus ``ca_file``'s; True (aiohttp's default) without one."""
    if settings.ca_file is None:
        return True
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=settings.ca_file)  # checked when the settings were loaded
    return context


@contextlib.asynccontextmanager
async def registry_session(settings: RegistrySettings) -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp session sized, timed and trusting what the registry settings say."""
    timeout = aiohttp.ClientTimeout(total=settings.timeout_seconds)
    connector = aiohttp.TCPConnector(limit=settings.max_concurrency, ssl=tls_context(settings))
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        yield session
