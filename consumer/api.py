"""The read API over the tag index (scope ``index:read``)."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from consumer.appkeys import INDEX
from consumer.auth import SCOPE_INDEX_READ, require_scope
from consumer.errors import BadRequest, NotFound

routes = web.RouteTableDef()
MAX_PAGE = 1000


class RepositoryPage(BaseModel):
    repositories: list[str]
    next: str | None


class TagOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    tag: str
    digest: str
    media_type: str | None
    size: int | None
    pushed_at: str | None
    last_pulled_at: str | None


class TagList(BaseModel):
    repository: str
    tags: list[TagOut]


class ManifestOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    digest: str
    media_type: str | None
    size: int | None
    pushed_at: str | None
    last_pulled_at: str | None
    tags: list[str]
    references: list[str]


def json_model(model: BaseModel, status: int = 200) -> web.Response:
    """Serialise a response model."""
    return web.Response(text=model.model_dump_json(), status=status, content_type="application/json")


def page_size(request: web.Request, default: int = 100) -> int:
    """The ``n`` query parameter, bounded to ``MAX_PAGE``."""
    raw = request.query.get("n", str(default))
    if not raw.isdigit() or not 0 < int(raw) <= MAX_PAGE:
        raise BadRequest(f"n must be an integer from 1 to {MAX_PAGE}")
    return int(raw)


async def indexed_repository(request: web.Request) -> str:
    """The ``name`` of the route, or :class:`NotFound` when the index has never seen that repository."""
    name = request.match_info["name"]
    if not await request.app[INDEX].has_repository(name):
        raise NotFound(f"repository {name} is not in the index")
    return name


@routes.get("/v1/repositories")
async def list_repositories(request: web.Request) -> web.Response:
    """Paginated like the registry's ``_catalog``: ``n`` and ``last``, ``next`` when there is more."""
    await require_scope(request, SCOPE_INDEX_READ)
    n = page_size(request)
    names = await request.app[INDEX].list_repositories(n + 1, request.query.get("last") or None)
    more = len(names) > n
    names = names[:n]
    return json_model(RepositoryPage(repositories=names, next=names[-1] if more else None))


@routes.get("/v1/repositories/{name:.+}/tags")
async def list_tags(request: web.Request) -> web.Response:
    """Every live tag of a repository, sorted by name."""
    await require_scope(request, SCOPE_INDEX_READ)
    name = request.match_info["name"]
    index = request.app[INDEX]
    tags = await index.list_tags(name)
    if not tags and not await index.has_repository(name):
        raise NotFound(f"repository {name} is not in the index")
    out = [TagOut.model_validate(t) for t in tags]
    return json_model(TagList(repository=name, tags=out))


@routes.get("/v1/repositories/{name:.+}/digests/{digest}")
async def get_digest(request: web.Request) -> web.Response:
    """One live manifest with its tags and references."""
    await require_scope(request, SCOPE_INDEX_READ)
    name, digest = request.match_info["name"], request.match_info["digest"]
    manifest = await request.app[INDEX].get_manifest(name, digest)
    if manifest is None:
        raise NotFound(f"manifest {digest} of {name} is not in the index")
    return json_model(ManifestOut.model_validate(manifest))
