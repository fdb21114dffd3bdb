"""The registry client against the real docker-registry 2.8.2: auth (htpasswd and the token flow),
pagination, manifests of every kind, deletes, tag-delete detection, and retries (a fault server)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from consumer.errors import ConfigError, RegistryAuthError, RegistryError, RegistryUnavailable, TagDeleteUnsupported
from consumer.registry_client import RegistryClient
from consumer.settings import RegistrySettings, load_settings
from tests.support import oci, skopeo
from tests.support.procs import LOOPBACK, free_port
from tests.support.registry import (
    CATALOG_ACCESS,
    BasicCredentials,
    HtpasswdAuth,
    RegistryFleet,
    RegistryServer,
    TokenIssuer,
    repository_access,
)
from tests.support.tls import make_tls_files

pytestmark = pytest.mark.e2e

ROBOT = BasicCredentials("robot", "s3cret-robot")


def _settings(
    url: str, creds: BasicCredentials | None = None, tmp_path: Path | None = None, **extra: Any
) -> RegistrySettings:
    values: dict[str, Any] = {"url": url, "backoff_seconds": 0.01, "backoff_max_seconds": 0.05, **extra}
    if creds is not None:
        assert tmp_path is not None
        password = tmp_path / "registry-password"
        password.write_text(creds.password + "\n")
        values.update(username=creds.username, password_file=password)
    return RegistrySettings(**values)


@pytest.fixture
def registry(registries: RegistryFleet) -> RegistryServer:
    return registries.start()


async def test_lists_and_reads_what_was_pushed(registry: RegistryServer, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    single, multi, legacy = oci.write_image(layout, "a"), oci.write_index(layout, "m"), oci.write_image(layout, "l")
    await skopeo.push(single, registry, "team/one", "1.0.0")
    await skopeo.retag(registry, "team/one", "1.0.0", "latest")
    await skopeo.push(multi, registry, "team/two", "2.0.0")
    schema2 = await skopeo.push(legacy, registry, "legacy/app", "3", v2s2=True)
    async with RegistryClient.open(_settings(registry.url)) as client:
        assert await client.catalog(page_size=1) == ["legacy/app", "team/one", "team/two"]
        assert sorted(await client.tags("team/one", page_size=1) or []) == ["1.0.0", "latest"]
        assert await client.tags("never/pushed") is None
        assert await client.head_digest("team/one", "latest") == single.digest
        assert await client.head_digest("team/one", "9.9.9") is None
        head = await client.head_manifest("team/two", "2.0.0")
        assert head is not None and (head.digest, head.media_type, head.size) == (
            multi.digest,
            oci.OCI_INDEX,
            multi.size,
        )
        for repo, ref, digest, media_type in (
            ("team/one", single.digest, single.digest, oci.OCI_MANIFEST),
            ("team/two", multi.digest, multi.digest, oci.OCI_INDEX),
            ("legacy/app", schema2, schema2, oci.DOCKER_MANIFEST),
        ):
            manifest = await client.get_manifest(repo, ref)
            assert manifest is not None
            assert (manifest.digest, manifest.media_type) == (digest, media_type)
        assert await client.get_manifest("team/one", "sha256:" + "0" * 64) is None


async def test_put_manifest_retags_without_changing_the_digest(registry: RegistryServer, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    multi = oci.write_index(layout, "m")
    await skopeo.push(multi, registry, "team/two", "2.0.0")
    async with RegistryClient.open(_settings(registry.url)) as client:
        manifest = await client.get_manifest("team/two", multi.digest)
        assert manifest is not None
        assert await client.put_manifest("team/two", "latest", manifest.body, manifest.media_type) == multi.digest
    assert await registry.head_digest("team/two", "latest") == multi.digest
    assert await registry.tags("team/two") == ["2.0.0", "latest"]


async def test_registry_28_cannot_delete_tags_and_the_answer_is_learned(
    registry: RegistryServer, tmp_path: Path
) -> None:
    image = oci.write_image(tmp_path / "layout", "a")
    await skopeo.push(image, registry, "team/one", "1.0.0")
    async with RegistryClient.open(_settings(registry.url)) as client:
        assert await client.supports_tag_delete("team/one") is False
        with pytest.raises(TagDeleteUnsupported) as info:
            await client.delete_tag("team/one", "1.0.0")
        assert info.value.registry_status == 400 and info.value.registry_code == "DIGEST_INVALID"
    assert await registry.tags("team/one") == ["1.0.0"]  # the probe and the refused delete changed nothing


async def test_delete_manifest_removes_every_tag_and_reports_a_second_delete(
    registry: RegistryServer, tmp_path: Path
) -> None:
    image = oci.write_image(tmp_path / "layout", "a")
    await skopeo.push(image, registry, "team/one", "1.0.0")
    await skopeo.retag(registry, "team/one", "1.0.0", "stable")
    async with RegistryClient.open(_settings(registry.url)) as client:
        assert await client.delete_manifest("team/one", image.digest) is True
        assert await client.delete_manifest("team/one", image.digest) is False
        assert await client.tags("team/one") == []
        with pytest.raises(ValueError, match="needs a digest"):
            await client.delete_manifest("team/one", "1.0.0")


async def test_basic_auth_with_htpasswd(registries: RegistryFleet, tmp_path: Path) -> None:
    registry = registries.start(auth=HtpasswdAuth([ROBOT]))
    image = oci.write_image(tmp_path / "layout", "a")
    await skopeo.push(image, registry, "team/one", "1.0.0", auth=skopeo.Auth(creds=ROBOT))
    async with RegistryClient.open(_settings(registry.url, ROBOT, tmp_path)) as client:
        assert await client.catalog() == ["team/one"]
        assert await client.head_digest("team/one", "1.0.0") == image.digest
    wrong = BasicCredentials("robot", "not-the-password")
    async with RegistryClient.open(_settings(registry.url, wrong, tmp_path)) as client:
        with pytest.raises(RegistryAuthError):
            await client.catalog()
    async with RegistryClient.open(_settings(registry.url)) as client:
        with pytest.raises(RegistryAuthError, match=r"set registry\.username"):
            await client.catalog()


class LoopbackServer:
    """A small aiohttp server on a free loopback port; subclasses add their routes in ``routes``."""

    def __init__(self) -> None:
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class TokenServer(LoopbackServer):
    """The registry's token service (the challenge's realm): Basic credentials in, a signed token out."""

    def __init__(self, issuer: TokenIssuer, creds: BasicCredentials) -> None:
        super().__init__()
        self.issuer = issuer
        self.creds = creds
        self.url = f"http://{LOOPBACK}:{self.port}/token"
        self.requests: list[dict[str, str]] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/token", self._token)

    async def _token(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.query))
        expected = "Basic " + base64.b64encode(self.creds.skopeo_creds.encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"details": "bad credentials"}, status=401)
        access = []
        for scope in request.query.getall("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append(CATALOG_ACCESS if kind == "registry" else repository_access(name, actions.split(",")))
        return web.json_response({"token": self.issuer.mint(access, subject=self.creds.username), "expires_in": 300})


@pytest.fixture
async def token_server(tmp_path: Path) -> AsyncIterator[TokenServer]:
    server = TokenServer(TokenIssuer(tmp_path / "keys"), ROBOT)
    await server.start()
    yield server
    await server.stop()


async def test_bearer_token_flow_with_a_cache_per_scope(
    registries: RegistryFleet, token_server: TokenServer, tmp_path: Path
) -> None:
    issuer = token_server.issuer
    registry = registries.start(auth=issuer.auth(realm=token_server.url), token_issuer=issuer)
    image = oci.write_image(tmp_path / "layout", "a")
    push_token = issuer.mint([repository_access("team/one", ["pull", "push"])])
    await skopeo.push(image, registry, "team/one", "1.0.0", auth=skopeo.Auth(token=push_token))
    async with RegistryClient.open(_settings(registry.url, ROBOT, tmp_path)) as client:
        assert await client.catalog() == ["team/one"]
        assert await client.head_digest("team/one", "1.0.0") == image.digest
        assert await client.head_digest("team/one", "1.0.0") == image.digest
        assert await client.tags("team/one") == ["1.0.0"]
        assert await client.delete_manifest("team/one", image.digest) is True
    scopes = [r["scope"] for r in token_server.requests]
    # One token per scope, reused until it expires; the service name comes from the challenge.
    assert scopes == ["registry:catalog:*", "repository:team/one:pull", "repository:team/one:delete"]
    assert {r["service"] for r in token_server.requests} == {issuer.service}


async def test_token_service_refusal_is_an_auth_error(
    registries: RegistryFleet, token_server: TokenServer, tmp_path: Path
) -> None:
    registry = registries.start(auth=token_server.issuer.auth(realm=token_server.url), token_issuer=token_server.issuer)
    async with RegistryClient.open(_settings(registry.url, BasicCredentials("robot", "wrong"), tmp_path)) as client:
        with pytest.raises(RegistryAuthError, match="token service refused"):
            await client.catalog()


class FaultServer(LoopbackServer):
    """Answers each path with a scripted list of statuses (then the last one forever); counts requests."""

    def __init__(self, script: dict[str, list[int]], link: Callable[[str], str | None] = lambda _: None) -> None:
        super().__init__()
        self.script = script
        self.link = link
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.hits: dict[str, int] = {}

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._answer)

    async def _answer(self, request: web.Request) -> web.Response:
        n = self.hits.get(request.path, 0)
        self.hits[request.path] = n + 1
        statuses = self.script[request.path]
        status = statuses[min(n, len(statuses) - 1)]
        body = {"repositories": ["a"]} if status == 200 else {"errors": [{"code": "UNKNOWN"}]}
        headers = {}
        if (link := self.link(request.path_qs)) is not None:
            headers["Link"] = link
        return web.json_response(body, status=status, headers=headers)


async def test_5xx_is_retried_with_backoff_and_4xx_is_not() -> None:
    server = FaultServer({"/v2/_catalog": [503, 502, 200], "/v2/x/tags/list": [403], "/v2/y/tags/list": [500]})
    await server.start()
    try:
        async with RegistryClient.open(_settings(server.url, retries=3)) as client:
            assert await client.catalog() == ["a"]
            assert server.hits["/v2/_catalog"] == 3
            with pytest.raises(RegistryAuthError):
                await client.tags("x")
            assert server.hits["/v2/x/tags/list"] == 1
            with pytest.raises(RegistryUnavailable):
                await client.tags("y")
            assert server.hits["/v2/y/tags/list"] == 4  # the first try and three retries
    finally:
        await server.stop()


async def test_connection_errors_are_retried_then_reported() -> None:
    url = f"http://{LOOPBACK}:{free_port()}"  # nothing listens here
    async with RegistryClient.open(_settings(url, retries=2)) as client:
        with pytest.raises(RegistryUnavailable, match="ClientConnectorError"):
            await client.catalog()


async def test_link_to_another_host_is_never_followed() -> None:
    server = FaultServer(
        {"/v2/_catalog": [200]}, link=lambda _: '<http://evil.example:5000/v2/_catalog?last=a&n=1>; rel="next"'
    )
    await server.start()
    try:
        async with RegistryClient.open(_settings(server.url)) as client:
            with pytest.raises(RegistryError, match="another host"):
                await client.catalog()
        assert server.hits == {"/v2/_catalog": 1}
    finally:
        await server.stop()


async def test_a_registry_behind_a_private_ca_is_trusted_through_ca_file(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    with RegistryServer(tmp_path / "registry", tls=tls) as registry:
        assert registry.url.startswith("https://")
        await skopeo.push(oci.write_image(tmp_path / "layout", "a"), registry, "team/app", "1.0")
        async with RegistryClient.open(_settings(registry.url, ca_file=tls.ca)) as client:
            assert await client.catalog() == ["team/app"]
            assert await client.tags("team/app") == ["1.0"]
        async with RegistryClient.open(_settings(registry.url, retries=0)) as client:
            with pytest.raises(RegistryUnavailable, match="certificate verify failed"):
                await client.catalog()


def test_a_ca_file_that_is_not_pem_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"registry\.ca_file"):
        load_settings(None, registry={"url": "https://registry.example", "ca_file": str(bad)})


async def test_a_delete_that_finds_nothing_after_a_retry_counts_as_deleted() -> None:
    """The retried attempt's answer was lost; the likeliest reason the manifest is gone is that attempt."""
    d1, d2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    server = FaultServer({f"/v2/x/manifests/{d1}": [503, 404], f"/v2/x/manifests/{d2}": [404],
                          "/v2/x/manifests/t1": [502, 404], "/v2/x/manifests/t2": [404]})
    await server.start()
    try:
        async with RegistryClient.open(_settings(server.url, retries=2)) as client:
            assert await client.delete_manifest("x", d1) is True
            assert await client.delete_manifest("x", d2) is False  # gone at the first attempt: not ours
            assert await client.delete_tag("x", "t1") is True
            assert await client.delete_tag("x", "t2") is False
    finally:
        await server.stop()
