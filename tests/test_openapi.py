"""The OpenAPI document describes exactly the routes the app has, and the answers match its schemas."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
from openapi_spec_validator import validate

from consumer.app import create_app
from consumer.metrics import Metrics
from consumer.openapi import OPERATIONS, document, openapi_path
from consumer.settings import Settings
from tests.conftest import load_envelopes
from tests.support.registry import TokenIssuer


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(document())  # raises on any violation of the OpenAPI 3.1 schema


def test_every_route_is_documented_and_nothing_else(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    issuer = TokenIssuer(tmp_path / "issuer")
    settings = make_settings(registry_auth={"realm": "https://auth.example/token", "service": issuer.service,
                                            "issuer": issuer.issuer, "rootcertbundle": str(issuer.cert_path)})
    app = create_app(settings, metrics=Metrics(process=False))  # with every optional route (forward-auth)
    routed = {(r.method, openapi_path(r.resource.canonical)) for r in app.router.routes()
              if r.method != "HEAD" and r.resource is not None}
    documented = {(op.method, openapi_path(op.path)) for op in OPERATIONS}
    assert routed == documented


async def test_answers_match_their_documented_schemas(
    aiohttp_client: Callable[..., Any], settings: Settings, auth_headers: dict[str, str]
) -> None:
    client = await aiohttp_client(create_app(settings, metrics=Metrics(process=False)))
    resp = await client.get("/v1/openapi.json")  # no token needed
    assert resp.status == 200
    doc = await resp.json()
    assert doc == json.loads(json.dumps(document()))

    def check(body: Any, path: str, method: str = "get", status: str = "200") -> None:
        schema = doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
        jsonschema.validate(body, {**schema, "components": doc["components"]})

    envelope = load_envelopes("distribution-2.8.2/01-push-oci-single-arch-tag")[-1]
    resp = await client.post("/v1/events", data=json.dumps(envelope["body"]),
                             headers={**auth_headers, "Content-Type": envelope["headers"]["Content-Type"]})
    check(await resp.json(), "/v1/events", "post")
    digest = envelope["body"]["events"][0]["target"]["digest"]
    for url, path in [
        ("/v1/repositories", "/v1/repositories"),
        ("/v1/repositories/myapp1/tags", "/v1/repositories/{name}/tags"),
        (f"/v1/repositories/myapp1/digests/{digest}", "/v1/repositories/{name}/digests/{digest}"),
        ("/v1/audit", "/v1/audit"),
        ("/v1/dead-letters", "/v1/dead-letters"),
        ("/v1/tokens/revocations", "/v1/tokens/revocations"),
        ("/healthz", "/healthz"),
        ("/readyz", "/readyz"),
    ]:
        resp = await client.get(url, headers=auth_headers)
        assert resp.status == 200, (url, await resp.text())
        check(await resp.json(), path)
    resp = await client.get("/v1/repositories/nope/tags", headers=auth_headers)
    check(await resp.json(), "/v1/repositories/{name}/tags", status="404")
