"""Human durations in configuration and on the command line: ``90s``, ``30m``, ``24h``, ``30d``, ``2w``."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_PATTERN = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")


def parse_duration_seconds(text: str | int) -> int:
    """Seconds in ``text``; a bare number is seconds. Raises ValueError for anything else."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError("duration must not be negative")
        return text
    match = _PATTERN.match(text)
    if not match:
        raise ValueError(f"invalid duration {text!r}: use e.g. 90s, 30m, 24h, 30d, 2w")
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


def format_duration_seconds(seconds: int) -> str:
    """The shortest exact spelling of ``seconds`` that ``parse_duration_seconds`` reads (``86400`` -> ``1d``)."""
    for unit, size in sorted(_UNITS.items(), key=lambda item: -item[1]):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
