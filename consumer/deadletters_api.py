"""The dead-letter stream for operators: read it, and replay it once the consumer understands it.

``GET /v1/dead-letters`` (scope ``index:read``) pages through the entries, newest first: what was refused and
why (the ``RegistryConsumerDeadLetters`` alert points here). ``POST /v1/dead-letters/replay`` (scope
``events:write``, the right to deliver events) runs every entry through the webhook's path again, for after
an upgrade that taught the consumer what it refused (a registry upgrade that changed its events, say):
entries that are valid now are applied (each event once, by its id, as always) and removed; the others stay.
"""

from __future__ import annotations

import json
import re

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from consumer.api import json_model, page_size
from consumer.appkeys import DEAD_LETTERS
from consumer.auth import SCOPE_EVENTS_WRITE, SCOPE_INDEX_READ, require_scope
from consumer.envelope import Change, parse_envelope
from consumer.errors import BadRequest
from consumer.webhook import apply_change

routes = web.RouteTableDef()
_STREAM_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")
_U64 = 2**64


def _is_stream_id(text: str) -> bool:
    match = _STREAM_ID.match(text)
    return match is not None and all(int(part) < _U64 for part in match.groups())
REPLAY_BATCH = 200


class DeadLetterOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    reason: str
    received_at: float
    payload: str


class DeadLetterPage(BaseModel):
    entries: list[DeadLetterOut]
    next: str | None


class ReplayOut(BaseModel):
    examined: int
    replayed: int
    still_invalid: int
    applied: int
    duplicate: int
    ignored: int


def changes_of(payload: str) -> list[Change] | None:
    """The changes of a stored payload if it is valid now: a whole envelope, or one event (as stored when only
    that event of its envelope was refused); None otherwise (truncated payloads included)."""
    try:
        document = json.loads(payload)
    except ValueError:
        return None
    if isinstance(document, dict) and "events" not in document:
        document = {"events": [document]}
    return parse_envelope(json.dumps(document).encode())


@routes.get("/v1/dead-letters")
async def list_dead_letters(request: web.Request) -> web.Response:
    """Entries newest first; ``n`` per page (default 20), ``before`` = the previous page's ``next``."""
    await require_scope(request, SCOPE_INDEX_READ)
    n = page_size(request, default=20)
    before = request.query.get("before")
    if before is not None and not _is_stream_id(before):
        raise BadRequest("before must be an entry id from a previous page (like 1733300000000-0)")
    if before == "0-0":
        return json_model(DeadLetterPage(entries=[], next=None))  # nothing is older (and Redis refuses the range)
    entries, cursor = await request.app[DEAD_LETTERS].page(n, before)
    return json_model(DeadLetterPage(entries=[DeadLetterOut.model_validate(e) for e in entries], next=cursor))


@routes.post("/v1/dead-letters/replay")
async def replay_dead_letters(request: web.Request) -> web.Response:
    """Apply every entry that is valid now, oldest first, and remove those; report what happened."""
    await require_scope(request, SCOPE_EVENTS_WRITE)
    app = request.app
    dead_letters = app[DEAD_LETTERS]
    counts = {"applied": 0, "duplicate": 0, "ignored": 0, "dead_lettered": 0}
    examined = still_invalid = replayed = 0
    last: str | None = None
    # The stream is capped (dead_letter_max_entries), so one request can go through all of it.
    while batch := await dead_letters.after(last, REPLAY_BATCH):
        last = batch[-1].id
        done: list[str] = []
        for entry in batch:
            examined += 1
            changes = changes_of(entry.payload)
            if changes is None:
                still_invalid += 1
                continue
            for change in changes:
                await apply_change(app, change, counts)
            done.append(entry.id)
        await dead_letters.remove(done)  # after applying: a failure on the way leaves them to replay again
        replayed += len(done)
    return json_model(ReplayOut(examined=examined, replayed=replayed, still_invalid=still_invalid,
                                applied=counts["applied"], duplicate=counts["duplicate"], ignored=counts["ignored"]))
