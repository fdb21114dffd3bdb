"""Write OCI image layouts on disk in pure Python, for ``skopeo copy oci:<dir>:<ref> ...``.

Every image gets a fresh random layer, so each call yields new layer, config and manifest digests.
Docker schema 2 is not written here: push an OCI image with ``skopeo --format v2s2`` instead.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import secrets
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
DEFAULT_PLATFORMS: tuple[tuple[str, str], ...] = (("linux", "amd64"), ("linux", "arm64"))


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor of a blob written to the layout."""

    media_type: str
    digest: str
    size: int

    def as_json(self) -> dict[str, Any]:
        """The descriptor as it appears inside manifests and indexes."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class OciImage:
    """One reference in an OCI layout: a single-arch manifest or a multi-arch index.

    ``digest`` is the digest of the top-level manifest as written here (what a registry reports
    for an OCI push; a ``--format v2s2`` push converts it and gets another digest).
    ``children`` holds the per-platform manifest digests of an index, empty for a single image.
    """

    layout: Path
    ref: str
    digest: str
    media_type: str
    size: int
    children: tuple[str, ...] = ()

    @property
    def transport_ref(self) -> str:
        """The skopeo source or destination name: ``oci:<dir>:<ref>``."""
        return f"oci:{self.layout}:{self.ref}"

    @property
    def is_index(self) -> bool:
        """True for a multi-arch image index."""
        return self.media_type == OCI_INDEX


def _canonical_json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def _write_blob(layout: Path, media_type: str, data: bytes) -> Descriptor:
    hexdigest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / hexdigest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Descriptor(media_type, f"sha256:{hexdigest}", len(data))


def _random_layer(label: str) -> tuple[bytes, str]:
    """A gzipped tar with one small random file; returns (compressed bytes, uncompressed diff_id)."""
    payload = f"{label}\n{secrets.token_hex(32)}\n".encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("payload.txt")
        info.size = len(payload)
        info.mode = 0o644
        info.mtime = 0
        tar.addfile(info, io.BytesIO(payload))
    tar_bytes = raw.getvalue()
    # mtime=0 keeps the gzip header free of the clock; uniqueness comes from the random payload.
    return gzip.compress(tar_bytes, mtime=0), f"sha256:{hashlib.sha256(tar_bytes).hexdigest()}"


def _write_manifest(layout: Path, os_name: str, arch: str, label: str) -> Descriptor:
    layer_bytes, diff_id = _random_layer(label)
    layer = _write_blob(layout, OCI_LAYER_GZIP, layer_bytes)
    config = _write_blob(
        layout,
        OCI_CONFIG,
        _canonical_json(
            {
                "architecture": arch,
                "os": os_name,
                "created": "2024-01-01T00:00:00Z",
                "config": {"Labels": {"test.label": label}},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "history": [{"created": "2024-01-01T00:00:00Z", "created_by": f"tests.support.oci {label}"}],
            }
        ),
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.as_json(),
        "layers": [layer.as_json()],
    }
    return _write_blob(layout, OCI_MANIFEST, _canonical_json(manifest))


def _init_layout(layout: Path) -> None:
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    if not (layout / "index.json").exists():
        (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": []}))


def _set_ref(layout: Path, ref: str, top: Descriptor) -> None:
    """Point ``ref`` in the layout's index.json at ``top``, replacing an earlier entry of that name."""
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text())
    kept = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME_ANNOTATION) != ref]
    kept.append({**top.as_json(), "annotations": {REF_NAME_ANNOTATION: ref}})
    index["manifests"] = kept
    index_path.write_text(json.dumps(index))


def write_image(layout: Path, ref: str, *, os_name: str = "linux", arch: str = "amd64") -> OciImage:
    """Write a single-arch OCI image (one random layer) under ``ref`` in the layout at ``layout``.

    Several refs can share one layout directory; calling twice with the same ref moves it.
    """
    _init_layout(layout)
    top = _write_manifest(layout, os_name, arch, f"{ref}/{os_name}/{arch}")
    _set_ref(layout, ref, top)
    return OciImage(layout, ref, top.digest, top.media_type, top.size)


def write_index(layout: Path, ref: str, platforms: Sequence[tuple[str, str]] = DEFAULT_PLATFORMS) -> OciImage:
    """Write a multi-arch OCI image index under ``ref``, one fresh child image per (os, arch).

    Push it with ``skopeo copy --all`` (see tests.support.skopeo) or skopeo copies only the
    child matching the host.
    """
    _init_layout(layout)
    children: list[dict[str, Any]] = []
    for os_name, arch in platforms:
        child = _write_manifest(layout, os_name, arch, f"{ref}/{os_name}/{arch}")
        children.append({**child.as_json(), "platform": {"os": os_name, "architecture": arch}})
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}
    top = _write_blob(layout, OCI_INDEX, _canonical_json(index))
    _set_ref(layout, ref, top)
    return OciImage(layout, ref, top.digest, top.media_type, top.size, tuple(c["digest"] for c in children))


def read_ref(layout: Path, ref: str) -> Descriptor:
    """The descriptor that ``ref`` names in the layout's index.json (e.g. after a skopeo pull)."""
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get(REF_NAME_ANNOTATION) == ref:
            return Descriptor(entry["mediaType"], entry["digest"], entry["size"])
    raise KeyError(f"{ref!r} not in {layout}/index.json")
