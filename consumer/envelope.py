"""The registry's notification envelope at the edge, and what each event means for the index.

Registry 2.x omits absent fields, 3.x sends ``""``/``0`` for them: both are read as absent. Unknown
fields are ignored so that a newer registry cannot wedge the consumer.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NotRequired, Required

from pydantic import Field, StringConstraints, TypeAdapter
from typing_extensions import TypedDict  # pydantic refuses typing.TypedDict before Python 3.12

EVENT_MEDIA_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.events.v1+json",
        "application/vnd.docker.distribution.events.v2+json",
        "application/json",
    }
)
BLOB_MEDIA_TYPE = "application/octet-stream"
_ACTIONS = frozenset({"push", "pull", "delete", "mount"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


# Grammars from the distribution spec; anything else is dead-lettered rather than indexed. Optional
# fields also accept "" (what 3.x sends for an absent one), read as absent by ``classify``.
Repository = Annotated[
    str,
    StringConstraints(
        max_length=255, pattern=r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
    ),
]
Tag = Annotated[str, StringConstraints(pattern=r"^(?:[\w][\w.-]{0,127})?$")]
Digest = Annotated[
    str, StringConstraints(max_length=160, pattern=r"^(?:[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,128})?$")
]
# Informational text (user agents, URLs, media types): bounded, but far above anything real, because an event
# refused for an overlong user agent would be a change missing from the index.
ShortText = Annotated[str, StringConstraints(max_length=4096)]
Size = Annotated[int, Field(ge=0)]

# The shapes are TypedDicts rather than models: validated entirely inside pydantic-core (no Python
# callback, no model instance per nested object), which halved the webhook's validation time. Unknown
# keys are ignored so that a newer registry cannot wedge the consumer.


class Descriptor(TypedDict, total=False):
    """A content descriptor, as in ``target.references``."""

    mediaType: ShortText | None
    digest: Digest | None
    size: Size | None


class Target(TypedDict, total=False):
    """What the event is about (``repository`` is the one required field)."""

    mediaType: ShortText | None
    digest: Digest | None
    size: Size | None
    length: Size | None
    repository: Required[Repository]
    fromRepository: ShortText | None
    url: ShortText | None
    tag: Tag | None
    # A manifest is at most 4 MiB, so it cannot list more descriptors than this; cutting the list short would
    # hide children of an index from retention.
    references: Annotated[list[Descriptor], Field(max_length=65536)]


class RequestRecord(TypedDict, total=False):
    """The client request that caused the event."""

    id: ShortText | None
    addr: ShortText | None
    host: ShortText | None
    method: ShortText | None
    useragent: ShortText | None


class ActorRecord(TypedDict, total=False):
    """Who did it (the token's ``sub`` or the basic-auth user); empty for anonymous."""

    name: ShortText | None


class SourceRecord(TypedDict, total=False):
    """Which registry instance sent it."""

    addr: ShortText | None
    instanceID: ShortText | None


class RegistryEvent(TypedDict):
    """One event of an envelope."""

    id: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\w.:-]+$")]
    timestamp: datetime
    action: Annotated[str, StringConstraints(max_length=32)]
    target: Target
    request: NotRequired[RequestRecord]
    actor: NotRequired[ActorRecord]
    source: NotRequired[SourceRecord]


class Envelope(TypedDict):
    """A notification body: the registry sends one event per envelope; the format allows many."""

    events: Annotated[list[RegistryEvent], Field(min_length=1)]


_ENVELOPE: TypeAdapter[Envelope] = TypeAdapter(Envelope)
_EVENT: TypeAdapter[RegistryEvent] = TypeAdapter(RegistryEvent)


def parse_event(raw: Any) -> Change:
    """One event as decoded JSON, validated and classified; pydantic's ``ValidationError`` if it is unusable."""
    return classify(_EVENT.validate_python(raw))


def parse_envelope(body: bytes) -> list[Change] | None:
    """The changes of ``body`` when the whole envelope is valid, else None.

    One pass from bytes to validated events in pydantic-core. When it fails, the caller takes the slow
    path that judges each event on its own (so one bad event never costs the good ones their place in
    the index).
    """
    try:
        return [classify(event) for event in _ENVELOPE.validate_json(body)["events"]]
    except (ValueError, TypeError):  # pydantic's ValidationError (malformed JSON too), or classify's
        return None


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


_BLOB_URL = re.compile(r"/blobs/[^/]+$")


def _is_blob(target: Target) -> bool:
    # The URL's last two segments, not any "/blobs/" in it: a repository may be called team/blobs.
    return target.get("mediaType") == BLOB_MEDIA_TYPE or _BLOB_URL.search(target.get("url") or "") is not None


def classify(event: RegistryEvent) -> Change:
    """Map a validated event to its index change (``IGNORED`` for blobs, mounts, HEADs, unknowns)."""
    t = event["target"]
    request = event.get("request") or {}
    tag = t.get("tag") or None
    digest = t.get("digest") or None
    kind = ChangeKind.IGNORED
    action = event["action"] if event["action"] in _ACTIONS else "unknown"
    if action == "push" and digest and not _is_blob(t):
        kind = ChangeKind.TAG_PUSH if tag else ChangeKind.MANIFEST_PUSH
    elif action == "delete":
        if tag:
            kind = ChangeKind.TAG_DELETE
        elif digest:
            kind = ChangeKind.DIGEST_DELETE
    elif action == "pull" and digest and not _is_blob(t) and (request.get("method") or "GET") == "GET":
        kind = ChangeKind.PULL
    size = t.get("size")
    return Change(
        kind=kind,
        action=action,
        event_id=event["id"],
        repository=t["repository"],
        timestamp_us=timestamp_us(event["timestamp"]),
        tag=tag,
        digest=digest,
        media_type=t.get("mediaType") or None,
        size=size if size is not None else t.get("length"),
        references=tuple(d for r in t.get("references", ()) if (d := r.get("digest"))),
        actor=(event.get("actor") or {}).get("name") or None,
        addr=request.get("addr") or None,
        user_agent=request.get("useragent") or None,
        request_id=request.get("id") or None,
    )
