"""The registry's notification envelope at the edge, and what each event means for the index.

Registry 2.x omits absent fields, 3.x sends ``""``/``0`` for them: both are read as absent. Unknown
fields are ignored so that a newer registry cannot wedge the consumer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

EVENT_MEDIA_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.events.v1+json",
        "application/vnd.docker.distribution.events.v2+json",
        "application/json",
    }
)
BLOB_MEDIA_TYPE = "application/octet-stream"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _empty_is_none(value: Any) -> Any:
    return None if value == "" else value


# Grammars from the distribution spec; anything else is dead-lettered rather than indexed.
Repository = Annotated[
    str,
    StringConstraints(
        max_length=255, pattern=r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
    ),
]
Tag = Annotated[
    Annotated[str, StringConstraints(pattern=r"^[\w][\w.-]{0,127}$")] | None, BeforeValidator(_empty_is_none)
]
Digest = Annotated[
    Annotated[str, StringConstraints(max_length=160, pattern=r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,128}$")]
    | None,
    BeforeValidator(_empty_is_none),
]
ShortText = Annotated[Annotated[str, StringConstraints(max_length=512)] | None, BeforeValidator(_empty_is_none)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Descriptor(_Model):
    """A content descriptor, as in ``target.references``."""

    media_type: ShortText = Field(default=None, alias="mediaType")
    digest: Digest = None
    size: int | None = Field(default=None, ge=0)


class Target(_Model):
    """What the event is about."""

    media_type: ShortText = Field(default=None, alias="mediaType")
    digest: Digest = None
    size: int | None = Field(default=None, ge=0)
    length: int | None = Field(default=None, ge=0)
    repository: Repository
    from_repository: ShortText = Field(default=None, alias="fromRepository")
    url: ShortText = None
    tag: Tag = None
    references: list[Descriptor] = Field(default_factory=list, max_length=4096)


class RequestRecord(_Model):
    """The client request that caused the event."""

    id: ShortText = None
    addr: ShortText = None
    host: ShortText = None
    method: ShortText = None
    useragent: ShortText = None


class ActorRecord(_Model):
    """Who did it (the token's ``sub`` or the basic-auth user); empty for anonymous."""

    name: ShortText = None


class SourceRecord(_Model):
    """Which registry instance sent it."""

    addr: ShortText = None
    instance_id: ShortText = Field(default=None, alias="instanceID")


class RegistryEvent(_Model):
    """One event of an envelope."""

    id: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\w.:-]+$")]
    timestamp: datetime
    action: Annotated[str, StringConstraints(max_length=32)]
    target: Target
    request: RequestRecord = RequestRecord()
    actor: ActorRecord = ActorRecord()
    source: SourceRecord = SourceRecord()


class ChangeKind(enum.Enum):
    """What an event does to the index."""

    TAG_PUSH = "tag_push"
    MANIFEST_PUSH = "manifest_push"
    TAG_DELETE = "tag_delete"
    DIGEST_DELETE = "digest_delete"
    PULL = "pull"
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class Change:
    """One event reduced to what the index needs, plus the context policies and audit use."""

    kind: ChangeKind
    action: str
    event_id: str
    repository: str
    timestamp_us: int
    tag: str | None = None
    digest: str | None = None
    media_type: str | None = None
    size: int | None = None
    references: tuple[str, ...] = ()
    actor: str | None = None
    addr: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


def timestamp_us(moment: datetime) -> int:
    """Exact integer microseconds since the epoch (floats would round at this magnitude)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


def _is_blob(target: Target) -> bool:
    return target.media_type == BLOB_MEDIA_TYPE or (target.url is not None and "/blobs/" in target.url)


def classify(event: RegistryEvent) -> Change:
    """Map a validated event to its index change (``IGNORED`` for blobs, mounts, HEADs, unknowns)."""
    t = event.target
    kind = ChangeKind.IGNORED
    action = event.action if event.action in {"push", "pull", "delete", "mount"} else "unknown"
    if action == "push" and not _is_blob(t) and t.digest:
        kind = ChangeKind.TAG_PUSH if t.tag else ChangeKind.MANIFEST_PUSH
    elif action == "delete":
        if t.tag:
            kind = ChangeKind.TAG_DELETE
        elif t.digest:
            kind = ChangeKind.DIGEST_DELETE
    elif action == "pull" and not _is_blob(t) and t.digest and (event.request.method or "GET") == "GET":
        kind = ChangeKind.PULL
    return Change(
        kind=kind,
        action=action,
        event_id=event.id,
        repository=t.repository,
        timestamp_us=timestamp_us(event.timestamp),
        tag=t.tag,
        digest=t.digest,
        media_type=t.media_type,
        size=t.size if t.size is not None else t.length,
        references=tuple(r.digest for r in t.references if r.digest),
        actor=event.actor.name,
        addr=event.request.addr,
        user_agent=event.request.useragent,
        request_id=event.request.id,
    )
