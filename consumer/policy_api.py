"""Read API of the policy features (scope ``index:read``): the audit log and ``latest`` per repository."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from consumer.api import indexed_repository, json_model, page_size
from consumer.appkeys import AUDIT, LATEST
from consumer.audit import KINDS
from consumer.auth import SCOPE_INDEX_READ, require_scope
from consumer.errors import BadRequest

routes = web.RouteTableDef()


class AuditRecordOut(BaseModel):
    time: str
    kind: str
    repository: str
    tag: str | None
    digest: str | None
    actor: str | None
    addr: str | None
    user_agent: str | None
    protected: bool
    detail: str | None


class AuditPage(BaseModel):
    records: list[AuditRecordOut]
    next: str | None


class LatestOut(BaseModel):
    digest: str | None
    expected_digest: str | None
    expected_tag: str | None
    stale: bool
    mode: str | None


@routes.get("/v1/audit")
async def list_audit(request: web.Request) -> web.Response:
    """Audit records newest first: ``repository``, ``kind``, ``n`` and ``last`` (the previous ``next``)."""
    await require_scope(request, SCOPE_INDEX_READ)
    query = request.query
    kind = query.get("kind") or None
    if kind is not None and kind not in KINDS:
        raise BadRequest(f"kind must be one of {', '.join(KINDS)}")
    try:
        records, cursor = await request.app[AUDIT].page(
            repository=query.get("repository") or None,
            kind=kind,
            n=page_size(request),
            last=query.get("last") or None,
        )
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    out = [AuditRecordOut.model_validate(r, from_attributes=True) for r in records]
    return json_model(AuditPage(records=out, next=cursor))


@routes.get("/v1/repositories/{name:.+}/latest")
async def get_latest(request: web.Request) -> web.Response:
    """Where ``latest`` points, where its policy wants it, and whether that differs."""
    await require_scope(request, SCOPE_INDEX_READ)
    name = await indexed_repository(request)
    status = await request.app[LATEST].status(name)
    return json_model(LatestOut.model_validate(status, from_attributes=True))
