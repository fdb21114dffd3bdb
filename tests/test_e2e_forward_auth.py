"""End to end: revocation reaches the registry through nginx ``auth_request`` -> the consumer's ``GET /v1/auth``.

Real parts only: Debian's ``docker-registry`` 2.8.2 with token auth trusting a key the test generates (libtrust
``kid``), Debian's nginx with config/nginx/registry-forward-auth.conf included as an operator would, the
consumer as ``python -m consumer serve`` with ``registry_auth`` set through the environment, and skopeo with
a registry token (``--dest-registry-token``). After the token (or its subject) is revoked with
``POST /v1/tokens/revoke``, the next request through nginx is refused, while the registry itself, asked
directly, still accepts the very same token: it has no revocation of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ConsumerProcess
from tests.support import oci, skopeo
from tests.support.procs import LOOPBACK, ManagedProcess, free_port, wait_for_port
from tests.support.registry import RegistryFleet, RegistryServer, TokenIssuer, repository_access
from tests.test_nginx_forward_auth_snippet import nginx_binary, write_nginx_conf

pytestmark = pytest.mark.e2e

REALM = "http://127.0.0.1:9/token"  # only ever sent in challenges; nothing fetches from it here


@pytest.fixture
def issuer(tmp_path: Path) -> TokenIssuer:
    """The registry token server's signing key; the registry and the consumer both trust its certificate."""
    return TokenIssuer(tmp_path / "token-server", algorithm="ES256")


@pytest.fixture
def registry_auth_env(issuer: TokenIssuer, monkeypatch: pytest.MonkeyPatch) -> None:
    """``registry_auth`` for the consumer process (consumer_process copies the environment when it starts)."""
    monkeypatch.setenv("REGISTRY_CONSUMER_REGISTRY_AUTH__REALM", REALM)
    monkeypatch.setenv("REGISTRY_CONSUMER_REGISTRY_AUTH__SERVICE", issuer.service)
    monkeypatch.setenv("REGISTRY_CONSUMER_REGISTRY_AUTH__ISSUER", issuer.issuer)
    monkeypatch.setenv("REGISTRY_CONSUMER_REGISTRY_AUTH__ROOTCERTBUNDLE", str(issuer.cert_path))


@dataclass
class Gate:
    """nginx on ``host`` in front of ``registry``, asking ``consumer`` about every request."""

    host: str
    registry: RegistryServer
    consumer: ConsumerProcess

    def ref(self, repository: str, tag: str) -> str:
        return f"docker://{self.host}/{repository}:{tag}"


@pytest.fixture
def gate(
    registry_auth_env: None,
    consumer_process: ConsumerProcess,
    registries: RegistryFleet,
    issuer: TokenIssuer,
    tmp_path: Path,
) -> Iterator[Gate]:
    registry = registries.start(auth=issuer.auth(realm=REALM), token_issuer=issuer)
    port = free_port()
    prefix = tmp_path / "nginx"
    conf = write_nginx_conf(prefix, port, registry.host, consumer_process.port)
    nginx = ManagedProcess("nginx", [nginx_binary(), "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
                           prefix / "stdout.log")
    with nginx:
        wait_for_port(LOOPBACK, port, timeout=15, process=nginx)
        yield Gate(f"{LOOPBACK}:{port}", registry, consumer_process)


async def get_manifest(base_url: str, repository: str, tag: str, token: str) -> tuple[int, str]:
    """``GET /v2/<repo>/manifests/<tag>`` with a bearer token: (status, WWW-Authenticate)."""
    headers = {"Authorization": f"Bearer {token}", "Accept": oci.OCI_MANIFEST}
    async with aiohttp.ClientSession() as session, session.get(
        f"{base_url}/v2/{repository}/manifests/{tag}", headers=headers
    ) as resp:
        await resp.read()
        return resp.status, resp.headers.get("WWW-Authenticate", "")


async def revoke(consumer: ConsumerProcess, **fields: str) -> None:
    """``POST /v1/tokens/revoke``: a form (``token=``) or JSON (``sub=``), with the consumer's admin token."""
    headers = {"Authorization": f"Bearer {consumer.token}"}
    async with aiohttp.ClientSession() as session:
        if "token" in fields:
            request = session.post(f"{consumer.url}/v1/tokens/revoke", data=fields, headers=headers)
        else:
            request = session.post(f"{consumer.url}/v1/tokens/revoke", json=fields, headers=headers)
        async with request as resp:
            assert resp.status == 200, await resp.text()


async def test_revoked_token_is_refused_at_the_gate_but_still_accepted_by_the_registry(
    gate: Gate, issuer: TokenIssuer, tmp_path: Path
) -> None:
    token = issuer.mint([repository_access("myapp1", ["pull", "push"])], subject="ci-bot")
    image = oci.write_image(tmp_path / "layout", "a")
    pushed = await skopeo.copy(image.transport_ref, gate.ref("myapp1", "1.0"), dest_auth=skopeo.Auth(token=token),
                               preserve_digests=True)
    assert pushed == image.digest
    assert await gate.registry.tags("myapp1") == ["1.0"]
    assert (await get_manifest(f"http://{gate.host}", "myapp1", "1.0", token))[0] == 200

    await revoke(gate.consumer, token=token)

    status, challenge = await get_manifest(f"http://{gate.host}", "myapp1", "1.0", token)
    assert status == 401
    assert challenge == (f'Bearer realm="{REALM}",service="{issuer.service}",scope="repository:myapp1:pull",'
                         'error="invalid_token"')
    with pytest.raises(skopeo.SkopeoError, match=r"unauthorized|authentication required|401"):
        await skopeo.copy(image.transport_ref, gate.ref("myapp1", "2.0"), dest_auth=skopeo.Auth(token=token),
                          preserve_digests=True)
    assert await gate.registry.tags("myapp1") == ["1.0"]
    # The registry on its own trusts the revoked token until it expires.
    assert (await get_manifest(gate.registry.url, "myapp1", "1.0", token))[0] == 200


async def test_revoked_subject_is_refused_at_the_gate_other_subjects_pass(
    gate: Gate, issuer: TokenIssuer, tmp_path: Path
) -> None:
    access = [repository_access("team/app", ["pull", "push"])]
    dev, ops = issuer.mint(access, subject="dev"), issuer.mint(access, subject="ops")
    image = oci.write_image(tmp_path / "layout", "b")
    await skopeo.copy(image.transport_ref, gate.ref("team/app", "1.0"), dest_auth=skopeo.Auth(token=dev),
                      preserve_digests=True)

    await revoke(gate.consumer, sub="dev")

    assert (await get_manifest(f"http://{gate.host}", "team/app", "1.0", dev))[0] == 401
    assert (await get_manifest(gate.registry.url, "team/app", "1.0", dev))[0] == 200
    assert (await get_manifest(f"http://{gate.host}", "team/app", "1.0", ops))[0] == 200
    await skopeo.copy(image.transport_ref, gate.ref("team/app", "2.0"), dest_auth=skopeo.Auth(token=ops),
                      preserve_digests=True)
    assert await gate.registry.tags("team/app") == ["1.0", "2.0"]


async def test_a_pull_token_cannot_push_through_the_gate(gate: Gate, issuer: TokenIssuer, tmp_path: Path) -> None:
    pull_only = issuer.mint([repository_access("myapp1", ["pull"])], subject="reader")
    image = oci.write_image(tmp_path / "layout", "c")
    with pytest.raises(skopeo.SkopeoError, match=r"denied|403"):
        await skopeo.copy(image.transport_ref, gate.ref("myapp1", "1.0"), dest_auth=skopeo.Auth(token=pull_only),
                          preserve_digests=True)
    assert await gate.registry.tags("myapp1") is None
