"""``GET /v1/repositories/{name}/retention`` (scope ``index:read``): the full retention plan of a repository."""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel

from consumer.api import indexed_repository, json_model
from consumer.appkeys import RETENTION
from consumer.auth import SCOPE_INDEX_READ, require_scope
from consumer.errors import NotFound

routes = web.RouteTableDef()


class TagPlanOut(BaseModel):
    tag: str
    digest: str
    decision: Literal["keep", "delete"]
    rule: str
    reason: str


class UntaggedPlanOut(BaseModel):
    digest: str
    decision: Literal["keep", "delete"]
    rule: str
    reason: str


class RetentionPlanOut(BaseModel):
    repository: str
    dry_run: bool
    tags: list[TagPlanOut]
    untagged: list[UntaggedPlanOut]


def _decision(keep: bool) -> Literal["keep", "delete"]:
    return "keep" if keep else "delete"


@routes.get("/v1/repositories/{name:.+}/retention")
async def get_retention(request: web.Request) -> web.Response:
    """Every live tag with its decision and the rule that decided (and the untagged manifests)."""
    await require_scope(request, SCOPE_INDEX_READ)
    name = await indexed_repository(request)
    plan = await request.app[RETENTION].plan(name)
    if plan is None:
        raise NotFound(f"no retention policy applies to repository {name}")
    return json_model(
        RetentionPlanOut(
            repository=name,
            dry_run=plan.dry_run,
            tags=[TagPlanOut(tag=d.tag, digest=d.digest, decision=_decision(d.keep), rule=d.rule, reason=d.reason)
                  for d in plan.tags],
            untagged=[UntaggedPlanOut(digest=m.digest, decision=_decision(m.keep), rule=m.rule, reason=m.reason)
                      for m in plan.untagged],
        )
    )
