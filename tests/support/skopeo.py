"""Drive ``skopeo`` (Debian 1.9.x) against the test registry.

All functions are async subprocess calls so a consumer served on the test's own event loop keeps
answering the registry's notifications while skopeo runs. Each raises ``SkopeoError`` with skopeo's
stderr on failure. ``docker://`` references are always plain HTTP (``--*-tls-verify=false``).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .oci import Descriptor, OciImage, read_ref
from .registry import BasicCredentials, RegistryServer

SKOPEO_BIN = "skopeo"
_SECRET_FLAGS = {
    "--src-creds",
    "--dest-creds",
    "--creds",
    "--src-registry-token",
    "--dest-registry-token",
    "--registry-token",
}


class SkopeoError(RuntimeError):
    """skopeo exited non-zero; the message has the (redacted) command line and its stderr."""


@dataclass(frozen=True)
class Auth:
    """How skopeo authenticates to one registry: htpasswd credentials or a bearer token."""

    creds: BasicCredentials | None = None
    token: str | None = None

    def flags(self, side: str) -> list[str]:
        """``--<side>-creds``/``--<side>-registry-token`` (side: src, dest, or "" for inspect)."""
        prefix = f"--{side}-" if side else "--"
        if self.creds is not None:
            return [f"{prefix}creds", self.creds.skopeo_creds]
        if self.token is not None:
            return [f"{prefix}registry-token", self.token]
        return []


def _redacted(argv: Sequence[str]) -> str:
    shown: list[str] = []
    hide_next = False
    for arg in argv:
        shown.append("<redacted>" if hide_next else arg)
        hide_next = arg in _SECRET_FLAGS
    return " ".join(shown)


def _side_flags(ref: str, side: str, auth: Auth | None) -> list[str]:
    if not ref.startswith("docker://"):
        return []
    prefix = f"--{side}-" if side else "--"
    return [f"{prefix}tls-verify=false", *(auth.flags(side) if auth else [])]


async def run_skopeo(args: Sequence[str], timeout_seconds: float = 180.0) -> str:
    """Run ``skopeo --insecure-policy <args>`` without the host's auth files; return stdout."""
    argv = [SKOPEO_BIN, "--insecure-policy", *args]
    with tempfile.TemporaryDirectory(prefix="skopeo-") as home:
        # A private auth file location: the machine's saved logins never leak into a test.
        env = {**os.environ, "REGISTRY_AUTH_FILE": str(Path(home) / "auth.json"), "HOME": home}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout_seconds)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise SkopeoError(f"timed out after {timeout_seconds}s: {_redacted(argv)}") from None
    if proc.returncode != 0:
        raise SkopeoError(f"exit {proc.returncode}: {_redacted(argv)}\n{stderr.decode('utf-8', 'replace')}")
    return stdout.decode()


async def copy(
    source: str,
    destination: str,
    *,
    src_auth: Auth | None = None,
    dest_auth: Auth | None = None,
    manifest_format: str | None = None,
    all_images: bool = True,
    preserve_digests: bool = False,
) -> str:
    """``skopeo copy`` and return the digest skopeo wrote for the destination manifest.

    ``all_images`` (``--all``) is on by default: without it skopeo copies only the host's
    platform out of an index, and the destination gets a different digest than the source.
    """
    with tempfile.TemporaryDirectory(prefix="skopeo-digest-") as tmp:
        digest_file = Path(tmp) / "digest"
        args = ["copy", "--quiet", "--digestfile", str(digest_file)]
        if all_images:
            args.append("--all")
        if preserve_digests:
            args.append("--preserve-digests")
        if manifest_format is not None:
            args += ["--format", manifest_format]
        args += _side_flags(source, "src", src_auth)
        args += _side_flags(destination, "dest", dest_auth)
        args += [source, destination]
        await run_skopeo(args)
        return digest_file.read_text().strip()


async def push(
    image: OciImage,
    registry: RegistryServer,
    repository: str,
    tag: str,
    *,
    auth: Auth | None = None,
    v2s2: bool = False,
) -> str:
    """Push an OCI layout image to ``<registry>/<repository>:<tag>``; return the pushed digest.

    ``v2s2`` converts to Docker schema 2 on the way (single-arch images only), so the registry's
    digest differs from ``image.digest``.
    """
    return await copy(
        image.transport_ref,
        registry.ref(repository, tag),
        dest_auth=auth,
        manifest_format="v2s2" if v2s2 else None,
        preserve_digests=not v2s2,
    )


async def push_by_digest(
    image: OciImage, registry: RegistryServer, repository: str, *, auth: Auth | None = None
) -> str:
    """Push an OCI image to ``<registry>/<repository>@<digest>``: a manifest with no tag."""
    return await copy(
        image.transport_ref,
        registry.ref(repository, image.digest),
        dest_auth=auth,
        preserve_digests=True,
    )


async def retag(
    registry: RegistryServer, repository: str, source_tag: str, new_tag: str, *, auth: Auth | None = None
) -> str:
    """Copy ``repository:source_tag`` to ``repository:new_tag`` keeping the digest; return it."""
    return await copy(
        registry.ref(repository, source_tag),
        registry.ref(repository, new_tag),
        src_auth=auth,
        dest_auth=auth,
        preserve_digests=True,
    )


async def pull(
    registry: RegistryServer,
    repository: str,
    reference: str,
    layout: Path,
    ref: str,
    *,
    auth: Auth | None = None,
) -> Descriptor:
    """Pull ``repository:reference`` (GETs the manifest: a ``pull`` event) into an OCI layout."""
    await copy(
        registry.ref(repository, reference),
        f"oci:{layout}:{ref}",
        src_auth=auth,
        preserve_digests=True,
    )
    return read_ref(layout, ref)


async def inspect(
    registry: RegistryServer, repository: str, reference: str, *, auth: Auth | None = None, raw: bool = True
) -> dict[str, Any]:
    """``skopeo inspect [--raw]``: the raw manifest (or index) JSON, or skopeo's summary."""
    ref = registry.ref(repository, reference)
    args = ["inspect", *(["--raw"] if raw else []), *_side_flags(ref, "", auth), ref]
    parsed = json.loads(await run_skopeo(args))
    if not isinstance(parsed, dict):
        raise SkopeoError(f"skopeo inspect printed non-object JSON for {ref}")
    return parsed
