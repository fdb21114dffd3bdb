"""``POST /v1/events``: the registry's notification endpoint.

Answers: 401/403 for authentication only, 413 above ``max_body_bytes``, 503 only when Redis cannot
be reached (so the registry redelivers), and 200 for everything else, bad content included: the
registry retries any other answer forever and blocks every later event behind it.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from consumer.appkeys import DEAD_LETTERS, HOOKS, INDEX, METRICS, PULLS, SETTINGS
from consumer.auth import SCOPE_EVENTS_WRITE, require_scope
from consumer.envelope import Change, ChangeKind, parse_envelope, parse_event
from consumer.errors import PayloadTooLarge
from consumer.logs import EVENT_ID

log = logging.getLogger(__name__)
routes = web.RouteTableDef()


def _validation_reason(exc: Exception) -> str:
    if not isinstance(exc, ValidationError):
        return f"invalid event: {exc}"
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "event"
    return f"invalid event: {where}: {first.get('msg')}"


def _raw_event_id(raw: Any) -> str | None:
    """The event's ``id`` as sent, even when the rest of it fails validation (for the logs)."""
    value = raw.get("id") if isinstance(raw, dict) else None
    return value[:128] if isinstance(value, str) else None


def _events_of(body: bytes) -> tuple[list[Any] | None, str]:
    """The raw events of an envelope, or None and why the envelope is unusable."""
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, an integer too long, nesting too deep
        return None, f"malformed JSON: {type(exc).__name__}: {str(exc)[:200]}"
    if not isinstance(envelope, dict):
        return None, "envelope is not a JSON object"
    events = envelope.get("events")
    if not isinstance(events, list) or not events:
        return None, "envelope has no events"
    return events, ""


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The body, or :class:`PayloadTooLarge` as soon as it is known to exceed ``max_bytes``.

    Checked here rather than left to aiohttp's ``client_max_size`` so that the answer can close the
    connection instead of leaving the unread rest of a huge body on it.
    """
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"body of {request.content_length} bytes exceeds {max_bytes}")
    body = await request.content.read(max_bytes + 1)
    while len(body) <= max_bytes and not request.content.at_eof():
        chunk = await request.content.read(max_bytes + 1 - len(body))
        if not chunk:
            break
        body += chunk
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"body exceeds {max_bytes} bytes")
    return body


class EventsAnswer(BaseModel):
    """What ``POST /v1/events`` answers: how many events of the envelope went which way."""

    applied: int
    duplicate: int
    ignored: int
    dead_lettered: int


@functools.lru_cache(maxsize=64)
def _answer_body(applied: int, duplicate: int, ignored: int, dead_lettered: int) -> bytes:
    return json.dumps(
        {"applied": applied, "duplicate": duplicate, "ignored": ignored, "dead_lettered": dead_lettered}
    ).encode()


def _answer(counts: dict[str, int]) -> web.Response:
    # The same few bodies over and over: encoded once each (json_response showed in the profile).
    body = _answer_body(counts["applied"], counts["duplicate"], counts["ignored"], counts["dead_lettered"])
    return web.Response(body=body, content_type="application/json")


@routes.post("/v1/events")
async def receive_events(request: web.Request) -> web.Response:
    """Apply each event of the envelope to the index; see the module docstring for the answers."""
    await require_scope(request, SCOPE_EVENTS_WRITE)
    app = request.app
    body = await read_body(request, app[SETTINGS].max_body_bytes)
    counts = {"applied": 0, "duplicate": 0, "ignored": 0, "dead_lettered": 0}
    changes = parse_envelope(body)
    if changes is not None:
        for change in changes:
            EVENT_ID.set(change.event_id)
            await apply_change(app, change, counts)
    else:
        await _apply_one_by_one(app, body, counts)
    EVENT_ID.set(None)
    app[METRICS].last_event_timestamp.set(time.time())
    return _answer(counts)


async def apply_change(app: web.Application, change: Change, counts: dict[str, int]) -> None:
    """Apply one validated change to the index, count its outcome, and hand it to the listeners if applied."""
    if change.kind is ChangeKind.PULL:
        change = app[PULLS].apply(change)  # a scanner's or the consumer's own pull is not use
    applied = await app[INDEX].apply(change)
    if not applied:
        outcome = "duplicate"
    elif change.kind is ChangeKind.IGNORED:
        outcome = "ignored"
    else:
        outcome = "applied"
        app[HOOKS].publish(change)
    counts[outcome] += 1
    app[METRICS].count_event(change.action, outcome)
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "event %s", outcome,
            extra={"event_id": change.event_id, "action": change.action, "repository": change.repository},
        )


async def _apply_one_by_one(app: web.Application, body: bytes, counts: dict[str, int]) -> None:
    """The slow path for an envelope that is not valid as a whole: judge each event on its own."""
    metrics, dead_letters = app[METRICS], app[DEAD_LETTERS]
    events, reason = _events_of(body)
    if events is None:
        await dead_letters.add(reason, body)
        metrics.count_event("unknown", "dead_lettered")
        counts["dead_lettered"] += 1
        log.warning("envelope dead-lettered", extra={"reason": reason})
        return
    for raw in events:
        # Every log line about this event carries its id, including those of the listeners published below
        # (their tasks copy the context as it is now).
        EVENT_ID.set(_raw_event_id(raw))
        try:
            change = parse_event(raw)
        except (ValidationError, ValueError, TypeError) as exc:
            # Anything unusable lands in the dead-letter stream: a 4xx or 5xx here would wedge the registry.
            reason = _validation_reason(exc)
            await dead_letters.add(reason, json.dumps(raw, default=str))
            action = raw.get("action") if isinstance(raw, dict) else None
            metrics.count_event(action if isinstance(action, str) else "unknown", "dead_lettered")
            counts["dead_lettered"] += 1
            log.warning("event dead-lettered", extra={"reason": reason})
            continue
        await apply_change(app, change, counts)
