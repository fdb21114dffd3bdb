"""``GET /v1/openapi.json``: the HTTP API as an OpenAPI 3.1 document (no token needed).

Built from the pydantic models the handlers answer with, so the schemas cannot drift from the answers; the
list of operations below is checked against the application's routes by the tests (tests/test_openapi.py).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from consumer import __version__
from consumer.api import MAX_PAGE, ManifestOut, RepositoryPage, TagList
from consumer.auth import SCOPE_EVENTS_WRITE, SCOPE_INDEX_READ, SCOPE_TOKENS_ADMIN, SCOPE_TOKENS_INTROSPECT
from consumer.deadletters_api import DeadLetterPage, ReplayOut
from consumer.policy_api import AuditPage, LatestOut
from consumer.retention_api import RetentionPlanOut
from consumer.tokens_api import IntrospectionOut, RevocationPage, RevokeAllIn, RevokeOut, RevokeSubjectIn, RevokeTokenIn
from consumer.webhook import EventsAnswer

routes = web.RouteTableDef()


class ErrorOut(BaseModel):
    """Every error answer (``consumer.app.edge_middleware``)."""

    error: str
    detail: str


class StatusOut(BaseModel):
    """``/healthz`` and ``/readyz``."""

    status: str


@dataclass(frozen=True)
class Operation:
    """One route: what it needs and what it answers (``response`` None: not JSON)."""

    method: str
    path: str  # as aiohttp routes it; ``{name:.+}`` becomes ``{name}``
    summary: str
    response: type[BaseModel] | None
    scope: str | None = None
    query: tuple[tuple[str, str], ...] = ()
    body: tuple[type[BaseModel], ...] = ()  # JSON bodies accepted (one of)
    form: tuple[str, ...] = ()  # or form fields
    errors: tuple[int, ...] = ()
    content_type: str = "application/json"


_PAGE = (("n", f"page size, 1 to {MAX_PAGE}"), ("last", "the previous page's next"))
OPERATIONS: tuple[Operation, ...] = (
    Operation("POST", "/v1/events", "The registry's notification endpoint (see README: what it answers)",
              EventsAnswer, SCOPE_EVENTS_WRITE, errors=(413, 503)),
    Operation("GET", "/v1/repositories", "Repositories in the index, sorted, paginated like _catalog",
              RepositoryPage, SCOPE_INDEX_READ, _PAGE, errors=(400,)),
    Operation("GET", "/v1/repositories/{name:.+}/tags", "The live tags of a repository", TagList, SCOPE_INDEX_READ,
              errors=(404,)),
    Operation("GET", "/v1/repositories/{name:.+}/digests/{digest}", "A manifest, its tags and references",
              ManifestOut, SCOPE_INDEX_READ, errors=(404,)),
    Operation("GET", "/v1/repositories/{name:.+}/latest", "Where latest points and where its policy wants it",
              LatestOut, SCOPE_INDEX_READ, errors=(404,)),
    Operation("GET", "/v1/repositories/{name:.+}/retention", "The full retention plan of a repository",
              RetentionPlanOut, SCOPE_INDEX_READ, errors=(404,)),
    Operation("GET", "/v1/audit", "Audit records, newest first", AuditPage, SCOPE_INDEX_READ,
              (("repository", "only this repository"), ("kind", "only this kind"), *_PAGE), errors=(400,)),
    Operation("GET", "/v1/dead-letters", "Dead-lettered content, newest first", DeadLetterPage, SCOPE_INDEX_READ,
              (("n", f"page size, 1 to {MAX_PAGE}"), ("before", "the previous page's next")), errors=(400,)),
    Operation("POST", "/v1/dead-letters/replay", "Apply what is valid now of the dead letters", ReplayOut,
              SCOPE_EVENTS_WRITE, errors=(503,)),
    Operation("POST", "/v1/tokens/revoke", "Revoke a token (RFC 7009 form), one by jti, a subject's or all",
              RevokeOut, SCOPE_TOKENS_ADMIN, body=(RevokeTokenIn, RevokeSubjectIn, RevokeAllIn), form=("token",),
              errors=(400, 503)),
    Operation("POST", "/v1/tokens/introspect", "RFC 7662 introspection", IntrospectionOut, SCOPE_TOKENS_INTROSPECT,
              form=("token",), errors=(400, 503)),
    Operation("GET", "/v1/tokens/revocations", "The live revocations", RevocationPage, SCOPE_TOKENS_ADMIN, _PAGE,
              errors=(400,)),
    Operation("GET", "/v1/auth", "Forward-auth for the registry (X-Original-URI, X-Original-Method); only with "
              "registry_auth", None, errors=(400, 503), content_type="text/plain"),
    Operation("GET", "/healthz", "The process is alive", StatusOut),
    Operation("GET", "/readyz", "Redis answers and the service is not shutting down (503 otherwise)", StatusOut),
    Operation("GET", "/metrics", "Prometheus text exposition", None, content_type="text/plain"),
    Operation("GET", "/v1/openapi.json", "This document", None),
)


def openapi_path(path: str) -> str:
    """An aiohttp route path as OpenAPI writes it (no regex in the parameters)."""
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(op: Operation) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"\{(\w+)", op.path)
    ]
    params += [{"name": name, "in": "query", "required": False, "description": text, "schema": {"type": "string"}}
               for name, text in op.query]
    ok = ({"description": "OK", "content": _json(_ref(op.response))} if op.response is not None
          else {"description": "OK", "content": {op.content_type: {"schema": {"type": "string"}}}})
    responses: dict[str, Any] = {"200": ok}
    if op.scope is not None or op.path == "/v1/auth":
        responses["401"] = {"description": "no valid token", "content": _json(_ref(ErrorOut))}
        responses["403"] = {"description": "the token lacks the scope", "content": _json(_ref(ErrorOut))}
    for status in op.errors:
        responses[str(status)] = {"description": _REASONS[status], "content": _json(_ref(ErrorOut))}
    out: dict[str, Any] = {"summary": op.summary, "responses": responses}
    if params:
        out["parameters"] = params
    if op.scope is not None:
        out["security"] = [{"bearer": [op.scope]}]
        out["description"] = f"Bearer token with scope `{op.scope}`."
    if op.body or op.form:
        content: dict[str, Any] = {}
        if op.body:
            content["application/json"] = {"schema": {"oneOf": [_ref(m) for m in op.body]}}
        if op.form:
            content["application/x-www-form-urlencoded"] = {"schema": {
                "type": "object", "required": list(op.form), "properties": {f: {"type": "string"} for f in op.form}}}
        out["requestBody"] = {"required": True, "content": content}
    return out


_REASONS = {400: "invalid parameters", 404: "not in the index", 413: "body above max_body_bytes",
            503: "Redis cannot be reached"}


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document (built once per process)."""
    models = {m for op in OPERATIONS for m in (op.response, *op.body) if m is not None} | {ErrorOut}
    _, schemas = models_json_schema([(m, "serialization") for m in sorted(models, key=lambda m: m.__name__)],
                                    ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(openapi_path(op.path), {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "registry-consumer", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


@routes.get("/v1/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    """The document; no token needed (it describes, it reveals nothing of the index)."""
    return web.Response(text=json.dumps(document()), content_type="application/json")
