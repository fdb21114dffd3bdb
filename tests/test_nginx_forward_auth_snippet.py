"""config/nginx/registry-forward-auth.conf with Debian's nginx in front of Debian's docker-registry.

These tests pin the snippet's side of the contract with GET /v1/auth: which headers reach the auth endpoint,
that bodies never do, how 401/403/errors reach the client, and that pushes of any size and chunked uploads pass
through. The auth decision comes from a small recording stand-in on loopback, so each answer (200/401/403,
down) can be chosen per request; the end-to-end test of the consumer's real /v1/auth behind this snippet
belongs to the token work (issue 3) and includes this same file.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import os
import shutil
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import oci, skopeo
from tests.support.procs import LOOPBACK, ManagedProcess, free_port, run_checked, wait_for_port
from tests.support.registry import RegistryFleet, RegistryServer

SNIPPET = Path(__file__).resolve().parent.parent / "config" / "nginx" / "registry-forward-auth.conf"
CHALLENGE = 'Bearer realm="http://auth.invalid/token",service="registry.test"'
PUSH_TOKEN = "push-token"
PULL_TOKEN = "pull-token"


@dataclass
class AuthStandIn:
    """Answers /v1/auth like the consumer would for three kinds of caller, and records what it was sent."""

    port: int
    seen: list[dict[str, Any]] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        seen = self.seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                method = self.headers.get("X-Original-Method", "")
                seen.append({
                    "path": self.path,
                    "uri": self.headers.get("X-Original-URI"),
                    "method": method,
                    "authorization": self.headers.get("Authorization"),
                    "body_bytes": len(body),
                    "transfer_encoding": self.headers.get("Transfer-Encoding"),
                })
                auth = self.headers.get("Authorization", "")
                if auth == f"Bearer {PUSH_TOKEN}" or (auth == f"Bearer {PULL_TOKEN}" and method in ("GET", "HEAD")):
                    self.send_response(200)
                elif auth.startswith("Bearer "):
                    self.send_response(403)
                else:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", CHALLENGE)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@dataclass
class Stack:
    nginx_port: int
    registry: RegistryServer
    auth: AuthStandIn

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.nginx_port}"


def nginx_binary() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    assert path is not None, "nginx not found: install Debian's nginx-light (make system-deps)"
    return path


def write_nginx_conf(prefix: Path, listen_port: int, registry_host: str, auth_port: int) -> Path:
    """A minimal nginx.conf that includes the snippet exactly as an operator would."""
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    temp = prefix / "temp"
    temp.mkdir(exist_ok=True)
    conf.write_text(f"""
worker_processes 1;
error_log {prefix}/logs/error.log info;
pid {prefix}/logs/nginx.pid;
events {{ worker_connections 128; }}
http {{
    access_log {prefix}/logs/access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    upstream registry_upstream {{ server {registry_host}; }}
    upstream registry_consumer_upstream {{ server {LOOPBACK}:{auth_port}; }}
    server {{
        listen {LOOPBACK}:{listen_port};
        include {SNIPPET};
    }}
}}
""")
    return conf


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    auth = AuthStandIn(free_port())
    auth.start()
    with RegistryFleet(tmp_path / "registries") as fleet:
        registry = fleet.start()
        port = free_port()
        conf = write_nginx_conf(tmp_path / "nginx", port, registry.host, auth.port)
        nginx = ManagedProcess(
            "nginx", [nginx_binary(), "-p", str(tmp_path / "nginx"), "-c", str(conf), "-g", "daemon off;"],
            tmp_path / "nginx" / "stdout.log",
        )
        try:
            with nginx:
                wait_for_port(LOOPBACK, port, timeout=15, process=nginx)
                yield Stack(port, registry, auth)
        finally:
            auth.stop()


def request(
    host: str, method: str, path: str, token: str | None = None, body: bytes | None = None,
    headers: dict[str, str] | None = None, chunked: bool = False,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection(host, timeout=30)
    try:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        if chunked:
            conn.request(method, path, body=iter([body or b""]), headers=all_headers, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def test_snippet_passes_nginx_t(tmp_path: Path) -> None:
    conf = write_nginx_conf(tmp_path, free_port(), f"{LOOPBACK}:{free_port()}", free_port())
    result = run_checked([nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(conf)])
    assert "syntax is ok" in result.stderr


def test_no_token_gets_the_consumers_challenge_once(stack: Stack) -> None:
    status, headers, body = request(stack.host, "GET", "/v2/")
    assert status == 401
    assert headers.get_all("WWW-Authenticate") == [CHALLENGE]
    assert headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
    assert stack.auth.seen[-1] | {"authorization": None} == {
        "path": "/v1/auth", "uri": "/v2/", "method": "GET", "authorization": None, "body_bytes": 0,
        "transfer_encoding": None,
    }


def test_a_valid_token_reaches_the_registry(stack: Stack) -> None:
    status, headers, body = request(stack.host, "GET", "/v2/", token=PUSH_TOKEN)
    assert status == 200, body
    assert headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert stack.auth.seen[-1]["authorization"] == f"Bearer {PUSH_TOKEN}"


async def test_skopeo_push_goes_through_and_auth_sees_every_request_without_bodies(
    stack: Stack, tmp_path: Path
) -> None:
    image = oci.write_image(tmp_path / "layout", "v1")
    await skopeo.copy(
        image.transport_ref, f"docker://{stack.host}/team/app:v1",
        dest_auth=skopeo.Auth(token=PUSH_TOKEN), preserve_digests=True,
    )
    status, _, body = request(stack.registry.host, "GET", "/v2/team/app/tags/list")
    assert status == 200 and json.loads(body)["tags"] == ["v1"]
    repo_requests = [s for s in stack.auth.seen if s["uri"] and s["uri"].startswith("/v2/team/app/")]
    methods = {s["method"] for s in repo_requests}
    assert {"POST", "PUT", "HEAD"} <= methods, methods
    assert all(s["body_bytes"] == 0 and s["transfer_encoding"] is None for s in stack.auth.seen)
    assert all(s["path"] == "/v1/auth" for s in stack.auth.seen)


def test_a_large_monolithic_upload_is_not_limited(stack: Stack) -> None:
    """POST then one PUT with the whole blob: nginx's default client_max_body_size (1 MiB) would answer 413."""
    blob = os.urandom(3 * 1024 * 1024)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    status, headers, body = request(stack.host, "POST", "/v2/team/big/blobs/uploads/", token=PUSH_TOKEN)
    assert status == 202, body
    location = urllib.parse.urlsplit(headers["Location"])
    sep = "&" if location.query else ""
    status, _, body = request(
        stack.host, "PUT", f"{location.path}?{location.query}{sep}digest={digest}", token=PUSH_TOKEN, body=blob,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert status == 201, body
    status, _, _ = request(stack.registry.host, "HEAD", f"/v2/team/big/blobs/{digest}")
    assert status == 200
    assert stack.auth.seen[-1]["method"] == "PUT"
    assert stack.auth.seen[-1]["body_bytes"] == 0


def test_a_chunked_upload_keeps_the_clients_host_in_locations(stack: Stack) -> None:
    status, headers, body = request(stack.host, "POST", "/v2/team/chunks/blobs/uploads/", token=PUSH_TOKEN)
    assert status == 202, body
    location = urllib.parse.urlsplit(headers["Location"])
    # The registry builds Location from Host: the client must be sent back to nginx, never to the registry.
    assert location.netloc in ("", stack.host), headers["Location"]
    blob = os.urandom(1536 * 1024)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    upload_path = location.path + ("?" + location.query if location.query else "")
    status, headers, body = request(
        stack.host, "PATCH", upload_path, token=PUSH_TOKEN, body=blob, chunked=True,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert status == 202, body
    assert stack.auth.seen[-1]["method"] == "PATCH"
    assert stack.auth.seen[-1]["transfer_encoding"] is None
    location = urllib.parse.urlsplit(headers["Location"])
    sep = "&" if location.query else ""
    status, _, body = request(
        stack.host, "PUT", f"{location.path}?{location.query}{sep}digest={digest}", token=PUSH_TOKEN,
    )
    assert status == 201, body
    status, _, _ = request(stack.registry.host, "HEAD", f"/v2/team/chunks/blobs/{digest}")
    assert status == 200


async def test_forbidden_is_a_registry_style_403_and_nothing_is_deleted(stack: Stack, tmp_path: Path) -> None:
    image = oci.write_image(tmp_path / "layout", "v1")
    digest = await skopeo.copy(
        image.transport_ref, f"docker://{stack.host}/team/keep:v1",
        dest_auth=skopeo.Auth(token=PUSH_TOKEN), preserve_digests=True,
    )
    accept = {"Accept": oci.OCI_MANIFEST}
    status, _, _ = request(stack.host, "GET", f"/v2/team/keep/manifests/{digest}", token=PULL_TOKEN, headers=accept)
    assert status == 200
    status, headers, body = request(stack.host, "DELETE", f"/v2/team/keep/manifests/{digest}", token=PULL_TOKEN)
    assert status == 403
    assert json.loads(body)["errors"][0]["code"] == "DENIED"
    assert "WWW-Authenticate" not in headers
    assert stack.auth.seen[-1]["uri"] == f"/v2/team/keep/manifests/{digest}"
    assert stack.auth.seen[-1]["method"] == "DELETE"
    status, _, _ = request(stack.registry.host, "GET", f"/v2/team/keep/manifests/{digest}", headers=accept)
    assert status == 200, "the refused DELETE reached the registry"


def test_auth_endpoint_down_fails_closed(stack: Stack) -> None:
    stack.auth.stop()
    status, _, _ = request(stack.host, "GET", "/v2/", token=PUSH_TOKEN)
    assert status == 500
