"""Structured JSON logs, one object per line, with the request and event being handled.

``request_id`` and ``event_id`` live in context variables: the request middleware sets the first, the
webhook sets the second for each event. Tasks copy the context they are created in, so the event-hook
listeners started for an event log with that event's (and that request's) ids as well.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
from contextvars import ContextVar
from typing import Any, TextIO

# Attributes every LogRecord has; anything else was passed with ``extra=`` and belongs in the output.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
EVENT_ID: ContextVar[str | None] = ContextVar("event_id", default=None)

# What a caller may send as X-Request-ID: short, printable, no spaces (it is echoed in a header).
_CLIENT_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")


# New ids: 64 random bits per process, then a counter (32 hex digits, like a uuid4's hex). Unique across
# replicas and restarts without a urandom call per request, which showed in the webhook's profile.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def _new_id_prefix() -> None:
    global _ID_PREFIX
    _ID_PREFIX = os.urandom(8).hex()


os.register_at_fork(after_in_child=_new_id_prefix)  # a forked worker must not repeat its parent's ids


def request_id_from(header: str | None) -> str:
    """The caller's ``X-Request-ID`` when it is a sane token, else a new unique one."""
    if header is not None and _CLIENT_REQUEST_ID.match(header):
        return header
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


class ContextFilter(logging.Filter):
    """Adds ``request_id`` and ``event_id`` from the context to every record that lacks them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in (("request_id", REQUEST_ID), ("event_id", EVENT_ID)):
            value = var.get()
            if value is not None and getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """Formats records as JSON with their ``extra`` fields (event_id, request_id, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(level: str, stream: TextIO | None = None) -> None:
    """Route every logger to ``stream`` (stderr) as JSON at ``level``, with the context's ids."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    # On the handler, not a logger: handler filters see the records of every logger that propagates here.
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
